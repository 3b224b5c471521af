"""Layer compression: a tar stream in, one temp file out, with the diffID and the digest hashed on the way.

gzip uses python-isal (Intel ISA-L). Measured on this 2-core machine on a 114 MB tar of
``/usr/lib/python3`` + ``/usr/share/doc``: ``gzip -6`` 22 MB/s (ratio 0.563); isal level 1 241 MB/s
(1 thread) / 322 MB/s (2 threads), level 2 229 / 352 MB/s (ratio 0.585), level 3 90 / 152 MB/s
(ratio 0.579). Level 2 is the default: >10x ``gzip -6`` for about 4 % larger blobs.

Parallelism follows pigz (``isal.igzip_threaded``): the stream is cut into fixed 1 MiB blocks,
each block is deflated in its own thread with the previous block's last 32 KiB as dictionary, and
the output is one ordinary gzip member. Cost: a few bytes per block and a flush at each block
boundary. Because the cut points are fixed offsets of the uncompressed stream (we re-block before
the compressor), and the gzip header carries no mtime or file name, the same tar always gives the
same bytes, whatever the thread count or how the tar was written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import zstandard
from isal import igzip_threaded, isal_zlib

from ocibuild.errors import UsageError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest, Hasher

GZIP_LEVEL = 2
BLOCK_SIZE = 1 << 20
ZSTD_LEVEL = 3


def default_threads() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(4, os.cpu_count() or 1))


class HashingWriter:
    """A write-only stream that hashes (and counts) what passes to ``sink`` (which may be None)."""

    def __init__(self, sink: BinaryIO | None, algorithm: str = "sha256"):
        self._sink = sink
        self.hasher = Hasher(algorithm)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    @property
    def size(self) -> int:
        return self.hasher.size

    def digest(self) -> Digest:
        return self.hasher.digest()


class _Reblocker:
    """Passes writes on in chunks of exactly ``block`` bytes (the last one shorter) for stable output."""

    def __init__(self, sink: BinaryIO, block: int):
        self._sink, self._block, self._buf = sink, block, bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        while len(self._buf) >= self._block:
            self._sink.write(bytes(self._buf[: self._block]))
            del self._buf[: self._block]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buf:
            self._sink.write(bytes(self._buf))
            self._buf.clear()
        self._sink.flush()
        self._sink.close()


def compressor(sink: BinaryIO, compression: str, *, level: int | None = None, threads: int | None = None):  # noqa: ANN201
    """A writable stream compressing into ``sink``; ``close()`` finishes the stream (sink stays open)."""
    if compression == "gzip":
        gz = igzip_threaded.open(
            _NoClose(sink), "wb", compresslevel=GZIP_LEVEL if level is None else level,
            threads=threads or default_threads(), block_size=BLOCK_SIZE,
        )
        return _Reblocker(gz, BLOCK_SIZE)
    if compression == "zstd":
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL if level is None else level, write_checksum=True,
                                        threads=0)
        return cctx.stream_writer(_NoClose(sink), closefd=False)
    if compression == "none":
        return _NoClose(sink)
    raise UsageError(f"unknown compression {compression!r} (gzip, zstd or none)")


def decompressor(stream: BinaryIO, compression: str) -> BinaryIO:
    """A readable stream of the uncompressed content (gzip may have several members)."""
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)  # type: ignore[return-value]
    if compression == "none":
        return stream
    raise UsageError(f"unknown compression {compression!r}")


class _NoClose:
    def __init__(self, raw: BinaryIO):
        self._raw = raw

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str):  # noqa: ANN204 - delegate the rest (closed, ...)
        return getattr(self._raw, name)


@dataclass(frozen=True)
class LayerResult:
    """A finished layer in a temp file. ``descriptor`` is what goes into the manifest."""

    descriptor: Descriptor
    diff_id: Digest
    uncompressed_size: int
    path: Path

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def media_type_for(compression: str, docker: bool = False) -> str:
    return mt.layer_type(compression, docker)


def compress_stream(
    produce: Callable[[BinaryIO], object],
    *,
    media_type: str = mt.OCI_LAYER_GZIP,
    tmp_dir: str | os.PathLike[str] | None = None,
    level: int | None = None,
    threads: int | None = None,
    annotations: dict[str, str] | None = None,
) -> LayerResult:
    """Run ``produce(out)`` (which writes a tar to ``out``) into a compressed temp file.

    The uncompressed bytes are hashed for the diffID and the compressed bytes for the digest,
    in the same pass. The temp file is fsynced; the caller moves it into a store (or discards it).
    """
    compression = mt.compression_of(media_type)
    if not mt.is_layer(media_type):
        raise UsageError(f"{media_type} is not a layer media type")
    import tempfile

    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="layer-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw:
            blob_hash = HashingWriter(raw)
            comp = compressor(blob_hash, compression, level=level, threads=threads)  # type: ignore[arg-type]
            tar_hash = HashingWriter(comp)  # type: ignore[arg-type]
            try:
                produce(tar_hash)  # type: ignore[arg-type]
            finally:
                comp.close()
            raw.flush()
            os.fsync(raw.fileno())
        desc = Descriptor(media_type, blob_hash.digest(), blob_hash.size, annotations=annotations or {})
        return LayerResult(desc, tar_hash.digest(), tar_hash.size, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
