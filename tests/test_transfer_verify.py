"""Blobs are hashed once per transfer, and still never committed unverified.

A store's ``VerifyingReader`` is trusted by the sink (layout file or registry upload) instead of a
second hash; these tests pin what that trust rests on: the reader checks at the announced size,
a sink accepts it only for the very same digest and size read to the end, and a tampered source
leaves nothing behind in a layout or a registry.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from ocibuild.errors import DigestMismatch
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.base import VerifyingReader, copy_stream, put_bytes, verifier_of
from ocibuild.store.layout import LayoutStore
from ocibuild.store.open import open_reference
from ocibuild.transfer.copy import copy_image
from ocibuild.transfer.progress import CountingProgress


def desc_of(data: bytes) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))


class _ReadOnly:
    """A stream with ``read`` only (no ``readinto``), like an HTTP body."""

    def __init__(self, data: bytes):
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)

    def close(self) -> None:
        pass


def test_verifying_reader_checks_at_the_announced_size_and_reports_reads():
    data = os.urandom(3 * 1024 * 1024 + 17)
    seen: list[int] = []
    reader = VerifyingReader(_ReadOnly(data), desc_of(data), on_read=seen.append)  # type: ignore[arg-type]
    buf = bytearray(1 << 20)
    got = bytearray()
    while n := reader.readinto(buf):
        got += buf[:n]
    assert bytes(got) == data and sum(seen) == len(data) and reader.verified

    # the digest is checked by the read that completes the announced size, before any EOF
    bad = bytearray(data)
    bad[-1] ^= 1
    reader = VerifyingReader(io.BytesIO(bytes(bad)), desc_of(data))  # type: ignore[arg-type]
    assert len(reader.read(len(data) - 1)) == len(data) - 1
    with pytest.raises(DigestMismatch):
        reader.read(1)

    # one byte past the announced size fails at once
    reader = VerifyingReader(io.BytesIO(data + b"x"), desc_of(data))  # type: ignore[arg-type]
    with pytest.raises(DigestMismatch, match="more than"):
        reader.read(len(data) + 1)

    # short streams fail at EOF
    reader = VerifyingReader(io.BytesIO(data[:-1]), desc_of(data))  # type: ignore[arg-type]
    with pytest.raises(DigestMismatch, match="size"):
        reader.read()


def test_copy_stream_trusts_only_a_whole_verifier_of_the_same_blob():
    data = os.urandom(2 * 1024 * 1024 + 5)
    desc = desc_of(data)
    out = bytearray()
    copy_stream(VerifyingReader(io.BytesIO(data), desc), out.extend, desc)  # type: ignore[arg-type]
    assert bytes(out) == data

    # a buffered verifier counts as a verifier; one of another blob does not
    buffered = io.BufferedReader(VerifyingReader(io.BytesIO(data), desc))  # type: ignore[arg-type]
    assert verifier_of(buffered, desc) is buffered.raw
    other = desc_of(data + b"!")
    assert verifier_of(VerifyingReader(io.BytesIO(data), other), desc) is None  # type: ignore[arg-type]
    with pytest.raises(DigestMismatch):  # the sink hashes for itself, and the content is not `other`
        copy_stream(VerifyingReader(io.BytesIO(data), desc), bytearray().extend, other)  # type: ignore[arg-type]

    # a verifier someone already read from delivers too few bytes: refused
    partial = VerifyingReader(io.BytesIO(data), desc)  # type: ignore[arg-type]
    partial.read(10)
    with pytest.raises(DigestMismatch, match="size"):
        copy_stream(partial, bytearray().extend, desc)

    # plain streams are hashed by the sink
    with pytest.raises(DigestMismatch):
        copy_stream(io.BytesIO(data[:-1] + bytes([data[-1] ^ 1])), bytearray().extend, desc)  # type: ignore[arg-type]
    out = bytearray()
    copy_stream(_ReadOnly(data), out.extend, desc)  # type: ignore[arg-type]
    assert bytes(out) == data


def _big_image(store: LayoutStore, size: int) -> tuple[Descriptor, Descriptor]:
    """A one-layer image whose layer (random, ``size`` bytes) goes the streamed upload path."""
    data = os.urandom(size)
    layer = desc_of(data)
    store.put_blob(layer, io.BytesIO(data))
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [str(layer.digest)]}})
    put_bytes(store, cfg.descriptor(), cfg.raw)
    manifest = Manifest.build(cfg.descriptor(), [layer])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag="v1")
    return manifest.descriptor(), layer


def test_tampered_layout_blob_is_never_committed_to_a_registry(tmp_path: Path, registry, fresh_repo):
    src = LayoutStore(tmp_path / "src", create=True)
    _, layer = _big_image(src, 3 * 1024 * 1024)
    path = src.blob_path(layer.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # same size, one byte changed near the end
        fh.seek(layer.size - 100)
        byte = fh.read(1)[0]
        fh.seek(layer.size - 100)
        fh.write(bytes([byte ^ 1]))
    remote, _ = open_reference(f"{registry.host}/{fresh_repo}")
    mark = registry.log_mark()
    with pytest.raises(DigestMismatch):
        copy_image(src, "v1", remote, "v1", jobs=1)
    assert not remote.has_blob(layer)
    entries = registry.access_since(mark)
    commits = [e for e in entries if e.method == "PUT" and "digest=" in e.uri]
    assert not any(str(layer.digest).replace(":", "%3A") in e.uri or str(layer.digest) in e.uri for e in commits)
    assert any(e.method == "DELETE" and "/blobs/uploads/" in e.path for e in entries)  # session cancelled


def test_push_and_pull_count_every_byte_once_and_head_each_blob_once(tmp_path: Path, registry, fresh_repo):
    src = LayoutStore(tmp_path / "src", create=True)
    top, layer = _big_image(src, 3 * 1024 * 1024 + 1)
    remote, _ = open_reference(f"{registry.host}/{fresh_repo}")
    mark = registry.log_mark()
    pushed = CountingProgress()
    copy_image(src, "v1", remote, "v1", progress=pushed)
    total = pushed.stats.bytes["copied"]
    assert pushed.stats.counts["copied"] == 2 and pushed.stats.moved == total
    heads = [e for e in registry.access_since(mark) if e.method == "HEAD" and str(layer.digest) in e.path]
    assert len(heads) == 1  # copy's check; the upload does not ask again

    dst = LayoutStore(tmp_path / "dst", create=True)
    pulled = CountingProgress()
    assert copy_image(remote, "v1", dst, "v1", progress=pulled).digest == top.digest
    assert pulled.stats.moved == pulled.stats.bytes["copied"] == total
    assert dst.blob_path(layer.digest).read_bytes() == src.blob_path(layer.digest).read_bytes()
    assert list((dst.path / ".tmp").iterdir()) == []


def test_chunked_push_from_a_layout_is_verified_by_the_source_reader(tmp_path: Path, registry, fresh_repo):
    from ocibuild.store.registry import RegistryOptions

    options = RegistryOptions(retries=1, chunk_size=1024 * 1024, chunk_threshold=2 * 1024 * 1024)
    src = LayoutStore(tmp_path / "src", create=True)
    top, layer = _big_image(src, 3 * 1024 * 1024 + 3)
    remote, _ = open_reference(f"{registry.host}/{fresh_repo}", options=options)
    mark = registry.log_mark()
    assert copy_image(src, "v1", remote, "v1").digest == top.digest
    ranges = [e for e in registry.access_since(mark) if e.method == "PATCH"]
    assert len(ranges) == 4  # 1 MiB chunks of the 3 MiB layer
    with remote.open_blob(layer) as stream:
        assert stream.read() == src.blob_path(layer.digest).read_bytes()

    other, _ = open_reference(f"{registry.host}/{fresh_repo}-bad", options=options)
    path = src.blob_path(layer.digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # the first chunk is fine, the last one carries the damage
        fh.seek(layer.size - 1)
        byte = fh.read(1)[0]
        fh.seek(layer.size - 1)
        fh.write(bytes([byte ^ 1]))
    with pytest.raises(DigestMismatch):
        copy_image(src, "v1", other, "v1")
    assert not other.has_blob(layer)


def test_a_body_cut_short_is_a_lost_connection_and_leaves_nothing(tmp_path: Path):
    """A registry that closes the connection before Content-Length: a transport error, nothing kept."""
    import socket
    import threading

    data = os.urandom(3 * 1024 * 1024)
    layer = desc_of(data)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536).decode("latin-1")
                if request.startswith("GET /v2/ "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                elif request.startswith("HEAD "):
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:  # the blob: full headers, half the body, then hang up
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                    conn.sendall(head.encode() + data[: len(data) // 2])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    from ocibuild.errors import RegistryError
    from ocibuild.store.registry import RegistryOptions

    try:
        remote, _ = open_reference(f"127.0.0.1:{port}/cut", options=RegistryOptions(retries=0, timeout=10))
        dst = LayoutStore(tmp_path / "dst", create=True)
        with pytest.raises(RegistryError, match="connection lost"):
            with remote.open_blob(layer) as stream:
                dst.put_blob(layer, stream)
        assert not dst.has_blob(layer) and list((dst.path / ".tmp").iterdir()) == []
    finally:
        listener.close()
