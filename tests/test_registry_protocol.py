"""Protocol edge cases of the registry store, against ``responses`` (the real registry can't produce them)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from ocibuild.errors import AuthError, DigestMismatch, ManifestError, RegistryError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.oci.reference import Reference
from ocibuild.store.registry import Credential, RegistryClient, RegistryOptions, RegistryStore
from ocibuild.store.registry import client as client_mod

REG = "reg.test"
BASE = f"https://{REG}"
REALM = "https://auth.test/token"
CHALLENGE = f'Bearer realm="{REALM}",service="{REG}"'


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps(monkeypatch):
    recorded: list[float] = []
    monkeypatch.setattr(client_mod, "_sleep", recorded.append)
    return recorded


def make_store(repo: str = "dst", credential: Credential | None = None, **opts) -> RegistryStore:
    options = RegistryOptions(**opts)
    client = RegistryClient(REG, options, credential=credential or Credential("user", "pw"))
    return RegistryStore(Reference(REG, repo, "latest"), options, client=client)


def blob(data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data))


class TokenServer:
    """A token endpoint that records the scopes asked and hands out numbered tokens."""

    def __init__(self, rsps: responses.RequestsMock):
        self.requests: list[dict[str, list[str]]] = []
        self.auth_headers: list[str | None] = []
        rsps.add_callback(responses.GET, REALM, callback=self._issue)

    def _issue(self, request):
        query = parse_qs(urlsplit(request.url).query)
        self.requests.append(query)
        self.auth_headers.append(request.headers.get("Authorization"))
        return 200, {}, json.dumps({"token": f"tok{len(self.requests)}", "expires_in": 300})

    def scopes(self, i: int) -> set[str]:
        return set(self.requests[i].get("scope", []))


def bearer_guard(valid: set[str], handler):
    """Wrap a callback: 401 with the challenge unless a valid bearer token is sent."""

    def callback(request):
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in valid:
            body = "" if request.method == "HEAD" else json.dumps({"errors": [{"code": "UNAUTHORIZED"}]})
            return 401, {"WWW-Authenticate": CHALLENGE}, body
        return handler(request)

    return callback


# -- auth ------------------------------------------------------------------------------------------


def test_token_flow_scope_upgrade_for_mount(rsps):
    tokens = TokenServer(rsps)
    layer = blob(b"layer")
    rsps.add_callback(
        responses.HEAD, f"{BASE}/v2/dst/blobs/{layer.digest}",
        callback=bearer_guard({"tok1", "tok2"}, lambda r: (404, {}, "")),
    )
    mount_auth: list[str] = []

    def mount(request):
        mount_auth.append(request.headers["Authorization"])
        q = parse_qs(urlsplit(request.url).query)
        assert q == {"mount": [str(layer.digest)], "from": ["src/app"]}
        return 201, {"Location": f"/v2/dst/blobs/{layer.digest}"}, ""

    rsps.add_callback(responses.POST, f"{BASE}/v2/dst/blobs/uploads/", callback=bearer_guard({"tok2"}, mount))
    store = make_store()
    assert store.has_blob(layer) is False
    assert tokens.scopes(0) == {"repository:dst:pull"}
    assert tokens.requests[0]["service"] == [REG]
    assert store.mount_blob(layer, "src/app") is True
    # one token for the union scope: pull on the source, pull+push on the destination
    assert tokens.scopes(1) == {"repository:dst:pull,push", "repository:src/app:pull"}
    assert mount_auth == ["Bearer tok2"]
    # Basic credentials went to the token service only
    assert all(h and h.startswith("Basic ") for h in tokens.auth_headers)
    # the pull token is cached: a second HEAD asks no new token
    assert store.has_blob(layer) is False
    assert len(tokens.requests) == 2


def test_refresh_on_401_with_cached_token(rsps):
    tokens = TokenServer(rsps)
    valid = {"tok1"}
    layer = blob(b"x")
    rsps.add_callback(
        responses.HEAD, f"{BASE}/v2/dst/blobs/{layer.digest}", callback=bearer_guard(valid, lambda r: (200, {}, ""))
    )
    store = make_store()
    assert store.has_blob(layer)
    valid.clear()
    valid.add("tok2")  # the registry revoked tok1 before its expiry
    assert store.has_blob(layer)
    assert len(tokens.requests) == 2
    sent = [c.request.headers.get("Authorization") for c in rsps.calls if urlsplit(c.request.url).netloc == REG]
    assert sent == [None, "Bearer tok1", "Bearer tok1", "Bearer tok2"]


def test_token_rejected_raises_auth_error_without_secret(rsps):
    rsps.add(responses.GET, REALM, status=401, json={"details": "incorrect username or password"})
    rsps.add(responses.GET, f"{BASE}/v2/dst/tags/list", status=401, headers={"WWW-Authenticate": CHALLENGE})
    store = make_store(credential=Credential("user", "s3cr3t-pw"))
    with pytest.raises(AuthError) as info:
        store.tags()
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(store.client.credential)


def test_identity_token_uses_oauth2_post_then_get_on_404(rsps):
    posts: list[dict[str, list[str]]] = []

    def post(request):
        posts.append(parse_qs(request.body))
        return 404, {}, ""

    rsps.add_callback(responses.POST, REALM, callback=post)
    tokens = TokenServer(rsps)
    rsps.add_callback(
        responses.GET, f"{BASE}/v2/dst/tags/list", callback=bearer_guard({"tok1"}, lambda r: (200, {}, '{"tags":[]}'))
    )
    store = make_store(credential=Credential(identity_token="refresh-me"))
    assert store.tags() == []
    assert posts[0]["grant_type"] == ["refresh_token"] and posts[0]["refresh_token"] == ["refresh-me"]
    assert posts[0]["scope"] == ["repository:dst:pull"]
    assert tokens.auth_headers == [None]  # an identity token is never sent as Basic


def test_basic_over_plain_http_to_remote_host_is_refused(rsps):
    host = "reg.insecure:5000"
    rsps.add(responses.GET, f"http://{host}/v2/dst/tags/list", status=401,
             headers={"WWW-Authenticate": 'Basic realm="registry"'})
    options = RegistryOptions(insecure=frozenset({host}))
    client = RegistryClient(host, options, credential=Credential("user", "pw"), scheme="http")
    store = RegistryStore(Reference(host, "dst"), options, client=client)
    with pytest.raises(AuthError, match="plain HTTP"):
        store.tags()
    assert all("Authorization" not in c.request.headers for c in rsps.calls)


def test_basic_over_https(rsps):
    seen: list[str | None] = []

    def tags(request):
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != Credential("user", "pw").basic_header():
            return 401, {"WWW-Authenticate": 'Basic realm="registry"'}, ""
        return 200, {}, '{"name":"dst","tags":["b","a"]}'

    rsps.add_callback(responses.GET, f"{BASE}/v2/dst/tags/list", callback=tags)
    store = make_store()
    assert store.tags() == ["a", "b"]
    assert store.tags() == ["a", "b"]
    expected = "Basic " + base64.b64encode(b"user:pw").decode()
    assert seen == [None, expected, expected]  # after the first challenge, Basic is sent up front


# -- retries ---------------------------------------------------------------------------------------


def _manifest() -> Manifest:
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    return Manifest.build(cfg.descriptor(), [])


def test_429_honours_retry_after(rsps, sleeps):
    m = _manifest()
    url = f"{BASE}/v2/dst/manifests/v1"
    rsps.add(responses.GET, url, status=429, headers={"Retry-After": "7"})
    rsps.add(responses.GET, url, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    rsps.add(responses.GET, url, status=429, headers={"Retry-After": "100000"})
    rsps.add(responses.GET, url, body=m.raw, headers={"Content-Type": mt.OCI_MANIFEST})
    store = make_store()
    desc, raw = store.get_manifest("v1")
    assert raw == m.raw and desc.digest == m.digest
    assert sleeps == [7.0, 0.0, client_mod.MAX_RETRY_AFTER]  # past date -> now; huge -> capped


def test_5xx_retried_then_success(rsps, sleeps):
    layer = blob(b"abc")
    url = f"{BASE}/v2/dst/blobs/{layer.digest}"
    rsps.add(responses.HEAD, url, status=503)
    rsps.add(responses.HEAD, url, status=502)
    rsps.add(responses.HEAD, url, status=200)
    assert make_store().has_blob(layer)
    assert len(sleeps) == 2 and all(0 < s <= client_mod.MAX_BACKOFF for s in sleeps)


def test_retries_are_bounded(rsps, sleeps):
    layer = blob(b"abc")
    rsps.add(responses.HEAD, f"{BASE}/v2/dst/blobs/{layer.digest}", status=500)
    with pytest.raises(RegistryError) as info:
        make_store(retries=2).has_blob(layer)
    assert info.value.status == 500
    assert len(sleeps) == 2


def test_connection_errors_retried_then_reported(rsps, sleeps):
    import requests

    layer = blob(b"abc")
    rsps.add(responses.HEAD, f"{BASE}/v2/dst/blobs/{layer.digest}", body=requests.ConnectionError("boom"))
    with pytest.raises(RegistryError, match="cannot reach reg.test"):
        make_store(retries=3).has_blob(layer)
    assert len(sleeps) == 3


# -- manifests -------------------------------------------------------------------------------------


def test_manifest_without_docker_content_digest(rsps):
    m = _manifest()
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/v1", body=m.raw, headers={"Content-Type": mt.OCI_MANIFEST})
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/{m.digest}", body=m.raw,
             headers={"Content-Type": mt.OCI_MANIFEST})
    rsps.add(responses.PUT, f"{BASE}/v2/dst/manifests/v2", status=201)
    store = make_store()
    assert store.get_manifest("v1")[0] == m.descriptor()
    assert store.get_manifest(str(m.digest))[1] == m.raw
    assert store.put_manifest(m.descriptor(), m.raw, tag="v2").digest == m.digest
    put = [c for c in rsps.calls if c.request.method == "PUT"][0]
    assert put.request.headers["Content-Type"] == mt.OCI_MANIFEST and put.request.body == m.raw


def test_manifest_bytes_not_matching_requested_digest(rsps):
    m, other = _manifest(), b'{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[]}'
    tampered = other % (mt.OCI_MANIFEST.encode(), json.dumps(_manifest().config.to_dict()).encode())
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/{m.digest}", body=tampered,
             headers={"Content-Type": mt.OCI_MANIFEST})
    with pytest.raises(DigestMismatch):
        make_store().get_manifest(str(m.digest))


def test_manifest_header_digest_contradicting_bytes(rsps):
    m = _manifest()
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/v1", body=m.raw,
             headers={"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": str(Digest.of(b"other"))})
    with pytest.raises(DigestMismatch):
        make_store().get_manifest("v1")


def test_manifest_media_type_contradicting_content_type(rsps):
    m = _manifest()
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/v1", body=m.raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    with pytest.raises(ManifestError, match="served as"):
        make_store().get_manifest("v1")


def test_manifest_size_capped(rsps):
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/v1", body=b" " * (9 * 1024 * 1024),
             headers={"Content-Type": mt.OCI_MANIFEST})
    with pytest.raises(ManifestError, match="limit"):
        make_store().get_manifest("v1")


def test_manifest_put_digest_mismatch_reported(rsps):
    m = _manifest()
    rsps.add(responses.PUT, f"{BASE}/v2/dst/manifests/v1", status=201,
             headers={"Docker-Content-Digest": str(Digest.of(b"nope"))})
    with pytest.raises(DigestMismatch):
        make_store().put_manifest(m.descriptor(), m.raw, tag="v1")


def test_delete_by_tag_explains(rsps):
    rsps.add(responses.DELETE, f"{BASE}/v2/dst/manifests/v1", status=400,
             json={"errors": [{"code": "UNSUPPORTED", "message": "unsupported"}]})
    with pytest.raises(RegistryError, match="deleting by digest removes"):
        make_store().delete("v1")


# -- blobs -----------------------------------------------------------------------------------------


def test_blob_body_mismatch_raises(rsps):
    data = b"real content"
    desc = blob(data)
    rsps.add(responses.GET, f"{BASE}/v2/dst/blobs/{desc.digest}", body=b"fake content")
    with pytest.raises(DigestMismatch):
        with make_store().open_blob(desc) as stream:
            stream.read()


def test_redirect_to_other_host_drops_authorization(rsps):
    tokens = TokenServer(rsps)
    data = os.urandom(5000)
    desc = blob(data)
    rsps.add_callback(
        responses.GET, f"{BASE}/v2/dst/blobs/{desc.digest}",
        callback=bearer_guard({"tok1"}, lambda r: (307, {"Location": "https://cdn.test/blobs/xyz?sig=1"}, "")),
    )
    rsps.add(responses.GET, "https://cdn.test/blobs/xyz", body=data)
    with make_store().open_blob(desc) as stream:
        assert stream.read() == data
    cdn = [c for c in rsps.calls if "cdn.test" in c.request.url]
    assert len(cdn) == 1 and "Authorization" not in cdn[0].request.headers
    assert len(tokens.requests) == 1


class FakeUploads:
    """A registry upload endpoint with sessions, for the push paths."""

    def __init__(self, rsps, location_style: str = "absolute", chunk_min: int | None = None):
        self.sessions: dict[str, bytearray] = {}
        self.committed: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.style = location_style
        self.chunk_min = chunk_min
        self.fail_416_once = False
        self.partial_on_416 = 0
        self.n = 0
        rsps.add(responses.HEAD, re.compile(rf"{BASE}/v2/dst/blobs/.*"), status=404)
        rsps.add_callback(responses.POST, f"{BASE}/v2/dst/blobs/uploads/", callback=self.post)
        up = re.compile(rf"{BASE}/(v2/dst/blobs/uploads|upload)/[^/?]+.*")
        for method, name in (("PATCH", "patch"), ("PUT", "put"), ("GET", "status"), ("DELETE", "delete")):
            rsps.add_callback(method, up, callback=lambda request, name=name: getattr(self, name)(request))

    def _loc(self, sid: str) -> str:
        if self.style == "relative":
            return f"/v2/dst/blobs/uploads/{sid}?_state=s{self.n}"
        return f"{BASE}/upload/{sid}?_state=s{self.n}"

    @staticmethod
    def _sid(request) -> str:
        return urlsplit(request.url).path.rsplit("/", 1)[1]

    def post(self, request):
        self.n += 1
        sid = f"u{self.n}"
        self.sessions[sid] = bytearray()
        headers = {"Location": self._loc(sid), "Range": "0-0"}
        if self.chunk_min:
            headers["OCI-Chunk-Min-Length"] = str(self.chunk_min)
        return 202, headers, ""

    def patch(self, request):
        sid, body = self._sid(request), request.body or b""
        buf = self.sessions[sid]
        crange = request.headers.get("Content-Range")
        if crange:
            start, end = (int(x) for x in crange.split("-"))
            assert end - start + 1 == len(body)
            if self.fail_416_once and start > 0:
                self.fail_416_once = False
                buf += body[: self.partial_on_416]  # the registry kept part of it, then lost track
                return 416, {}, ""
            if start != len(buf):
                return 416, {}, ""
        buf += body
        return 202, {"Location": self._loc(sid), "Range": f"0-{len(buf) - 1}"}, ""

    def status(self, request):
        buf = self.sessions[self._sid(request)]
        return 204, {"Location": self._loc(self._sid(request)), "Range": f"0-{len(buf) - 1}"}, ""

    def put(self, request):
        sid = self._sid(request)
        query = parse_qs(urlsplit(request.url).query)
        assert query["_state"], "Location query must be kept verbatim"
        data = bytes(self.sessions.pop(sid)) + (request.body or b"")
        digest = query["digest"][0]
        if str(Digest.of(data)) != digest:
            return 400, {}, json.dumps({"errors": [{"code": "DIGEST_INVALID", "message": "digest invalid"}]})
        self.committed[digest] = data
        return 201, {"Docker-Content-Digest": digest, "Location": f"/v2/dst/blobs/{digest}"}, ""

    def delete(self, request):
        sid = self._sid(request)
        self.sessions.pop(sid, None)
        self.deleted.append(sid)
        return 204, {}, ""


@pytest.mark.parametrize("style", ["relative", "absolute"])
@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024])
def test_upload_relative_and_absolute_location(rsps, style, size):
    uploads = FakeUploads(rsps, style)
    data = os.urandom(size)
    desc = blob(data)
    progress: list[int] = []
    make_store().put_blob(desc, io.BytesIO(data), progress.append)
    assert uploads.committed == {str(desc.digest): data}
    assert sum(progress) == size
    put = [c for c in rsps.calls if c.request.method == "PUT"][0]
    expected_prefix = f"{BASE}/upload/u1?" if style == "absolute" else f"{BASE}/v2/dst/blobs/uploads/u1?"
    assert put.request.url.startswith(expected_prefix)


def test_chunked_upload_recovers_from_416(rsps):
    uploads = FakeUploads(rsps, "absolute", chunk_min=300 * 1024)
    uploads.fail_416_once = True
    uploads.partial_on_416 = 12345
    data = os.urandom(2 * 1024 * 1024 + 77)
    desc = blob(data)
    store = make_store(chunk_size=256 * 1024, chunk_threshold=1024 * 1024)
    store.put_blob(desc, io.BytesIO(data))
    assert uploads.committed == {str(desc.digest): data}
    patches = [c.request for c in rsps.calls if c.request.method == "PATCH"]
    ranges = [p.headers["Content-Range"] for p in patches]
    chunk = 300 * 1024  # OCI-Chunk-Min-Length wins over the smaller configured chunk size
    assert ranges[0] == f"0-{chunk - 1}"
    assert ranges[1] == f"{chunk}-{2 * chunk - 1}"  # refused with 416 after keeping 12345 bytes
    assert ranges[2] == f"{chunk + 12345}-{chunk + 12345 + chunk - 1}"  # resumed where the registry was
    assert any(c.request.method == "GET" and "/upload/" in c.request.url for c in rsps.calls)


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024])
def test_upload_cancelled_when_stream_does_not_match(rsps, size):
    uploads = FakeUploads(rsps)
    data = os.urandom(size)
    desc = blob(b"Z" + data[1:])
    with pytest.raises(DigestMismatch):
        make_store().put_blob(desc, io.BytesIO(data))
    assert uploads.committed == {}
    assert uploads.deleted == ["u1"]
    assert not [c for c in rsps.calls if c.request.method == "PUT"]  # never committed


def test_upload_cancelled_when_stream_too_short(rsps):
    uploads = FakeUploads(rsps)
    data = os.urandom(2 * 1024 * 1024)
    desc = blob(data)
    with pytest.raises(DigestMismatch, match="ended"):
        make_store().put_blob(desc, io.BytesIO(data[:-10]))
    assert uploads.deleted == ["u1"] and uploads.committed == {}


def test_mount_202_then_upload(rsps):
    uploads = FakeUploads(rsps)
    data = b"layer bytes"
    desc = blob(data)
    store = make_store()
    mounted = store.mount_blob(desc, "elsewhere")  # the POST answers 202: a plain session
    assert mounted is False
    assert uploads.deleted == ["u1"]
    store.put_blob(desc, io.BytesIO(data))
    assert uploads.committed == {str(desc.digest): data}


def test_mount_denied_falls_back(rsps):
    rsps.add(responses.POST, f"{BASE}/v2/dst/blobs/uploads/", status=403)
    assert make_store().mount_blob(blob(b"x"), "private") is False


# -- listing ---------------------------------------------------------------------------------------


def test_tag_pagination_over_link(rsps):
    pages = {
        None: (["c", "a"], '</v2/dst/tags/list?n=2&last=c>; rel="next"'),
        "c": (["d", "e"], f'<{BASE}/v2/dst/tags/list?n=2&last=e>; rel="next"'),
        "e": (["f"], None),
    }

    def tags(request):
        last = parse_qs(urlsplit(request.url).query).get("last", [None])[0]
        names, link = pages[last]
        return 200, ({"Link": link} if link else {}), json.dumps({"name": "dst", "tags": names})

    rsps.add_callback(responses.GET, f"{BASE}/v2/dst/tags/list", callback=tags)
    assert make_store().tags() == ["a", "c", "d", "e", "f"]
    assert len(rsps.calls) == 3


def test_referrers_fallback_on_404(rsps):
    m = _manifest()
    from ocibuild.oci.manifest import Index

    sig = Descriptor(mt.OCI_MANIFEST, Digest.of(b"sig"), 3, artifact_type="application/x-sig")
    other = Descriptor(mt.OCI_MANIFEST, Digest.of(b"sbom"), 4, artifact_type="application/x-sbom")
    index = Index.build([sig, other])
    rsps.add(responses.GET, f"{BASE}/v2/dst/referrers/{m.digest}", status=404)
    rsps.add(responses.GET, f"{BASE}/v2/dst/manifests/sha256-{m.digest.encoded}", body=index.raw,
             headers={"Content-Type": mt.OCI_INDEX})
    assert make_store().referrers(m.descriptor(), "application/x-sig") == [sig]


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._inner.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _patch_fails_once(rsps, uploads: FakeUploads) -> None:
    state = {"failed": False}
    original = uploads.patch

    def flaky(request):
        if not state["failed"]:
            state["failed"] = True
            if hasattr(request.body, "read"):
                request.body.read()
            return 503, {}, ""
        return original(request)

    uploads.patch = flaky  # type: ignore[method-assign]


def test_streamed_patch_retried_from_a_rewound_stream(rsps, sleeps):
    uploads = FakeUploads(rsps)
    _patch_fails_once(rsps, uploads)
    data = os.urandom(2 * 1024 * 1024)
    make_store().put_blob(blob(data), io.BytesIO(data))
    assert uploads.committed == {str(blob(data).digest): data}
    assert len(sleeps) == 1


def test_unseekable_stream_cannot_be_resent(rsps, sleeps):
    uploads = FakeUploads(rsps)
    _patch_fails_once(rsps, uploads)
    data = os.urandom(2 * 1024 * 1024)
    with pytest.raises(RegistryError, match="cannot be rewound"):
        make_store().put_blob(blob(data), _Unseekable(data))
    assert uploads.committed == {} and uploads.deleted == ["u1"]


@pytest.mark.parametrize(
    ("plain", "expected", "tls_asked"),
    [
        ((200, {}), "http", False),  # a plain loopback registry: no TLS handshake at all
        ((401, {"WWW-Authenticate": 'Basic realm="r"'}), "http", False),
        ((400, {}), "https", True),  # Go's TLS server answering plain HTTP
        ((301, {"Location": "https://127.0.0.1:5999/v2/"}), "https", True),
    ],
)
def test_loopback_scheme_is_asked_in_plain_http_first(rsps, plain, expected, tls_asked):
    status, headers = plain
    rsps.add(responses.GET, "http://127.0.0.1:5999/v2/", status=status, headers=headers)
    rsps.add(responses.GET, "https://127.0.0.1:5999/v2/", status=200)
    client = RegistryClient("127.0.0.1:5999", RegistryOptions(retries=0))
    assert client.scheme == expected
    assert client.scheme == expected  # decided once per client
    urls = [c.request.url for c in rsps.calls]
    assert urls.count("http://127.0.0.1:5999/v2/") == 1
    assert urls.count("https://127.0.0.1:5999/v2/") == (1 if tls_asked else 0)


# -- userinfo in a redirect never reaches a message or a log line ------------------------------------
SENTINEL_USER, SENTINEL_PW = "leakuser7f3a", "leakpw9c1e"


@pytest.mark.parametrize(
    "cdn",
    [
        None,  # unreachable: "cannot reach" after the retries
        (503, None),  # a 503 storm: "retrying" log lines, then the store's error
        (0, requests.exceptions.SSLError("certificate verify failed")),
        (0, requests.exceptions.SSLError("bad record mac")),  # a TLS error that is not about the certificate
    ],
    ids=["unreachable", "503", "tls-cert", "tls-other"],
)
def test_redirect_userinfo_never_in_errors_or_logs(rsps, sleeps, caplog, cdn):
    data = os.urandom(100)
    desc = blob(data)
    rsps.add(responses.GET, f"{BASE}/v2/dst/blobs/{desc.digest}", status=307,
             headers={"Location": f"https://{SENTINEL_USER}:{SENTINEL_PW}@cdn.test:8443/blobs/x?sig=1"})
    cdn_url = re.compile(r"https://.*cdn\.test.*")
    if cdn is not None:
        status, exc = cdn
        if exc is not None:
            rsps.add(responses.GET, cdn_url, body=exc)
        else:
            rsps.add(responses.GET, cdn_url, status=status, headers={"Retry-After": "0"})
    caplog.set_level("DEBUG")
    with pytest.raises(RegistryError) as info:
        with make_store(retries=2).open_blob(desc) as stream:
            stream.read()
    text = str(info.value)
    assert "\n" not in text
    seen = text + "\n" + caplog.text + "\n" + "\n".join(str(r.args) for r in caplog.records)
    for secret in (SENTINEL_USER, SENTINEL_PW):
        assert secret not in seen
    assert "@" not in text
    if cdn is None or cdn[1] is not None:
        assert "cdn.test:8443" in text  # the host is still named, with its port
    else:
        assert "cdn.test:8443" in caplog.text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@cdn.test:8443/x", "cdn.test:8443"),
        ("https://u@cdn.test/x", "cdn.test"),
        ("http://u:p@[::1]:5000/x", "[::1]:5000"),
        ("https://u:p@CDN.test/x", "cdn.test"),
    ],
)
def test_host_of_drops_userinfo(url, expected):
    assert client_mod.host_of(url) == expected


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024])
def test_dead_upload_session_is_replaced(rsps, sleeps, size):
    """404 BLOB_UPLOAD_INVALID on the session: cancel it, open a new one, resend from the start."""
    uploads = FakeUploads(rsps)
    method = "put" if size < 1024 * 1024 else "patch"
    original = getattr(uploads, method)

    def dead_first(request):
        if FakeUploads._sid(request) == "u1":
            return 404, {}, json.dumps({"errors": [{"code": "BLOB_UPLOAD_INVALID", "message": "blob upload invalid"}]})
        return original(request)

    setattr(uploads, method, dead_first)
    data = os.urandom(size)
    progress: list[int] = []
    make_store().put_blob(blob(data), io.BytesIO(data), progress.append)
    assert uploads.committed == {str(blob(data).digest): data}
    assert uploads.deleted == ["u1"] and uploads.n == 2
    assert sum(progress) == size


def test_dead_upload_sessions_are_bounded(rsps, sleeps):
    uploads = FakeUploads(rsps)
    uploads.patch = lambda request: (404, {}, "")  # type: ignore[method-assign]
    data = os.urandom(2 * 1024 * 1024)
    with pytest.raises(RegistryError, match="gave up after 3 upload sessions"):
        make_store(retries=2).put_blob(blob(data), io.BytesIO(data))
    assert uploads.committed == {} and uploads.deleted == ["u1", "u2", "u3"]
