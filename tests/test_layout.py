"""LayoutStore: round trip, atomicity, verification, concurrency, peers (skopeo, umoci, oci-image-tool)."""

from __future__ import annotations

import io
import json
import multiprocessing
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ocibuild.errors import DigestMismatch, InvalidReference, NotFound, StoreError
from ocibuild.layer import TarEntry, write_layer
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.store.base import Store, load_manifest, read_blob
from ocibuild.store.layout import LayoutStore, create_layout


def _image(store: LayoutStore, tag: str | None = None, text: bytes = b"hello\n") -> Manifest:
    layer = write_layer([TarEntry.file("etc/motd", text), TarEntry.dir("etc")], tmp_dir=store.tmp_dir)
    store.put_blob_file(layer.descriptor, layer.path)
    cfg = ImageConfig.build({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
    })
    store.put_blob(cfg.descriptor(), io.BytesIO(cfg.raw))
    m = Manifest.build(cfg.descriptor(), [layer.descriptor])
    store.put_manifest(m.descriptor(), m.raw, tag=tag)
    return m


def _files_in_blobs(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "blobs").rglob("*") if p.is_file())


class _Exploding(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        raise AssertionError("stream must not be read")


def test_create_and_round_trip(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "l")
    assert isinstance(store, Store)
    assert json.loads((tmp_path / "l" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}

    m = _image(store, "v1")
    assert store.tags() == ["v1"]
    desc = store.resolve("v1")
    assert desc.digest == m.digest and desc.media_type == mt.OCI_MANIFEST and desc.size == len(m.raw)
    assert desc.ref_name is None  # the layout-only annotation is not leaked into descriptors
    got_desc, raw = store.get_manifest(str(m.digest))
    assert raw == m.raw and got_desc.digest == m.digest
    _, parsed = load_manifest(store, "v1")
    assert read_blob(store, parsed.config) == store.blob_path(parsed.config.digest).read_bytes()
    entry = json.loads((tmp_path / "l" / "index.json").read_text())["manifests"][0]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    # reopening sees the same thing; a directory without oci-layout is refused
    assert LayoutStore(tmp_path / "l").resolve("v1").digest == m.digest
    with pytest.raises(StoreError):
        LayoutStore(tmp_path / "nothing")


def test_tag_replaces_entry_and_untagged_manifest_is_not_a_root(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    a = _image(store, "t", b"a")
    b = _image(store, None, b"b")
    assert store.tags() == ["t"]
    assert len(store.index_entries()) == 1  # put_manifest without tag writes only the blob
    assert store.resolve(str(b.digest)).media_type == mt.OCI_MANIFEST  # found by reading the blob
    store.tag(b.descriptor(), "t")
    entries = store.index_entries()
    assert [(e.ref_name, e.digest) for e in entries] == [("t", b.digest)]
    store.tag(a.descriptor(), "other")
    assert store.tags() == ["t", "other"]
    with pytest.raises(InvalidReference):
        store.tag(a.descriptor(), "bad tag")
    missing = Descriptor(mt.OCI_MANIFEST, "sha256:" + "0" * 64, 10)
    with pytest.raises(NotFound):
        store.tag(missing, "x")


def test_reads_skopeo_style_bare_tags_and_tolerates_unknowns(tmp_path: Path) -> None:
    src = create_layout(tmp_path / "src")
    _image(src, "v1")
    dst = tmp_path / "skopeo"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{src.path}:v1", f"oci:{dst}:release"], check=True)
    store = LayoutStore(dst)
    assert store.tags() == ["release"]
    _, m = load_manifest(store, "release")
    assert isinstance(m, Manifest) and len(m.layers) == 1
    # foreign files and an entry of an unknown media type are tolerated and kept
    (dst / "README").write_text("not ours")
    index = json.loads((dst / "index.json").read_text())
    weird = {"mediaType": "application/x-unknown", "digest": "sha256:" + "1" * 64, "size": 3}
    index["manifests"].append(weird)
    (dst / "index.json").write_text(json.dumps(index))
    store.tag(store.resolve("release"), "again")
    kinds = [e.media_type for e in store.index_entries()]
    assert "application/x-unknown" in kinds and store.tags() == ["release", "again"]


def test_failed_put_leaves_nothing_and_no_temp_in_blobs(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    data = b"some content"
    good = Descriptor.for_bytes("application/octet-stream", data)
    lying = Descriptor(good.media_type, "sha256:" + "a" * 64, len(data))
    calls: list[Descriptor] = []
    with pytest.raises(DigestMismatch):
        store.put_blob(lying, io.BytesIO(data), before_publish=calls.append)
    too_long = Descriptor(good.media_type, good.digest, len(data) - 1)
    with pytest.raises(DigestMismatch):
        store.put_blob(too_long, io.BytesIO(data))
    assert calls == []
    assert _files_in_blobs(tmp_path) == []
    assert list(store.tmp_dir.iterdir()) == []

    seen: list[bool] = []
    store.put_blob(good, io.BytesIO(data), before_publish=lambda d: seen.append(store.blob_path(d.digest).exists()))
    assert seen == [False]  # called after verification, before the rename
    assert _files_in_blobs(tmp_path) == [good.digest.encoded]
    store.put_blob(good, _Exploding())  # present already: the stream is not drained
    assert list(store.tmp_dir.iterdir()) == []


def test_tampered_blob_is_detected_on_read(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    m = _image(store, "v1")
    layer = m.layers[0]
    path = store.blob_path(layer.digest)
    content = bytearray(path.read_bytes())
    content[-5] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(DigestMismatch):
        with store.open_blob(layer) as f:
            f.read()
    mpath = store.blob_path(m.digest)
    mpath.write_bytes(m.raw.replace(b"schemaVersion", b"schemaVersioN"))
    with pytest.raises(DigestMismatch):
        store.get_manifest("v1")


def test_delete_and_referrers(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    subject = _image(store, "v1")
    sig = Manifest.build(
        Descriptor.for_bytes(mt.OCI_EMPTY, b"{}"), [], artifact_type="application/vnd.example.sig",
        subject=subject.descriptor(), annotations={"k": "v"},
    )
    store.put_blob(sig.config, io.BytesIO(b"{}"))
    store.put_manifest(sig.descriptor(), sig.raw, tag="sig")
    # another referrer, reachable only through the fallback tag index
    sbom = Manifest.build(Descriptor.for_bytes(mt.OCI_EMPTY, b"{}"), [], artifact_type="application/spdx+json",
                          subject=subject.descriptor())
    store.put_manifest(sbom.descriptor(), sbom.raw)
    fallback = Index.build([sbom.descriptor(artifact_type="application/spdx+json")])
    store.put_manifest(fallback.descriptor(), fallback.raw, tag=f"sha256-{subject.digest.encoded}")
    refs = store.referrers(subject.descriptor())
    assert {r.digest for r in refs} == {sig.digest, sbom.digest}
    assert {r.artifact_type for r in refs} == {"application/vnd.example.sig", "application/spdx+json"}
    only = store.referrers(subject.descriptor(), artifact_type="application/vnd.example.sig")
    assert [r.digest for r in only] == [sig.digest] and only[0].annotations["k"] == "v"

    store.delete("sig")
    assert "sig" not in store.tags()
    assert store.blob_path(sig.digest).exists()  # blobs are GC's job
    store.tag(subject.descriptor(), "v2")
    store.delete(str(subject.digest))
    assert "v1" not in store.tags() and "v2" not in store.tags()
    with pytest.raises(NotFound):
        store.delete("nope")
    with pytest.raises(NotFound):
        store.resolve("v1")
    with pytest.raises(NotFound):
        store.resolve(str(subject.layers[0].digest))  # a layer is not a manifest


def _tagger(path: str, worker: int, desc_json: str) -> None:
    store = LayoutStore(path)
    desc = Descriptor.from_dict(json.loads(desc_json))
    for i in range(20):
        store.tag(desc, f"w{worker}-t{i}")


def test_eight_processes_tagging_lose_no_entry(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    m = _image(store)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tagger, args=(str(tmp_path), w, json.dumps(m.descriptor().to_dict())))
             for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tags = store.tags()
    assert len(tags) == 160 and set(tags) == {f"w{w}-t{i}" for w in range(8) for i in range(20)}
    assert list(store.tmp_dir.iterdir()) == []


def test_writer_lock_excludes_gc_lock(tmp_path: Path) -> None:
    store = create_layout(tmp_path)
    got_gc = threading.Event()

    def gc() -> None:
        with store.gc_lock():
            got_gc.set()

    with store.writer_lock(), store.writer_lock():  # shared: two writers at once
        t = threading.Thread(target=gc)
        t.start()
        time.sleep(0.2)
        assert not got_gc.is_set()
    t.join(5)
    assert got_gc.is_set()


def test_peer_tools_accept_our_layout(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    store = create_layout(layout)
    _image(store, "v1")
    _image(store, "v2", b"other")
    ok = subprocess.run(["oci-image-tool", "validate", "--type", "image", str(layout)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:v2", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "rootfs" / "etc" / "motd").read_bytes() == b"other"
    subprocess.run(["umoci", "gc", "--layout", str(layout)], check=True, capture_output=True)


def test_put_blob_file_moves_or_copies(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "l")
    inside = write_layer([TarEntry.file("a", b"1")], tmp_dir=store.tmp_dir)
    store.put_blob_file(inside.descriptor, inside.path)
    outside = write_layer([TarEntry.file("b", b"2")], tmp_dir=tmp_path)
    store.put_blob_file(outside.descriptor, outside.path)
    assert store.has_blob(inside.descriptor) and store.has_blob(outside.descriptor)
    assert not inside.path.exists() and not outside.path.exists()
    bad = write_layer([TarEntry.file("c", b"3")], tmp_dir=store.tmp_dir)
    lying = Descriptor(bad.descriptor.media_type, "sha256:" + "e" * 64, bad.descriptor.size)
    with pytest.raises(DigestMismatch):
        store.put_blob_file(lying, bad.path)
    assert not bad.path.exists() and not store.blob_path(lying.digest).exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_oversized_index_json_is_refused_without_reading_it_whole(tmp_path) -> None:
    from ocibuild.errors import StoreError
    from ocibuild.oci.manifest import MAX_MANIFEST_BYTES
    from ocibuild.store.layout import LayoutStore

    store = LayoutStore(tmp_path / "l", create=True)
    with open(tmp_path / "l" / "index.json", "wb") as fh:
        fh.write(b'{"schemaVersion":2,"manifests":[]}' + b" " * (MAX_MANIFEST_BYTES * 4))
    with pytest.raises(StoreError, match="over the .* byte limit"):
        store.tags()
