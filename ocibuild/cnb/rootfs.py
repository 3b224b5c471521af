"""The build image as a root file system: each layer extracted once, by diffID, in the scratch dir.

``<scratch>/rootfs/sha256/<hex>/`` holds one layer as an overlayfs lower directory (whiteouts as
0/0 character devices, opaque directories marked with ``user.overlay.opaque``), so a build stacks
its builder's layers without copying a file, and two builders that share a base share its
extraction. A layer is extracted into a temp directory beside it and renamed into place when whole,
so a directory that exists is complete; two builds extracting the same layer race harmlessly.

Extraction follows ``ocibuild unpack``'s rules (``layer.extract``): nothing outside the target, no
``..``, no device nodes or fifos from a layer, setuid/setgid bits dropped, blob digest and diffID
verified. Owners are kept when running as root (the image's root-owned ``/usr`` stays root's).

A build holds the diffIDs it uses under its lease (``location`` below); ``ocibuild gc`` removes an
extraction that no image in the scratch layout lists and no live lease holds (``sweep``).
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ocibuild.errors import OCIBuildError
from ocibuild.layer.extract import OVERLAY_OPAQUE_XATTR, ExtractOptions, extract_layer
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, ImageConfig, Manifest
from ocibuild.store.base import Store

ROLE_ROOTFS_LAYER = "rootfs-layer"
ROOTFS_MEDIA_TYPE = "application/vnd.ocibuild.rootfs.layer.v1"
"""The ledger's media type for an extracted layer (it is a directory, not a blob)."""
_TMP_PREFIX = ".tmp-"
_WORKERS = 2


