"""Hostile registry answers (``responses``: the real registry cannot produce them): bad challenges,
token endpoints on other hosts or over plain HTTP, redirects and upload Locations on other hosts.

The credential is the suite's sentinel password. Whatever the registry answers: only
``OCIBuildError`` escapes, on one line, and the sentinel (plain or base64 in a Basic header) reaches
no host but the registry and its HTTPS token service, and no message.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections import Counter
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import responses

from ocibuild.errors import AuthError, OCIBuildError, RegistryError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.reference import Reference
from ocibuild.store.registry import Credential, RegistryClient, RegistryOptions, RegistryStore
from ocibuild.store.registry import client as client_mod

from support.registry import BASIC_USERNAME, SENTINEL_PASSWORD

REG = "reg.test"
BASE = f"https://{REG}"
TRUSTED = {REG, "auth.test"}
COUNTS: Counter[str] = Counter()
SECRET_FORMS = (SENTINEL_PASSWORD, base64.b64encode(f"{BASIC_USERNAME}:{SENTINEL_PASSWORD}".encode()).decode())


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(client_mod, "_sleep", lambda s: None)


def make_store(repo: str = "dst") -> RegistryStore:
    options = RegistryOptions(retries=1)
    client = RegistryClient(REG, options, credential=Credential(BASIC_USERNAME, SENTINEL_PASSWORD))
    return RegistryStore(Reference(REG, repo, "latest"), options, client=client)


def assert_no_leak(rsps, exc: BaseException | None = None) -> None:
    for call in rsps.calls:
        host = urlsplit(call.request.url).netloc
        text = " ".join(f"{k}: {v}" for k, v in call.request.headers.items()) + " " + call.request.url
        body = call.request.body
        if isinstance(body, bytes):
            body = body.decode(errors="replace")
        text += " " + (body if isinstance(body, str) else "")
        if host not in TRUSTED or urlsplit(call.request.url).scheme != "https":
            assert not any(s in text for s in SECRET_FORMS), f"credential sent to {call.request.url}"
            assert "Authorization" not in call.request.headers, f"Authorization sent to {call.request.url}"
    if exc is not None:
        for text in (str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)):
            assert not any(s in text for s in SECRET_FORMS)
        assert "\n" not in str(exc)


def blob(data: bytes) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))


BAD_CHALLENGES = [
    "", "Bearer", "Bearer realm=", 'Bearer realm=""', 'Bearer realm="ftp://auth.test/token"',
    'Bearer realm="/token"', 'Bearer realm="file:///etc/passwd"', "Negotiate abcdef", '"""', ",,,,", "Bearer ,,,=,,",
    'Bearer realm="https://auth.test/token", service=', "Bearer " + "a=" * 20000, 'Digest realm="x", nonce="y"',
    'Bearer realm="https://auth.test/token\r\nX-Injected: 1"', "Basic realm=\"\\\"", "\x00\x01\x02",
]


@pytest.mark.parametrize("header", BAD_CHALLENGES, ids=lambda h: repr(h[:30]))
def test_bad_www_authenticate(rsps, header: str) -> None:
    rsps.add(responses.GET, "https://auth.test/token", status=401)
    rsps.add(responses.GET, f"{BASE}/v2/dst/tags/list", status=401, headers={"WWW-Authenticate": header})
    COUNTS["bad WWW-Authenticate"] += 1
    with pytest.raises(OCIBuildError) as info:
        make_store().tags()
    assert isinstance(info.value, (AuthError, RegistryError))
    assert_no_leak(rsps, info.value)
    for call in rsps.calls:
        assert urlsplit(call.request.url).scheme in ("http", "https")


