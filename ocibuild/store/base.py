"""The one small interface every store implements, and the verified stream both sides rely on.

A store is one place content lives: an OCI image layout directory, or one repository of a
registry. Operations (copy, mutate, compose, gc) are written once against ``Store``.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Callable, ContextManager, Iterable, Protocol, runtime_checkable

from ocibuild.errors import DigestMismatch, ManifestError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import CHUNK, Digest, Hasher
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, AnyManifest, ImageConfig, load_json, parse_manifest

Progress = Callable[[int], None]
"""Called with the number of bytes just moved; used to drive progress bars."""

# Configs and other small JSON blobs are read whole; anything larger must be streamed.
MAX_SMALL_BLOB = MAX_MANIFEST_BYTES


@runtime_checkable
class Store(Protocol):
    """Where manifests and blobs live. Every read is verified against its digest."""

    @property
    def name(self) -> str:
        """Human name for messages: ``oci:/path`` or ``host/repo``. Never holds credentials."""

    def resolve(self, identifier: str) -> Descriptor:
        """Tag or digest string -> descriptor of the manifest it names. Raises ``NotFound``."""

    def get_manifest(self, identifier: str) -> tuple[Descriptor, bytes]:
        """Exact bytes of a manifest by tag or digest, verified against its digest."""

    def put_manifest(self, desc: Descriptor, raw: bytes, tag: str | None = None) -> Descriptor:
        """Store ``raw`` (whose digest must equal ``desc.digest``), optionally under ``tag``."""

    def tag(self, desc: Descriptor, tag: str) -> None:
        """Point ``tag`` at an existing manifest."""

    def tags(self) -> list[str]:
        ...

    def delete(self, identifier: str) -> None:
        """Remove a manifest (by digest) or a tag."""

    def has_blob(self, desc: Descriptor) -> bool:
        ...

    def open_blob(self, desc: Descriptor) -> ContextManager[BinaryIO]:
        """A stream of the blob that raises ``DigestMismatch`` at EOF if digest or size is wrong."""

    def put_blob(self, desc: Descriptor, stream: BinaryIO, progress: Progress | None = None) -> None:
        """Write a blob from a stream; verified while streaming, nothing kept on a mismatch."""

    def referrers(self, subject: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``subject`` (referrers API or the fallback tag)."""

    def close(self) -> None:
        ...


class VerifyingReader(io.RawIOBase):
    """Wraps a stream; hashes what passes through and raises ``DigestMismatch`` when it is wrong.

    The digest is checked the moment the announced size has been read (and again at EOF), and a
    stream running past the announced size fails at once, so a lying server cannot make a reader
    consume unbounded data. ``on_read(n)`` (optional, settable later) is told the bytes delivered:
    progress bars count here, so no second wrapper copies the data. ``readinto`` reads straight
    into the caller's buffer when the wrapped stream can, so no bytes are copied in Python.
    """

    def __init__(
        self,
        raw: BinaryIO,
        desc: Descriptor,
        on_close: Callable[[], None] | None = None,
        on_read: Progress | None = None,
    ):
        super().__init__()
        self._raw = raw
        self._raw_readinto = getattr(raw, "readinto", None)
        self.desc = desc
        self._hasher = Hasher(desc.digest.algorithm, expected=desc.digest, expected_size=desc.size)
        self._on_close = on_close
        self.on_read = on_read
        self.verified = False

    @property
    def consumed(self) -> int:
        """Bytes delivered so far."""
        return self._hasher.size

    def readable(self) -> bool:
        return True

    def _account(self, data: bytes | memoryview) -> None:
        n = len(data)
        if n == 0:
            if not self.verified:
                self._hasher.verify()
                self.verified = True
            return
        self._hasher.update(data)  # raises as soon as the stream runs past the announced size
        if self._hasher.size == self.desc.size and not self.verified:
            self._hasher.verify()
            self.verified = True
        if self.on_read is not None:
            self.on_read(n)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._raw_readinto is not None:
            n = self._raw_readinto(view) or 0
        else:
            chunk = self._raw.read(len(view))
            n = len(chunk)
            view[:n] = chunk
        self._account(view[:n])
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._raw.read(size)
        self._account(data)
        return data

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._on_close is not None:
                self._on_close()
            self._raw.close()
        finally:
            super().close()