@dataclass(frozen=True)
class RootFS:
    """A build image's file system as overlayfs stacks it: one directory per layer, lowest first."""

    layers: tuple[Path, ...]

    def find(self, path: str) -> Path | None:
        """The host path of ``path`` (absolute, as the image sees it) in the topmost layer that has it,
        or None when no layer has it or a whiteout or opaque directory above hides it."""
        parts = [p for p in path.split("/") if p]
        for layer in reversed(self.layers):
            found, hidden = _look(layer, parts)
            if found is not None:
                return found
            if hidden:
                return None
        return None

    def read_text(self, path: str, limit: int = 1 << 20) -> str | None:
        """A file's text; a symlink is followed as the image sees it (``/etc/os-release`` is one),
        never out of the image's layers."""
        found = self.find(path)
        for _ in range(8):
            if found is None or not found.is_symlink():
                break
            path = posixpath.normpath(posixpath.join(posixpath.dirname("/" + path.lstrip("/")), os.readlink(found)))
            found = self.find(path)
        if found is None or found.is_symlink() or not found.is_file():
            return None
        with open(found, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")


def _look(layer: Path, parts: list[str]) -> tuple[Path | None, bool]:
    """``(host path, hidden)`` of ``parts`` in one layer: hidden when a whiteout or an opaque
    directory in this layer ends the search through lower layers."""
    current = layer
    for i, name in enumerate(parts):
        current = current / name
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None, _opaque(current.parent)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None, True
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return None, True  # a file or link replaces the directory (links are resolved inside only)
    return current, False


def _opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _topmost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Each layer once, at its highest place: overlayfs refuses a lower directory given twice, and a
    layer applied again above others gives the same merged tree as applying it at both places."""
    out: list[Path] = []
    for path in reversed(list(paths)):
        if path not in out:
            out.append(path)
    return tuple(reversed(out))


class ExtractedLayers:
    """The extracted layers of one scratch directory."""

    def __init__(self, scratch_root: Path):
        self.root = Path(scratch_root) / "rootfs"

    @property
    def location(self) -> str:
        """How the ledger names this cache (not a layout: no blobs to check there)."""
        return f"rootfs:{self.root}"

    def path(self, diff_id: Digest) -> Path:
        return self.root / diff_id.algorithm / diff_id.encoded

    def ensure(self, manifest: Manifest, config: ImageConfig, stores: Sequence[Store], lease: object = None,
               *, name: str = "image") -> RootFS:
        """Every layer of the image extracted (the missing ones now, from the first of ``stores``
        that has the blob), held under ``lease`` before anything is looked at."""
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise OCIBuildError(f"{name}: config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
        if lease is not None:
            lease.ledger.hold(lease.id, [str(d) for d in diff_ids], self.location)  # type: ignore[attr-defined]
        missing = {d: layer for layer, d in zip(manifest.layers, diff_ids) if not self.path(d).is_dir()}
        if missing:
            with ThreadPoolExecutor(max_workers=min(_WORKERS, len(missing))) as pool:
                for done in pool.map(lambda item: self._extract(*item, stores, name), missing.items()):
                    if lease is not None:
                        lease.ledger.record(done, location=self.location, lease_id=lease.id,  # type: ignore[attr-defined]
                                            role=ROLE_ROOTFS_LAYER, media_type=ROOTFS_MEDIA_TYPE, size=0)
        return RootFS(_topmost(self.path(d) for d in diff_ids))

    def _extract(self, diff_id: Digest, layer: Descriptor, stores: Sequence[Store], name: str) -> Digest:
        final = self.path(diff_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP_PREFIX}{diff_id.encoded[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        store = next((s for s in stores if s.has_blob(layer)), stores[-1])
        options = ExtractOptions(same_owner=os.geteuid() == 0, overlay_whiteouts=True)
        try:
            extract_layer(store, layer, diff_id, tmp, options)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                remove_tree(tmp)  # another build extracted it first
        except BaseException as exc:
            remove_tree(tmp)
            if isinstance(exc, OCIBuildError):
                raise type(exc)(f"{name}: layer {layer.digest.short()}: {exc}") from None
            raise
        return diff_id

    # -- gc and fsck ---------------------------------------------------------------------------------
    def entries(self) -> dict[str, Path]:
        """``diffID string -> directory`` of every complete extraction."""
        out: dict[str, Path] = {}
        if not self.root.is_dir():
            return out
        for algo in os.scandir(self.root):
            if not algo.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(algo.path):
                if not entry.name.startswith(_TMP_PREFIX):
                    out[f"{algo.name}:{entry.name}"] = Path(entry.path)
        return out

    def temp_dirs(self) -> list[tuple[Path, float]]:
        """Unfinished extractions with their age in seconds."""
        now = time.time()
        out = []
        for algo in (os.scandir(self.root) if self.root.is_dir() else ()):
            if algo.is_dir(follow_symlinks=False):
                out += [(Path(e.path), now - e.stat(follow_symlinks=False).st_mtime)
                        for e in os.scandir(algo.path) if e.name.startswith(_TMP_PREFIX)]
        return out

    def sweep(self, keep: set[str], *, tmp_ttl: float, dry_run: bool = False) -> list[str]:
        """Remove every extraction not in ``keep`` and unfinished ones older than ``tmp_ttl``."""
        removed = []
        for diff_id, path in sorted(self.entries().items()):
            if diff_id not in keep:
                removed.append(diff_id)
                if not dry_run:
                    remove_tree(path)
        for path, age in self.temp_dirs():
            if age > tmp_ttl:
                removed.append(str(path))
                if not dry_run:
                    remove_tree(path)
        return removed


def needed_diff_ids(layout: Path, roots: Iterable[str]) -> set[str]:
    """The diffIDs of every image reachable from ``roots`` (manifest or index digests) in a layout.

    Plain JSON, like gc's marking: an unreadable manifest or config raises ``OSError``/``ValueError``
    and the caller keeps everything (biased to leaking)."""
    need: set[str] = set()
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        doc = _read_json(layout, digest)
        if doc is None:
            continue  # not here (a base layer's manifest lives in a registry): nothing extracted for it
        for child in doc.get("manifests") or []:
            pending.append(str(child.get("digest")))
        config = doc.get("config")
        if isinstance(config, dict) and config.get("mediaType") in mt.CONFIG_TYPES:
            cfg = _read_json(layout, str(config.get("digest")))
            if cfg is not None:
                need.update(str(d) for d in (cfg.get("rootfs") or {}).get("diff_ids") or [])
    return need


def _read_json(layout: Path, digest: str) -> dict | None:
    algo, _, hexpart = digest.partition(":")
    path = layout / "blobs" / algo / hexpart
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return doc if isinstance(doc, dict) else None


def remove_tree(path: Path) -> None:
    """``rm -rf`` that also removes the read-only directories of an image (``0555`` dirs in ``/usr``),
    which its owner must make writable first when not running as root."""
    if not os.path.lexists(path):
        return
    if os.geteuid() != 0 and os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        for top, dirs, _files in os.walk(path):
            for name in dirs:
                sub = os.path.join(top, name)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