@pytest.mark.parametrize("realm", ["http://evil.test/token", "http://reg.test/token", "http://auth.test:80/token"])
def test_token_endpoint_over_plain_http_on_another_host(rsps, realm: str) -> None:
    rsps.add(responses.GET, re.compile(r"http://.*/token.*"), json={"token": "t"})
    rsps.add(responses.GET, f"{BASE}/v2/dst/tags/list", status=401,
             headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{REG}"'})
    COUNTS["token endpoint over plain HTTP"] += 1
    with pytest.raises(AuthError, match="plain HTTP") as info:
        make_store().tags()
    assert_no_leak(rsps, info.value)


def test_token_endpoint_redirecting_to_another_host(rsps) -> None:
    rsps.add(responses.GET, "https://auth.test/token", status=302,
             headers={"Location": "https://evil.test/steal"})
    rsps.add(responses.GET, "https://evil.test/steal", json={"token": "stolen"})
    rsps.add(responses.GET, f"{BASE}/v2/dst/tags/list", status=401,
             headers={"WWW-Authenticate": f'Bearer realm="https://auth.test/token",service="{REG}"'})
    COUNTS["token endpoint redirect"] += 1
    try:
        make_store().tags()
    except OCIBuildError as exc:
        assert_no_leak(rsps, exc)
    else:
        assert_no_leak(rsps)


def test_token_endpoint_redirecting_to_plain_http(rsps) -> None:
    rsps.add(responses.GET, "https://auth.test/token", status=307, headers={"Location": "http://auth.test/token2"})
    rsps.add(responses.GET, "http://auth.test/token2", json={"token": "t"})
    rsps.add(responses.GET, f"{BASE}/v2/dst/tags/list", status=401,
             headers={"WWW-Authenticate": f'Bearer realm="https://auth.test/token",service="{REG}"'})
    COUNTS["token endpoint redirect"] += 1
    try:
        make_store().tags()
    except OCIBuildError as exc:
        assert_no_leak(rsps, exc)
    else:
        assert_no_leak(rsps)


def _basic_guard(handler):
    def callback(request):
        if request.headers.get("Authorization") != Credential(BASIC_USERNAME, SENTINEL_PASSWORD).basic_header():
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, ""
        return handler(request)

    return callback


@pytest.mark.parametrize("location", ["https://cdn.test/blob?sig=1", "http://cdn.test/blob", "//cdn.test/blob",
                                      "https://reg.test.evil.test/blob"])
def test_blob_redirect_to_another_host(rsps, location: str) -> None:
    data = os.urandom(3000)
    desc = blob(data)
    rsps.add_callback(responses.GET, f"{BASE}/v2/dst/blobs/{desc.digest}",
                      callback=_basic_guard(lambda r: (307, {"Location": location}, "")))
    rsps.add(responses.GET, re.compile(r"https?://(cdn\.test|reg\.test\.evil\.test)/blob.*"), body=data)
    COUNTS["redirect to another host"] += 1
    with make_store().open_blob(desc) as stream:
        assert stream.read() == data
    assert_no_leak(rsps)


def test_redirect_loop_is_bounded(rsps) -> None:
    desc = blob(b"x")
    rsps.add(responses.GET, f"{BASE}/v2/dst/blobs/{desc.digest}", status=302,
             headers={"Location": "https://cdn.test/a"})
    rsps.add(responses.GET, "https://cdn.test/a", status=302, headers={"Location": f"{BASE}/v2/dst/blobs/{desc.digest}"})
    COUNTS["redirect to another host"] += 1
    with pytest.raises(RegistryError, match="redirects") as info:
        with make_store().open_blob(desc) as stream:
            stream.read()
    assert len(rsps.calls) < 30
    assert_no_leak(rsps, info.value)


def test_manifest_redirect_to_another_host(rsps) -> None:
    from ocibuild.oci.manifest import ImageConfig, Manifest

    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    m = Manifest.build(cfg.descriptor(), [])
    rsps.add_callback(responses.GET, f"{BASE}/v2/dst/manifests/latest",
                      callback=_basic_guard(lambda r: (301, {"Location": "https://mirror.test/m"}, "")))
    rsps.add(responses.GET, "https://mirror.test/m", body=m.raw, headers={"Content-Type": mt.OCI_MANIFEST})
    COUNTS["redirect to another host"] += 1
    desc, raw = make_store().get_manifest("latest")
    assert raw == m.raw and desc.digest == m.digest
    assert_no_leak(rsps)


@pytest.mark.parametrize("location", ["https://evil.test/upload/1?_state=x", "http://evil.test/upload/1",
                                      "https://reg.test:4443/upload/1"])
def test_upload_location_on_another_host(rsps, location: str) -> None:
    data = os.urandom(2000)
    desc = blob(data)
    rsps.add_callback(responses.HEAD, f"{BASE}/v2/dst/blobs/{desc.digest}", callback=_basic_guard(lambda r: (404, {}, "")))
    rsps.add_callback(responses.POST, f"{BASE}/v2/dst/blobs/uploads/",
                      callback=_basic_guard(lambda r: (202, {"Location": location, "Range": "0-0"}, "")))
    host = re.escape(urlsplit(location).netloc)
    scheme = urlsplit(location).scheme
    rsps.add(responses.PATCH, re.compile(rf"{scheme}://{host}/upload/1.*"), status=202,
             headers={"Location": location, "Range": f"0-{len(data) - 1}"})
    rsps.add(responses.PUT, re.compile(rf"{scheme}://{host}/upload/1.*"), status=201,
             headers={"Docker-Content-Digest": str(desc.digest)})
    rsps.add(responses.DELETE, re.compile(rf"{scheme}://{host}/upload/1.*"), status=204)
    COUNTS["upload Location on another host"] += 1
    try:
        make_store().put_blob(desc, io.BytesIO(data))
    except OCIBuildError as exc:
        assert_no_leak(rsps, exc)
    else:
        assert_no_leak(rsps)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print what this module tried (run with ``-s``), for the hardening table."""
    yield
    print(f"\nhostile registry answers tried: {dict(COUNTS)} total={sum(COUNTS.values())}")