def verifier_of(stream: object, desc: Descriptor) -> VerifyingReader | None:
    """The ``VerifyingReader`` behind ``stream`` if it checks exactly ``desc`` (digest and size).

    Such a stream needs no second hash: a sink that reads it to EOF and counts exactly
    ``desc.size`` bytes has received verified content (see ``copy_stream``). A ``BufferedReader``
    over a verifier counts too: what it delivers is what the verifier produced, in order.
    """
    reader = stream.raw if isinstance(stream, io.BufferedReader) else stream
    if isinstance(reader, VerifyingReader) and reader.desc.digest == desc.digest and reader.desc.size == desc.size:
        return reader
    return None


def copy_stream(
    stream: BinaryIO,
    write: Callable[[memoryview], object],
    desc: Descriptor,
    progress: Progress | None = None,
    buffer_size: int = CHUNK,
) -> None:
    """Move ``stream`` to ``write`` through one reusable buffer, verified against ``desc``.

    Hashes unless ``stream`` already verifies ``desc`` (then the bytes are hashed once, by the
    reader). Raises ``DigestMismatch`` on a wrong digest or size; the caller discards what it wrote.
    """
    verifier = verifier_of(stream, desc)
    hasher = None if verifier is not None else Hasher(desc.digest.algorithm, expected=desc.digest, expected_size=desc.size)
    buf = memoryview(bytearray(buffer_size))
    readinto = getattr(stream, "readinto", None)
    total = 0
    while True:
        if readinto is not None:
            n = readinto(buf) or 0
            data = buf[:n]
        else:
            data = memoryview(stream.read(buffer_size))
            n = len(data)
        if not n:
            break
        total += n
        if hasher is not None:
            hasher.update(data)
        elif total > desc.size:
            raise DigestMismatch(f"blob {desc.digest}: more than the announced {desc.size} bytes")
        write(data)
        if progress is not None:
            progress(n)
    if hasher is not None:
        hasher.verify()
    elif total != desc.size or not verifier.verified:  # type: ignore[union-attr]
        raise DigestMismatch(f"blob {desc.digest}: size {total}, expected {desc.size}")


def verify_bytes(desc: Descriptor, data: bytes) -> None:
    """Raise ``DigestMismatch`` unless ``data`` is exactly what ``desc`` describes."""
    hasher = Hasher(desc.digest.algorithm, expected=desc.digest, expected_size=desc.size)
    hasher.update(data)
    hasher.verify()


def read_blob(store: Store, desc: Descriptor, limit: int = MAX_SMALL_BLOB) -> bytes:
    """A small blob (config, JSON) whole and verified. Layers must be streamed instead."""
    if desc.size > limit:
        raise ManifestError(f"blob {desc.digest} is {desc.size} bytes; refusing to read it into memory")
    if desc.data is not None:
        verify_bytes(desc, desc.data)
        return desc.data
    with store.open_blob(desc) as stream:
        data = stream.read()  # reads to EOF, where the stream verifies digest and size
    verify_bytes(desc, data)
    return data


def load_manifest(store: Store, identifier: str) -> tuple[Descriptor, AnyManifest]:
    desc, raw = store.get_manifest(identifier)
    return desc, parse_manifest(raw, desc.media_type)


def load_config(store: Store, desc: Descriptor) -> ImageConfig:
    raw = read_blob(store, desc)
    if desc.media_type not in mt.CONFIG_TYPES:
        load_json(raw, "config")  # still must be JSON to be called a config
    return ImageConfig.parse(raw, desc.media_type)


def put_bytes(store: Store, desc: Descriptor, data: bytes) -> None:
    """Write a small blob held in memory (configs, the empty blob)."""
    verify_bytes(desc, data)
    if not store.has_blob(desc):
        store.put_blob(desc, io.BytesIO(data))


def walk_children(manifest: AnyManifest) -> Iterable[Descriptor]:
    return manifest.children()


def digest_arg(identifier: str) -> Digest | None:
    """The digest in an identifier string, or None when it is a tag.

    Layout tags may contain ``:`` and ``/`` (``ocibuild.local/builder:1``), so only a string in the
    digest grammar with a known algorithm counts as a digest.
    """
    algorithm, sep, _ = identifier.partition(":")
    if not sep or algorithm not in ("sha256", "sha512"):
        return None
    return Digest.parse(identifier)
