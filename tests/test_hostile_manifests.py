"""Hostile manifests, configs and indexes through the real CLI (``ocibuild copy`` between layouts) and,
for what only a registry can serve (Content-Type, cycles), through the registry store with ``responses``.

Every refusal is one ``ocibuild: error:`` line and a non-zero exit, and the destination layout gets
no tag and no blob that is not verified; unknown media types are copied byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import responses

from ocibuild.errors import DigestMismatch, ManifestError, OCIBuildError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.oci.reference import Reference
from ocibuild.store.registry import Credential, RegistryClient, RegistryOptions, RegistryStore
from ocibuild.transfer.copy import copy_image

from support.images import canonical, init_layout, write_image

COUNTS: Counter[str] = Counter()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(layout: Path, data: bytes) -> str:
    d = sha(data)
    (layout / "blobs/sha256" / d[7:]).write_bytes(data)
    return d


def set_index(layout: Path, entries: list[dict]) -> None:
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}))


def tagged(media_type: str, digest: str, size: int, tag: str = "latest") -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag}}


def ocibuild(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OCIBUILD_SCRATCH=str(tmp / "scratch"))
    return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def refused(proc: subprocess.CompletedProcess[str], what: str, match: str = "") -> str:
    COUNTS[what] += 1
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocibuild: error:"), proc.stderr
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


def dest_clean(dest: Path) -> None:
    """No tag, and every blob present is exactly what its name says."""
    if not dest.exists():
        return
    index = json.loads((dest / "index.json").read_bytes()) if (dest / "index.json").exists() else {"manifests": []}
    assert index["manifests"] == []
    for p in (dest / "blobs" / "sha256").iterdir() if (dest / "blobs" / "sha256").exists() else []:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"unverified blob {p.name} in destination"
    tmp = dest / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), "temp files left in the destination"


def copy(tmp: Path, src: Path, identifier: str = ":latest") -> subprocess.CompletedProcess[str]:
    return ocibuild("copy", f"oci:{src}{identifier}", f"oci:{tmp / 'dest'}:copied", tmp=tmp)


# -- through the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe{}", b"[]", b'{"schemaVersion":2,"schemaVersion":2}',
                                  b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}',
                                  b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1}}',
                                  b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"md5:abc","size":-1}}',
                                  b"[" * 100000 + b"]" * 100000], ids=lambda b: f"{len(b)}-bytes-{hashlib.md5(b).hexdigest()[:6]}")
def test_malformed_manifest_json(tmp_path: Path, body: bytes) -> None:
    src = init_layout(tmp_path / "src")
    set_index(src, [tagged(mt.OCI_MANIFEST, put(src, body), len(body))])
    refused(copy(tmp_path, src), "malformed manifest JSON")
    dest_clean(tmp_path / "dest")


@pytest.mark.parametrize("config", [b"{", b'"a string"', b'{"architecture":1,"os":"linux"}',
                                    b'{"os":"linux","architecture":"amd64","config":{"Env":"PATH=/bin"}}',
                                    b'{"os":"linux","architecture":"amd64","config":{"Labels":{"a":1}}}',
                                    b'{"os":"linux","architecture":"amd64","rootfs":{"diff_ids":["nope"]}}'])
def test_malformed_config(tmp_path: Path, config: bytes) -> None:
    info = write_image(tmp_path / "src")
    src = tmp_path / "src"
    doc = json.loads(info.manifest_bytes)
    doc["config"] = {"mediaType": mt.OCI_CONFIG, "digest": put(src, config), "size": len(config)}
    raw = canonical(doc)
    set_index(src, [tagged(mt.OCI_MANIFEST, put(src, raw), len(raw))])
    # (``ocibuild config`` prints the blob's exact bytes, verified, without interpreting them.)
    refused(ocibuild("unpack", f"oci:{src}:latest", str(tmp_path / "rootfs"), tmp=tmp_path), "malformed config")


def test_malformed_index_json(tmp_path: Path) -> None:
    src = init_layout(tmp_path / "src")
    for body in (b"{", b'{"schemaVersion":2,"manifests":{}}', b'{"schemaVersion":2,"manifests":[{"digest":1}]}'):
        (src / "index.json").write_bytes(body)
        refused(copy(tmp_path, src), "malformed index.json")
    dest_clean(tmp_path / "dest")


@pytest.mark.parametrize("lie", ["manifest-smaller", "manifest-bigger", "layer-smaller", "layer-bigger", "config-size"])
def test_sizes_that_lie(tmp_path: Path, lie: str) -> None:
    info = write_image(tmp_path / "src", [{"a": b"a" * 1000}, {"b": b"b" * 1000}])
    src = tmp_path / "src"
    raw = info.manifest_bytes
    if lie.startswith("manifest"):
        size = len(raw) + (-5 if lie == "manifest-smaller" else 5)
    else:
        doc = json.loads(raw)
        target = doc["config"] if lie == "config-size" else doc["layers"][1]
        target["size"] += -7 if lie in ("layer-smaller", "config-size") else 7
        raw = canonical(doc)
        put(src, raw)
        size = len(raw)
    set_index(src, [tagged(mt.OCI_MANIFEST, sha(raw), size)])
    refused(copy(tmp_path, src), "sizes that lie")
    dest_clean(tmp_path / "dest")


@pytest.mark.parametrize("what", ["manifest", "config", "layer"])
def test_digest_mismatch(tmp_path: Path, what: str) -> None:
    info = write_image(tmp_path / "src", [{"a": b"a" * 1000}])
    src = tmp_path / "src"
    blob = {"manifest": info.manifest, "config": info.config, "layer": info.layers[0]}[what]
    path = src / "blobs/sha256" / blob.digest[7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, different bytes
    path.write_bytes(bytes(data))
    refused(copy(tmp_path, src), "digest mismatch", "")
    dest_clean(tmp_path / "dest")
    if what != "manifest":
        refused(ocibuild("unpack", f"oci:{src}:latest", str(tmp_path / "rootfs"), tmp=tmp_path), "digest mismatch")


def test_hundred_megabyte_manifest_is_capped(tmp_path: Path) -> None:
    """A 100 MB manifest blob (sparse) is refused from its announced size, never read whole."""
    src = init_layout(tmp_path / "src")
    big = src / "blobs/sha256" / ("0" * 64)
    with open(big, "wb") as f:
        f.truncate(100 * 1024 * 1024)
    set_index(src, [tagged(mt.OCI_MANIFEST, "sha256:" + "0" * 64, 100 * 1024 * 1024)])
    line = refused(copy(tmp_path, src), "100 MB manifest", "limit")
    assert "104857600" in line
    refused(ocibuild("inspect", f"oci:{src}@sha256:{'0' * 64}", tmp=tmp_path), "100 MB manifest")
    dest_clean(tmp_path / "dest")


def test_deep_index_chain_is_bounded(tmp_path: Path) -> None:
    """A chain of 1500 nested indexes: refused (or copied) cleanly, never a RecursionError traceback."""
    info = write_image(tmp_path / "src")
    src = tmp_path / "src"
    desc = {"mediaType": mt.OCI_MANIFEST, "digest": info.manifest.digest, "size": info.manifest.size,
            "platform": {"os": "linux", "architecture": "amd64"}}
    for _ in range(1500):
        raw = canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [desc]})
        desc = {"mediaType": mt.OCI_INDEX, "digest": put(src, raw), "size": len(raw)}
    set_index(src, [dict(desc, annotations={"org.opencontainers.image.ref.name": "latest"})])
    proc = copy(tmp_path, src)
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc.stderr[-500:]
    if proc.returncode != 0:
        refused(proc, "deep index chain")
        dest_clean(tmp_path / "dest")
    else:
        COUNTS["deep index chain"] += 1


def test_unknown_media_types_are_passed_through_untouched(tmp_path: Path) -> None:
    src = init_layout(tmp_path / "src")
    layer = b"\x00opaque layer bytes\xff" * 100
    config = b'{"whatever": ["not", "an", "image", "config"]}'
    manifest = canonical({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": "application/vnd.example.config.v7+json", "digest": put(src, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.example.layer.v9", "digest": put(src, layer), "size": len(layer),
                    "annotations": {"x-unknown": "kept"}}],
        "x-extension-field": {"kept": True},
    })
    odd = b'{"mediaType":"application/vnd.example.unknown-manifest+json","payload":[1,2,3]}'
    index = canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": put(src, manifest), "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.example.unknown-manifest+json", "digest": put(src, odd), "size": len(odd)},
    ]})
    set_index(src, [tagged(mt.OCI_INDEX, put(src, index), len(index))])
    proc = copy(tmp_path, src)
    COUNTS["unknown media types"] += 1
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "dest"
    for blob in (layer, config, manifest, odd, index):
        assert (dest / "blobs/sha256" / sha(blob)[7:]).read_bytes() == blob
    [entry] = json.loads((dest / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == sha(index) and entry["mediaType"] == mt.OCI_INDEX


# -- what only a registry can serve (responses) ----------------------------------------------------
REG = "reg.test"
BASE = f"https://{REG}"


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def make_store() -> RegistryStore:
    options = RegistryOptions(retries=0)
    client = RegistryClient(REG, options, credential=Credential("user", "pw"))
    return RegistryStore(Reference(REG, "src", "latest"), options, client=client)


def _image() -> Manifest:
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    return Manifest.build(cfg.descriptor(), [])


@pytest.mark.parametrize("served_as,body_type", [
    (mt.DOCKER_MANIFEST, mt.OCI_MANIFEST), (mt.OCI_INDEX, mt.OCI_MANIFEST), (mt.OCI_MANIFEST, mt.OCI_INDEX),
    (mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST)])
def test_media_type_contradicting_content_type(rsps, tmp_path: Path, served_as: str, body_type: str) -> None:
    m = _image()
    raw = m.raw if body_type == mt.OCI_MANIFEST else Index.build([m.descriptor()]).raw
    rsps.add(responses.GET, f"{BASE}/v2/src/manifests/latest", body=raw, headers={"Content-Type": served_as})
    rsps.add(responses.HEAD, f"{BASE}/v2/src/manifests/latest", headers={"Content-Type": served_as,
             "Docker-Content-Digest": sha(raw), "Content-Length": str(len(raw))})
    from ocibuild.store.layout import create_layout

    dest = create_layout(tmp_path / "dest")
    COUNTS["mediaType vs Content-Type"] += 1
    with pytest.raises(ManifestError, match="served as"):
        copy_image(make_store(), "latest", dest, "copied")
    dest_clean(tmp_path / "dest")


def test_index_cycle_served_by_a_registry(rsps, tmp_path: Path) -> None:
    """An index whose child digest is answered with the index itself: verification breaks the loop."""
    child = Digest.of(b"some other manifest")
    raw = canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_INDEX, "digest": str(child), "size": 0}]})
    raw = canonical({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_INDEX, "digest": str(child), "size": len(raw)}]})
    for ident in ("latest", str(child), sha(raw)):
        rsps.add(responses.GET, f"{BASE}/v2/src/manifests/{ident}", body=raw, headers={"Content-Type": mt.OCI_INDEX})
    from ocibuild.store.layout import create_layout

    dest = create_layout(tmp_path / "dest")
    COUNTS["index cycle"] += 1
    with pytest.raises(OCIBuildError) as info:
        copy_image(make_store(), "latest", dest, "copied")
    assert isinstance(info.value, (DigestMismatch, ManifestError))
    dest_clean(tmp_path / "dest")
    assert len(rsps.calls) < 10


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print what this module tried (run with ``-s``), for the hardening table."""
    yield
    print(f"\nhostile manifests tried: {dict(COUNTS)} total={sum(COUNTS.values())}")
