"""The referrers API path (``GET /v2/<name>/referrers/<digest>``, distribution-spec 1.1).

registry 2.8.2, the real registry of the other tests, lacks the API, so this protocol is served
here by ``ReferrersRegistry``: a small in-memory registry behind ``responses`` that links a pushed
manifest by its ``subject`` (answering ``OCI-Subject``), lists referrers in pages over ``Link`` and,
when told, applies the ``artifactType`` filter. The same fake without the API answers 404, and the
client falls back to the ``sha256-<hex>`` tag scheme.
"""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from ocibuild.attest.keys import generate_signing_key
from ocibuild.attest.publish import Blob, ledger_record
from ocibuild.attest.referrers import attach, attached
from ocibuild.attest.sign import SIMPLESIGNING, sign_image
from ocibuild.attest.verify import verify_image
from ocibuild.errors import NotFound, RegistryError
from ocibuild.ledger.db import Ledger
from ocibuild.ledger.gc import collect
from ocibuild.ledger.lease import Lease
from ocibuild.ledger.scratch import Scratch
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.oci.reference import Reference
from ocibuild.store.registry import RegistryClient, RegistryOptions, RegistryStore

REG = "referrers.test"
BASE = f"https://{REG}"
CDX, SPDX = "application/vnd.cyclonedx+json", "application/spdx+json"


class ReferrersRegistry:
    """Blobs, manifests, tags and (with ``api``) the referrers API of one registry, in memory."""

    def __init__(self, rsps: responses.RequestsMock, *, api: bool = True, filters: bool = True, page: int = 2):
        self.api, self.filters, self.page = api, filters, page
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest -> (media type, bytes)
        self.tags: dict[tuple[str, str], str] = {}  # (repository, tag) -> digest
        self.uploads: dict[str, bytearray] = {}
        self.log: list[tuple[str, str]] = []  # (method, path?query)
        self.link_loop = False
        repo = r"(?P<repo>[a-z0-9/_-]+?)"
        for method, path, handler in [
            (responses.HEAD, rf"/v2/{repo}/blobs/(?P<digest>sha256:[a-f0-9]{{64}})", self._blob),
            (responses.GET, rf"/v2/{repo}/blobs/(?P<digest>sha256:[a-f0-9]{{64}})", self._blob),
            (responses.POST, rf"/v2/{repo}/blobs/uploads/", self._start),
            (responses.PATCH, rf"/v2/{repo}/blobs/uploads/(?P<id>[a-f0-9-]+)", self._patch),
            (responses.PUT, rf"/v2/{repo}/blobs/uploads/(?P<id>[a-f0-9-]+)", self._commit),
            (responses.HEAD, rf"/v2/{repo}/manifests/(?P<ref>[^/?]+)", self._get_manifest),
            (responses.GET, rf"/v2/{repo}/manifests/(?P<ref>[^/?]+)", self._get_manifest),
            (responses.PUT, rf"/v2/{repo}/manifests/(?P<ref>[^/?]+)", self._put_manifest),
            (responses.DELETE, rf"/v2/{repo}/manifests/(?P<ref>[^/?]+)", self._delete),
            (responses.GET, rf"/v2/{repo}/referrers/(?P<digest>sha256:[a-f0-9]{{64}})", self._referrers),
        ]:
            rsps.add_callback(method, re.compile(re.escape(BASE) + path + r"(\?.*)?$"),
                              callback=self._logged(method, path, handler))

    def _logged(self, method: str, path: str, handler):
        pattern = re.compile(path + "$")

        def callback(request):
            parts = urlsplit(request.url)
            self.log.append((request.method, parts.path + (f"?{parts.query}" if parts.query else "")))
            match = pattern.match(parts.path)
            # looked up per request, so a test can wrap one handler
            return getattr(self, handler.__name__)(request, parse_qs(parts.query), **match.groupdict())

        return callback

    # -- blobs -------------------------------------------------------------------------------------
    def _blob(self, request, _query, repo, digest):
        if digest not in self.blobs:
            return 404, {}, ""
        data = self.blobs[digest]
        headers = {"Content-Length": str(len(data)), "Docker-Content-Digest": digest}
        return 200, headers, b"" if request.method == "HEAD" else data

    def _start(self, _request, _query, repo):
        upload = str(uuid.uuid4())
        self.uploads[upload] = bytearray()
        return 202, {"Location": f"/v2/{repo}/blobs/uploads/{upload}"}, ""

    def _patch(self, request, _query, repo, id):
        self.uploads[id] += _body(request)
        return 202, {"Location": f"/v2/{repo}/blobs/uploads/{id}"}, ""

    def _commit(self, request, query, repo, id):
        data = bytes(self.uploads.pop(id) + _body(request))
        digest = query["digest"][0]
        assert str(Digest.of(data)) == digest
        self.blobs[digest] = data
        return 201, {"Docker-Content-Digest": digest}, ""

    # -- manifests ---------------------------------------------------------------------------------
    def _digest_of(self, repo: str, ref: str) -> str | None:
        return ref if ref.startswith("sha256:") else self.tags.get((repo, ref))

    def _get_manifest(self, request, _query, repo, ref):
        digest = self._digest_of(repo, ref)
        if digest is None or digest not in self.manifests:
            return 404, {}, "" if request.method == "HEAD" else json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        media_type, raw = self.manifests[digest]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest, "Content-Length": str(len(raw))}
        return 200, headers, b"" if request.method == "HEAD" else raw

    def _put_manifest(self, request, _query, repo, ref):
        raw = _body(request)
        digest = str(Digest.of(raw))
        self.manifests[digest] = (request.headers["Content-Type"], raw)
        if not ref.startswith("sha256:"):
            self.tags[(repo, ref)] = digest
        headers = {"Docker-Content-Digest": digest}
        subject = json.loads(raw).get("subject")
        if subject is not None and self.api:
            headers["OCI-Subject"] = subject["digest"]
        return 201, headers, ""

    def _delete(self, _request, _query, repo, ref):
        if ref not in self.manifests:
            return 404, {}, ""
        del self.manifests[ref]
        self.tags = {k: v for k, v in self.tags.items() if v != ref}
        return 202, {}, ""

    # -- referrers ---------------------------------------------------------------------------------
    def referrers_of(self, digest: str) -> list[dict]:
        out = []
        for ref, (media_type, raw) in sorted(self.manifests.items()):
            doc = json.loads(raw)
            if (doc.get("subject") or {}).get("digest") == digest:
                out.append({"mediaType": media_type, "digest": ref, "size": len(raw),
                            "artifactType": doc.get("artifactType") or doc["config"]["mediaType"],
                            **({"annotations": doc["annotations"]} if doc.get("annotations") else {})})
        return out

    def _referrers(self, _request, query, repo, digest):
        if not self.api:
            return 404, {}, "404 page not found"
        entries = self.referrers_of(digest)
        headers = {"Content-Type": mt.OCI_INDEX}
        wanted = query.get("artifactType", [None])[0]
        if wanted and self.filters:
            entries = [e for e in entries if e["artifactType"] == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(query.get("last", ["0"])[0])
        chunk = entries[start:start + self.page]
        if start + self.page < len(entries) or self.link_loop:
            nxt = start if self.link_loop else start + self.page
            extra = f"&artifactType={wanted}" if wanted and self.filters else ""
            headers["Link"] = f'</v2/{repo}/referrers/{digest}?last={nxt}{extra}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": chunk})
        return 200, headers, body

    def requests(self, method: str, fragment: str) -> list[str]:
        return [path for m, path in self.log if m == method and fragment in path]


def _body(request) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    return b"".join(body) if not hasattr(body, "read") else body.read()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make_store(repo: str = "app") -> RegistryStore:
    options = RegistryOptions(retries=0)
    return RegistryStore(Reference(REG, repo, "latest"), options, client=RegistryClient(REG, options))


def push_image(registry: ReferrersRegistry, store: RegistryStore, name: str) -> Descriptor:
    config = ImageConfig.build({"architecture": "amd64", "os": "linux", "config": {"Labels": {"n": name}},
                                "rootfs": {"type": "layers", "diff_ids": []}})
    registry.blobs[str(config.digest)] = config.raw
    manifest = Manifest.build(config.descriptor(), [])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=name)
    return manifest.descriptor()


