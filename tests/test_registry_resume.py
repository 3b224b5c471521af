"""Blob transfers that lose their connection mid-body, in process, against the real registry.

A push dropped mid-PATCH/PUT must open a new upload session (the old one is spoiled: resending
into it earns 404 BLOB_UPLOAD_INVALID) and resend from the rewound stream; a pull dropped
mid-blob must resume with ``Range`` and keep hashing across the pieces. The registry's access
log shows what really happened (sessions opened, 206 answers). A tiny HTTP server covers what
the real registry will not do: ignore ``Range`` (200) or answer a wrong ``Content-Range``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import threading
from typing import Iterator

import pytest

from ocibuild.errors import DigestMismatch, RegistryError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.reference import Reference
from ocibuild.store.registry import RegistryOptions, RegistryStore

from support.faultproxy import Fault, FaultProxy
from support.registry import RegistryServer

MB = 1024 * 1024


def blob(size: int, seed: int) -> tuple[Descriptor, bytes]:
    data = random.Random(seed).randbytes(size)
    return Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data)), data


def store(host: str, repo: str, **opts: object) -> RegistryStore:
    options = RegistryOptions(insecure=frozenset({host}), timeout=20, **opts)  # type: ignore[arg-type]
    return RegistryStore(Reference(host, repo, "latest"), options)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.port) as p:
        yield p


def stored_digest(registry: RegistryServer, repo: str, desc: Descriptor) -> str:
    resp = registry.get(f"/v2/{repo}/blobs/{desc.digest}")
    assert resp.status_code == 200
    return "sha256:" + hashlib.sha256(resp.content).hexdigest()


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._inner.readinto(b)


# -- pushes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "opts"),
    [
        (600 * 1024, {}),  # one monolithic PUT
        (3 * MB, {}),  # one streamed PATCH
        (3 * MB, {"chunk_threshold": MB, "chunk_size": 512 * 1024}),  # Content-Range chunks
    ],
    ids=["put", "patch", "chunked"],
)
def test_push_dropped_mid_body_starts_a_new_session(registry: RegistryServer, proxy: FaultProxy, fresh_repo: str,
                                                    size: int, opts: dict[str, int]) -> None:
    desc, data = blob(size, seed=size)
    proxy.inject(Fault("drop", after=size // 2, direction="up"))
    mark = registry.log_mark()
    progress: list[int] = []
    store(proxy.host, fresh_repo, **opts).put_blob(desc, io.BytesIO(data), progress.append)
    assert not proxy.faults  # the drop fired (taken off the queue as it crossed its byte count)
    assert stored_digest(registry, fresh_repo, desc) == str(desc.digest)
    assert sum(progress) == size  # resent bytes are not counted twice
    access = registry.access_since(mark)
    posts = [e for e in access if e.method == "POST" and "/blobs/uploads/" in e.path]
    assert len(posts) == 2, access  # a second session, not a resend into the dead one
    sends = [e for e in access if e.method in ("PATCH", "PUT") and "/blobs/uploads/" in e.path]
    assert not [e for e in sends if e.status == 404], access  # never resent into the dead session
    assert [e for e in access if e.method == "DELETE" and "/blobs/uploads/" in e.path], "old session not cancelled"
    commits = [e for e in access if e.method == "PUT" and "digest=" in e.uri and e.status == 201]
    assert len(commits) == 1


def test_push_from_unseekable_stream_fails_clearly(registry: RegistryServer, proxy: FaultProxy,
                                                   fresh_repo: str) -> None:
    desc, data = blob(3 * MB, seed=7)
    proxy.inject(Fault("drop", after=MB, direction="up"))
    with pytest.raises(RegistryError, match="cannot be rewound") as info:
        store(proxy.host, fresh_repo).put_blob(desc, _Unseekable(data))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert registry.get(f"/v2/{fresh_repo}/blobs/{desc.digest}").status_code == 404


def test_push_sessions_are_bounded(registry: RegistryServer, proxy: FaultProxy, fresh_repo: str) -> None:
    desc, data = blob(3 * MB, seed=8)
    proxy.inject(*[Fault("drop", after=MB, direction="up")] * 10)
    mark = registry.log_mark()
    with pytest.raises(RegistryError, match="gave up after 3 upload sessions"):
        store(proxy.host, fresh_repo, retries=2).put_blob(desc, io.BytesIO(data))
    posts = [e for e in registry.access_since(mark) if e.method == "POST" and "/blobs/uploads/" in e.path]
    assert len(posts) == 3
    assert registry.get(f"/v2/{fresh_repo}/blobs/{desc.digest}").status_code == 404


# -- pulls -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pulled(registry: RegistryServer) -> tuple[str, Descriptor, bytes]:
    repo = "test/resume-source"
    desc, data = blob(3 * MB, seed=3)
    store(registry.host, repo).put_blob(desc, io.BytesIO(data))
    return repo, desc, data


def test_pull_dropped_mid_blob_resumes_with_range(registry: RegistryServer, proxy: FaultProxy,
                                                  pulled: tuple[str, Descriptor, bytes]) -> None:
    repo, desc, data = pulled
    proxy.inject(Fault("drop", after=MB), Fault("drop", after=MB))
    mark = registry.log_mark()
    with store(proxy.host, repo).open_blob(desc) as stream:
        got = stream.read()
    assert got == data
    assert not proxy.faults  # both drops fired
    gets = [e.status for e in registry.access_since(mark) if e.method == "GET" and "/blobs/sha256:" in e.path]
    assert gets[0] == 200 and gets[1:] == [206, 206], gets


def test_pull_resumes_are_bounded(registry: RegistryServer, proxy: FaultProxy,
                                  pulled: tuple[str, Descriptor, bytes]) -> None:
    repo, desc, _ = pulled
    proxy.inject(*[Fault("drop", after=256 * 1024)] * 20)
    with pytest.raises(RegistryError, match="gave up after 2 resumed downloads"):
        with store(proxy.host, repo, retries=2).open_blob(desc) as stream:
            while stream.read(64 * 1024):
                pass


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves one blob; the first GET dies halfway; a Range GET is answered as ``mode`` says."""

    data = b""
    mode = "ignore-range"
    gets: list[str | None] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng = self.headers.get("Range")
        type(self).gets.append(rng)
        if rng is None:
            self._send(200, self.data, cut=len(self.data) // 2)
        elif self.mode == "ignore-range":
            self._send(200, self.data)
        elif self.mode == "wrong-start":
            start = int(rng[6:-1])
            self._send(206, self.data[start - 10:], content_range=f"bytes {start - 10}-{len(self.data) - 1}/*")
        elif self.mode == "tampered":
            start = int(rng[6:-1])
            body = bytes(b ^ 1 for b in self.data[start:])
            self._send(206, body, content_range=f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")

    def _send(self, status: int, body: bytes, cut: int | None = None, content_range: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def flaky() -> Iterator[type[_Flaky]]:
    handler = type("Handler", (_Flaky,), {"gets": [], "data": random.Random(9).randbytes(2 * MB)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.host = f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_resume_answered_200_skips_what_was_hashed(flaky: type[_Flaky]) -> None:
    data = flaky.data
    desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
    with store(flaky.host, "r").open_blob(desc) as stream:  # type: ignore[attr-defined]
        assert stream.read() == data
    assert flaky.gets[0] is None and flaky.gets[1] is not None and flaky.gets[1].startswith("bytes=")


@pytest.mark.parametrize(("mode", "error"), [("wrong-start", RegistryError), ("tampered", DigestMismatch)])
def test_resume_refuses_what_does_not_continue_the_blob(flaky: type[_Flaky], mode: str,
                                                        error: type[Exception]) -> None:
    flaky.mode = mode
    data = flaky.data
    desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
    with pytest.raises(error):
        with store(flaky.host, "r").open_blob(desc) as stream:  # type: ignore[attr-defined]
            stream.read()
