"""An image's file system as one tar stream, whiteouts applied (``crane export``; ``flatten``'s layer).

The layers are read once each, topmost first: the first layer to name a path wins, a whiteout
hides the path in the layers below, an opaque marker hides a directory's lower contents, and a
non-directory hides everything below it under its path. Nothing is extracted to disk; every
layer's blob digest (by the store's reader) and diffID are verified as it streams. Entries come
out topmost layer first, as crane writes them; a hard link to a file of a lower layer may so
precede its target (crane has the same property).
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from ocibuild.errors import DigestMismatch, ManifestError
from ocibuild.layer.compress import decompressor
from ocibuild.layer.extract import OPAQUE, WHITEOUT_PREFIX, _clean, _drain, _HashingReader
from ocibuild.layer.tarwriter import archive_errors, check_stream_end
from ocibuild.oci import mediatype as mt
from ocibuild.oci.digest import Hasher
from ocibuild.oci.manifest import Manifest
from ocibuild.store.base import Store, load_config


class _Hidden:
    """Paths the layers above hid: whited out (the path and below) or made opaque (below only)."""

    def __init__(self) -> None:
        self.gone: set[tuple[str, ...]] = set()
        self.opaque: set[tuple[str, ...]] = set()

    def hides(self, parts: tuple[str, ...]) -> bool:
        for i in range(len(parts)):
            prefix = parts[: i + 1]
            if prefix in self.gone or (i + 1 < len(parts) and prefix in self.opaque):
                return True
        return False

    def merge(self, other: "_Hidden") -> None:
        self.gone |= other.gone
        self.opaque |= other.opaque


def _layer_entries(tf: tarfile.TarFile, out: tarfile.TarFile, seen: set[tuple[str, ...]],
                   hidden: _Hidden) -> _Hidden:
    """Copy this layer's visible entries; returns what it hides from the layers below."""
    below = _Hidden()
    for info in tf:
        parts = tuple(_clean(info.name))
        if not parts:
            continue
        base = parts[-1]
        if base == OPAQUE:
            below.opaque.add(parts[:-1])
            continue
        if base.startswith(WHITEOUT_PREFIX):
            below.gone.add((*parts[:-1], base[len(WHITEOUT_PREFIX):]))
            continue
        if parts in seen or hidden.hides(parts):
            continue
        seen.add(parts)
        if not info.isdir():
            below.gone.add(parts)  # a file (or link) here replaces whatever a lower layer had below it
        info.name = "/".join(parts)
        if info.islnk():
            info.linkname = "/".join(_clean(info.linkname))
        out.addfile(info, tf.extractfile(info) if info.isreg() else None)
    check_stream_end(tf)
    return below


def export_filesystem(store: Store, manifest: Manifest, out: BinaryIO) -> None:
    """Write the flattened file system of the image ``manifest`` as an uncompressed tar to ``out``."""
    config = load_config(store, manifest.config)
    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise ManifestError(f"image config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
    seen: set[tuple[str, ...]] = set()
    hidden = _Hidden()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar_out:  # type: ignore[call-overload]
        for layer, diff_id in reversed(list(zip(manifest.layers, diff_ids))):
            if not mt.is_layer(layer.media_type):
                raise ManifestError(f"layer {layer.digest} has unsupported media type {layer.media_type}")
            with store.open_blob(layer) as blob:
                with archive_errors(f"layer {layer.digest}"):
                    plain = decompressor(blob, mt.compression_of(layer.media_type))
                    reader = _HashingReader(plain, Hasher(diff_id.algorithm, expected=diff_id))
                    with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tf:  # type: ignore[call-overload]
                        below = _layer_entries(tf, tar_out, seen, hidden)
                    reader.drain()
                _drain(blob)  # to EOF: the store's reader verifies the blob digest there
            got = reader.hasher.digest()
            if got != diff_id:
                raise DigestMismatch(f"layer {layer.digest}: uncompressed content hashes to {got}, config says {diff_id}")
            hidden.merge(below)
