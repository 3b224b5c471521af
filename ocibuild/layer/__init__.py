"""Layers: reproducible tars (``tarwriter``), compression with diffID/digest (``compress``), safe unpack (``extract``).

``write_layer`` is the one call most code needs: a directory, a tarball or a list of entries in,
a compressed, hashed temp file and its descriptor out.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Callable

from ocibuild.layer.compress import LayerResult, compress_stream
from ocibuild.layer.tarwriter import (
    NORMALIZED_MTIME,
    TarEntry,
    TarOptions,
    TarSource,
    keep_mode,
    pack_mode,
    tar_source,
)
from ocibuild.oci import mediatype as mt


def write_layer(
    source: TarSource | Callable[[BinaryIO], object],
    *,
    media_type: str = mt.OCI_LAYER_GZIP,
    options: TarOptions = TarOptions(),
    prefix: str = "",
    include_parents: bool = True,
    tmp_dir: str | os.PathLike[str] | None = None,
    level: int | None = None,
    threads: int | None = None,
    annotations: dict[str, str] | None = None,
) -> LayerResult:
    """Build one layer from ``source`` into a temp file (in ``tmp_dir``: use the store's ``tmp_dir``
    so the file can be renamed into ``blobs/``).

    ``source``: a directory, a tarball (re-normalised), an iterable of ``TarEntry``, or a callable
    that writes a tar stream itself (taken as is). ``media_type`` chooses the compression:
    OCI gzip by default, ``DOCKER_LAYER``, ``OCI_LAYER_ZSTD`` or plain ``OCI_LAYER``.
    """
    if callable(source) and not isinstance(source, (str, os.PathLike)):
        produce = source
    else:
        def produce(out: BinaryIO) -> object:
            return tar_source(source, out, options, prefix, include_parents=include_parents)  # type: ignore[arg-type]

    return compress_stream(produce, media_type=media_type, tmp_dir=tmp_dir, level=level, threads=threads,
                           annotations=annotations)


__all__ = [
    "LayerResult", "NORMALIZED_MTIME", "TarEntry", "TarOptions", "keep_mode", "pack_mode", "write_layer",
]