def sbom(store, image: Descriptor, artifact_type: str, text: str, record=None) -> Descriptor:
    kwargs = {"record": record} if record is not None else {}
    return attach(store, image, artifact_type, [Blob(artifact_type, text.encode())], "sbom", **kwargs)


def test_push_to_a_registry_with_the_api_attaches_by_subject_without_the_tag_scheme(rsps, tmp_path):
    registry = ReferrersRegistry(rsps)
    store = make_store()
    image = push_image(registry, store, "v1")
    ledger = Ledger(tmp_path / "ledger.db")
    artifact = sbom(store, image, CDX, '{"bomFormat":"CycloneDX"}', ledger_record(ledger, store))

    fallback = f"sha256-{image.digest.encoded}"
    assert registry.requests("PUT", fallback) == [] and registry.requests("GET", fallback) == []
    assert registry.requests("HEAD", fallback) == []
    assert (("app", fallback) not in registry.tags) and registry.referrers_of(str(image.digest))[0]["digest"] == \
        str(artifact.digest)
    assert {r.role for r in ledger.query()} == {"sbom"}  # no fallback index was written, none recorded
    assert [a.digest for a in attached(store, image)] == [artifact.digest]
    ledger.close()


def test_push_to_a_registry_without_the_api_writes_and_records_the_fallback_index_first(rsps, tmp_path):
    registry = ReferrersRegistry(rsps, api=False)
    store = make_store()
    image = push_image(registry, store, "v1")
    ledger = Ledger(tmp_path / "ledger.db")
    fallback = f"sha256-{image.digest.encoded}"
    recorded_before_push: list[bool] = []
    original = registry._put_manifest

    def put(request, query, repo, ref):
        if ref == fallback:  # the ledger row of the index precedes its push
            digest = str(Digest.of(_body(request)))
            recorded_before_push.append(any(str(r.digest) == digest for r in ledger.query(role="referrers-index")))
        return original(request, query, repo, ref)

    registry._put_manifest = put
    first = sbom(store, image, CDX, '{"bomFormat":"CycloneDX"}', ledger_record(ledger, store))
    second = sbom(store, image, SPDX, '{"spdxVersion":"SPDX-2.3"}', ledger_record(ledger, store))

    assert recorded_before_push == [True, True]
    index = Index.parse(registry.manifests[registry.tags[("app", fallback)]][1])
    assert [d.digest for d in index.manifests] == [first.digest, second.digest]
    assert [a.digest for a in attached(store, image, SPDX)] == [second.digest]
    assert len(registry.requests("GET", "/referrers/")) == 1  # asked once, answered 404, then the tag
    ledger.close()


