"""The registry store against the real registry (distribution 2.8.2): plain, Basic auth and TLS."""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from ocibuild.errors import AuthError, DigestMismatch, NotFound, RegistryError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import EMPTY_DESCRIPTOR, Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.oci.reference import parse_reference
from ocibuild.store.base import load_manifest, read_blob
from ocibuild.store.registry import RegistryClient, RegistryOptions, RegistryStore, fallback_tag, get_registry_store

FAST = RegistryOptions(retries=1, timeout=20)


def store_for(server, repo: str, options: RegistryOptions = FAST) -> RegistryStore:
    return RegistryStore(parse_reference(server.ref(repo)), options)  # type: ignore[arg-type]


def push_image(store: RegistryStore, layers: list[bytes], media_type: str = mt.OCI_MANIFEST, tag: str = "v1"):
    docker = media_type == mt.DOCKER_MANIFEST
    layer_descs = []
    for data in layers:
        desc = Descriptor(mt.layer_type("gzip", docker), Digest.of(data), len(data))
        store.put_blob(desc, io.BytesIO(data))
        layer_descs.append(desc)
    cfg = ImageConfig.build(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in layer_descs]}},
        mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
    )
    store.put_blob(cfg.descriptor(), io.BytesIO(cfg.raw))
    manifest = Manifest.build(cfg.descriptor(), layer_descs, media_type=media_type)
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return manifest


@pytest.mark.parametrize("media_type", [mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])
def test_push_pull_round_trip(registry, fresh_repo, media_type):
    options = RegistryOptions(retries=1, chunk_size=1024 * 1024, chunk_threshold=3 * 1024 * 1024)
    store = store_for(registry, fresh_repo, options)
    layers = [os.urandom(100), os.urandom(2 * 1024 * 1024 + 5), os.urandom(4 * 1024 * 1024 + 3)]  # small, PATCH, chunked
    manifest = push_image(store, layers, media_type)
    desc, raw = store.get_manifest("v1")
    assert raw == manifest.raw and desc.media_type == media_type and desc.digest == manifest.digest
    assert store.resolve("v1") == manifest.descriptor()
    _, parsed = load_manifest(store, str(manifest.digest))
    for layer, data in zip(parsed.layers, layers):
        with store.open_blob(layer) as stream:
            assert stream.read() == data
    assert read_blob(store, parsed.config).startswith(b"{")
    assert store.tags() == ["v1"]
    # the registry keeps exactly our bytes
    assert registry.blob_data_path(manifest.digest).read_bytes() == manifest.raw


def test_chunked_upload_uses_content_range(registry, fresh_repo):
    store = store_for(registry, fresh_repo, RegistryOptions(chunk_size=1024 * 1024, chunk_threshold=2 * 1024 * 1024))
    data = os.urandom(3 * 1024 * 1024 + 1)
    desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
    mark = registry.log_mark()
    store.put_blob(desc, io.BytesIO(data))
    patches = [e for e in registry.access_since(mark) if e.method == "PATCH"]
    assert len(patches) == 4 and all(e.status == 202 for e in patches)
    assert registry.blob_data_path(desc.digest).read_bytes() == data


def test_tampered_blob_is_refused(registry, fresh_repo):
    store = store_for(registry, fresh_repo)
    data = os.urandom(200_000)
    desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(data), len(data))
    store.put_blob(desc, io.BytesIO(data))
    path = registry.blob_data_path(desc.digest)
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # same size, one byte differs
    with pytest.raises(DigestMismatch):
        with store.open_blob(desc) as stream:
            while stream.read(65536):
                pass


def test_mismatching_stream_never_committed(registry, fresh_repo):
    store = store_for(registry, fresh_repo)
    data = os.urandom(1_500_000)
    desc = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(b"other" + data), len(data))
    mark = registry.log_mark()
    with pytest.raises(DigestMismatch):
        store.put_blob(desc, io.BytesIO(data))
    entries = registry.access_since(mark)
    assert [e.method for e in entries if "/blobs/uploads/" in e.uri] == ["POST", "PATCH", "DELETE"]
    assert not store.has_blob(desc)


def test_cross_repository_mount(registry, fresh_repo):
    src = store_for(registry, fresh_repo + "-src")
    manifest = push_image(src, [os.urandom(300_000), os.urandom(1000)])
    dst = get_registry_store(parse_reference(registry.ref(fresh_repo + "-dst")), FAST)  # type: ignore[arg-type]
    assert dst.client is get_registry_store(parse_reference(registry.ref("x/y")), FAST).client
    mark = registry.log_mark()
    for child in manifest.children():
        assert dst.mount_blob(child, src.repository) is True
    dst.put_manifest(manifest.descriptor(), manifest.raw, tag="v1")
    entries = registry.access_since(mark)
    dst_uploads = [e for e in entries if e.uri.startswith(f"/v2/{dst.repository}/blobs/uploads/")]
    assert [e.method for e in dst_uploads] == ["POST"] * 3 and all(e.status == 201 for e in dst_uploads)
    assert not [e for e in entries if e.method in ("PATCH", "PUT") and "/blobs/" in e.uri]
    for child in manifest.children():
        assert dst.has_blob(child)
    # a blob the source does not have: the registry opens a session (202); we cancel and report False
    missing = Descriptor(mt.OCI_LAYER_GZIP, Digest.of(b"nowhere"), 7)
    assert dst.mount_blob(missing, src.repository) is False


def test_parallel_uploads_share_one_client(registry, fresh_repo):
    store = store_for(registry, fresh_repo)
    blobs = [os.urandom(1_200_000 + i) for i in range(6)]
    descs = [Descriptor(mt.OCI_LAYER_GZIP, Digest.of(b), len(b)) for b in blobs]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda pair: store.put_blob(pair[0], io.BytesIO(pair[1])), zip(descs, blobs)))
    for desc, data in zip(descs, blobs):
        assert registry.blob_data_path(desc.digest).read_bytes() == data


def test_index_referrers_fallback_and_delete(registry, fresh_repo):
    store = store_for(registry, fresh_repo)
    image = push_image(store, [os.urandom(1000)])
    index = Index.build([image.descriptor()])
    store.put_manifest(index.descriptor(), index.raw, tag="multi")
    assert store.get_manifest("multi")[0].media_type == mt.OCI_INDEX
    store.put_blob(EMPTY_DESCRIPTOR, io.BytesIO(b"{}"))
    sigs = []
    for kind in ("application/x-sig", "application/x-sbom"):
        art = Manifest.build(EMPTY_DESCRIPTOR, [], artifact_type=kind, subject=image.descriptor(),
                             annotations={"k": kind})
        store.put_manifest(art.descriptor(), art.raw)
        sigs.append(art)
    found = store.referrers(image.descriptor())
    assert [d.digest for d in found] == [a.digest for a in sigs]
    assert found[0].artifact_type == "application/x-sig" and found[0].annotations == {"k": "application/x-sig"}
    assert [d.digest for d in store.referrers(image.descriptor(), "application/x-sbom")] == [sigs[1].digest]
    assert fallback_tag(image.digest) in store.tags()
    with pytest.raises(RegistryError, match="cannot delete tags"):
        store.delete("multi")
    store.delete(str(index.digest))
    with pytest.raises(NotFound):
        store.get_manifest("multi")
    with pytest.raises(NotFound):
        store.resolve("no-such-tag")


def test_basic_auth_registry(basic_registry, fresh_repo, tmp_path, sentinel_password, caplog):
    anonymous = store_for(basic_registry, fresh_repo, RegistryOptions(retries=1, auth_file=str(tmp_path / "none.json")))
    with pytest.raises(AuthError, match="login"):
        anonymous.tags()
    auth_file = basic_registry.write_auth_file(tmp_path / "auth.json")
    store = store_for(basic_registry, fresh_repo, RegistryOptions(retries=1, auth_file=str(auth_file)))
    caplog.set_level("DEBUG")
    manifest = push_image(store, [os.urandom(2_000_000)])
    assert store.get_manifest("v1")[1] == manifest.raw
    assert store.tags() == ["v1"]
    assert sentinel_password not in caplog.text and sentinel_password not in repr(store.client.credential)


def test_tls_registry(tls_registry, fresh_repo):
    with pytest.raises(RegistryError, match="certificate"):
        store_for(tls_registry, fresh_repo).tags()
    store = store_for(tls_registry, fresh_repo, RegistryOptions(retries=1, ca_cert=str(tls_registry.ca_cert)))
    assert store.client.scheme == "https"
    manifest = push_image(store, [os.urandom(1_100_000)])
    assert store.get_manifest("v1")[1] == manifest.raw
    insecure = store_for(tls_registry, fresh_repo, RegistryOptions(retries=1, insecure=frozenset({tls_registry.host})))
    assert insecure.client.scheme == "https" and insecure.tags() == ["v1"]


def test_ping_and_plain_scheme(registry):
    client = RegistryClient(registry.host, FAST)
    assert client.scheme == "http"
    assert client.ping().status_code == 200
    assert json.loads(client.ping().content) == {}