def test_listing_pages_over_link_and_filters_by_artifact_type(rsps):
    registry = ReferrersRegistry(rsps, page=2)
    store = make_store()
    image = push_image(registry, store, "v1")
    made = [sbom(store, image, CDX if i % 2 else SPDX, f'{{"n":{i}}}') for i in range(5)]

    listed = store.referrers(image)
    assert sorted(d.digest for d in listed) == sorted(d.digest for d in made)
    assert len(registry.requests("GET", "/referrers/")) == 3  # 2 + 2 + 1, over Link
    cdx = store.referrers(image, CDX)
    assert sorted(d.digest for d in cdx) == sorted(d.digest for i, d in enumerate(made) if i % 2)
    assert all(d.artifact_type == CDX for d in cdx)
    asked = registry.requests("GET", "/referrers/")[3]
    assert parse_qs(urlsplit(asked).query)["artifactType"] == [CDX]  # the filter went to the registry


def test_a_registry_that_ignores_the_filter_is_filtered_here(rsps):
    registry = ReferrersRegistry(rsps, filters=False, page=10)
    store = make_store()
    image = push_image(registry, store, "v1")
    kept = sbom(store, image, SPDX, '{"spdxVersion":"SPDX-2.3"}')
    sbom(store, image, CDX, '{"bomFormat":"CycloneDX"}')
    assert [d.digest for d in store.referrers(image, SPDX)] == [kept.digest]


def test_a_link_that_repeats_a_page_ends_the_listing(rsps):
    registry = ReferrersRegistry(rsps, page=1)
    store = make_store()
    image = push_image(registry, store, "v1")
    made = sbom(store, image, CDX, "{}")
    registry.link_loop = True
    assert [d.digest for d in store.referrers(image)] == [made.digest]
    assert len(registry.requests("GET", "/referrers/")) == 2  # the first page, its repeat, then stop


def test_a_failing_referrers_api_is_one_clear_error_not_the_tag_scheme(rsps):
    rsps.add(responses.GET, re.compile(re.escape(BASE) + r"/v2/app/referrers/.*"), status=500,
             json={"errors": [{"code": "UNKNOWN", "message": "database is down"}]})
    subject = Descriptor(mt.OCI_MANIFEST, Digest.of(b"x"), 1)
    with pytest.raises(RegistryError) as failed:
        make_store().referrers(subject)
    assert "\n" not in str(failed.value) and "referrers" in str(failed.value)


def test_signatures_and_sboms_through_the_api_are_listed_verified_and_collected_with_their_subject(rsps, tmp_path):
    """cosign's .sig tag has no subject: it is found by its tag even where the API lists the rest;
    GC deletes an ephemeral manifest's API-linked referrers and its signature with it."""
    registry = ReferrersRegistry(rsps)
    store = make_store()
    image = push_image(registry, store, "eph")
    key = generate_signing_key()
    scratch = Scratch.resolve(tmp_path / "scratch").ensure()
    location = f"{REG}/app"
    with Lease(scratch) as lease:
        lease.record(image, location=location, role="ephemeral-builder", ephemeral=True)
        record = ledger_record(lease.ledger, store, lease.id)
        artifact = sbom(store, image, CDX, '{"bomFormat":"CycloneDX"}', record)
        signed = sign_image(store, image, key, record)
        found = {(a.how, a.artifact_type): a.digest for a in attached(store, image)}
        assert found == {("referrer", CDX): artifact.digest, (f"tag {signed.tag}", SIMPLESIGNING): signed.manifest.digest}
        assert [a.digest for a in attached(store, image, SIMPLESIGNING)] == [signed.manifest.digest]
        assert verify_image(store, image, key.public()).signatures == 1
    report = collect(scratch, registry_options=RegistryOptions(retries=0))

    assert report.errors == []
    assert sorted(report.registry_deleted) == sorted(
        f"{location}@{d}" for d in (image.digest, artifact.digest, signed.manifest.digest))
    assert str(image.digest) not in registry.manifests and str(artifact.digest) not in registry.manifests
    with pytest.raises(NotFound):
        store.resolve(signed.tag)
    # the manifest rows are forgotten; blob rows stay (a registry's blobs are its own GC's to delete)
    assert [r for r in Ledger(scratch.ledger_path).query(location=location) if mt.is_manifest_like(r.media_type)] == []
