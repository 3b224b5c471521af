"""The generic graph copy between layouts and a real registry (distribution 2.8.2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ocibuild.errors import DigestMismatch, ManifestError, NotFound, UsageError
from ocibuild.oci import Descriptor, Index, Manifest, Platform
from ocibuild.oci import mediatype as mt
from ocibuild.store.base import put_bytes, read_blob
from ocibuild.store.layout import LayoutStore
from ocibuild.store.open import open_reference
from ocibuild.transfer.copy import GraphCopier, copy_image
from ocibuild.transfer.progress import CountingProgress, make_progress
from support.copyimages import image, index


def layout(tmp_path: Path, name: str) -> LayoutStore:
    return LayoutStore(tmp_path / name, create=True)


def reg(registry, repo: str):
    store, _ = open_reference(f"{registry.host}/{repo}")
    return store


def all_blobs_present(store, blobs) -> bool:
    return all(store.has_blob(b) for b in blobs)


# -- layout -> layout ---------------------------------------------------------------------------
def test_layout_round_trip_keeps_digest_and_skips_second_time(tmp_path):
    src, dst = layout(tmp_path, "src"), layout(tmp_path, "dst")
    built = image(src, "app", tag="v1")
    sink = CountingProgress()
    top = copy_image(src, "v1", dst, "copied", progress=sink)
    assert top.digest == built.desc.digest and top.media_type == mt.OCI_MANIFEST
    assert dst.resolve("copied").digest == built.desc.digest
    assert dst.get_manifest("copied")[1] == built.raw
    assert all_blobs_present(dst, built.blobs)
    assert sink.stats.counts == {"copied": 3, "skipped": 0, "mounted": 0}
    assert sink.stats.bytes["copied"] == sum(b.size for b in built.blobs) == sink.stats.moved

    again = CountingProgress()
    copy_image(src, str(built.desc.digest), dst, "again", progress=again, jobs=1)
    assert again.stats.counts == {"copied": 0, "skipped": 3, "mounted": 0}
    assert sorted(dst.tags()) == ["again", "copied"]


def test_index_whole_and_filtered(tmp_path):
    src = layout(tmp_path, "src")
    built, children = index(src, "multi", ("linux/amd64", "linux/arm64/v8", "linux/s390x"), tag="idx")

    whole = layout(tmp_path, "whole")
    top = copy_image(src, "idx", whole, "all", all_platforms=True)
    assert top.digest == built.desc.digest and top.media_type == mt.OCI_INDEX
    assert whole.get_manifest("all")[1] == built.raw
    assert all_blobs_present(whole, built.blobs)
    for child in children:
        assert whole.get_manifest(str(child.desc.digest))[1] == child.raw

    one = layout(tmp_path, "one")
    top = copy_image(src, "idx", one, "arm", platforms=[Platform.parse("linux/arm64")])
    assert top.digest == children[1].desc.digest and top.media_type == mt.OCI_MANIFEST
    assert all_blobs_present(one, children[1].blobs)
    assert not any(one.has_blob(b) for b in children[0].blobs + children[2].blobs)

    two = layout(tmp_path, "two")
    top = copy_image(src, "idx", two, "two", platforms=[Platform.parse("linux/amd64"), Platform.parse("linux/s390x")])
    doc = Index.parse(two.get_manifest("two")[1])
    assert [e.digest for e in doc.manifests] == [children[0].desc.digest, children[2].desc.digest]
    assert top.digest == doc.digest != built.desc.digest
    assert not any(two.has_blob(b) for b in children[1].blobs)

    with pytest.raises(NotFound, match="no image for platform windows/amd64"):
        copy_image(src, "idx", layout(tmp_path, "none"), "x", platforms=[Platform.parse("windows/amd64")])
    with pytest.raises(UsageError):
        copy_image(src, "idx", one, "x", platforms=[Platform.parse("linux/amd64")], all_platforms=True)


def test_inline_data_foreign_layers_and_opaque_manifests(tmp_path):
    src, dst = layout(tmp_path, "src"), layout(tmp_path, "dst")
    foreign = Descriptor(mt.DOCKER_FOREIGN_LAYER, Descriptor.for_bytes("x", b"windows base").digest, 12,
                         urls=("https://example.invalid/base.tar.gz",))
    # a config carried inline (``data``): the source layout does not even hold it
    inline_cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    plain_cfg = Descriptor.for_bytes(mt.OCI_CONFIG, inline_cfg)
    cfg = Descriptor(mt.OCI_CONFIG, plain_cfg.digest, plain_cfg.size, data=inline_cfg)
    manifest = Manifest.build(cfg, [foreign])
    src.put_manifest(manifest.descriptor(), manifest.raw)
    # an index entry of a kind ocibuild does not know: copied verbatim, as an opaque document
    odd = b'{"hello":"world"}'
    odd_desc = Descriptor.for_bytes("application/vnd.example.thing+json", odd)
    put_bytes(src, odd_desc, odd)
    idx = Index.build([manifest.descriptor(), odd_desc])
    src.put_manifest(idx.descriptor(), idx.raw, tag="mixed")

    sink = CountingProgress()
    copy_image(src, "mixed", dst, "mixed", progress=sink)
    assert dst.get_manifest("mixed")[1] == idx.raw
    assert dst.blob_path(odd_desc.digest).read_bytes() == odd
    assert read_blob(dst, Descriptor(cfg.media_type, cfg.digest, cfg.size)) == inline_cfg
    assert not dst.has_blob(foreign)
    assert sink.stats.counts["copied"] == 1  # only the inline config


def test_cycle_and_corrupt_source_are_errors(tmp_path):
    src, dst = layout(tmp_path, "src"), layout(tmp_path, "dst")
    built, children = index(src, "cyc", tag="idx")
    # an index that names itself can only be forged: present its bytes under a child's digest
    with pytest.raises(ManifestError, match="cycle"):
        GraphCopier(src, dst).plan(Descriptor(mt.OCI_INDEX, children[0].desc.digest, 1), _self_index(children[0]))
    # a layer whose bytes changed on disk in the source: the copy fails and leaves no tag
    victim = children[0].blobs[1]
    path = src.blob_path(victim.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"X" * victim.size)
    with pytest.raises(DigestMismatch):
        copy_image(src, "idx", dst, "idx", jobs=1)
    assert dst.tags() == [] and not dst.has_blob(victim)
    assert list((dst.path / ".tmp").iterdir()) == []


def _self_index(child) -> bytes:
    """Bytes of an index whose only entry is ``child``'s digest, to be presented *as* that digest."""
    return Index.build([child.desc]).raw


def test_bad_jobs_and_missing_source(tmp_path):
    src, dst = layout(tmp_path, "src"), layout(tmp_path, "dst")
    with pytest.raises(NotFound):
        copy_image(src, "nope", dst, "x")
    image(src, "a", tag="a")
    with pytest.raises(UsageError):
        copy_image(src, "a", dst, "x", jobs=0)


def test_progress_is_silent_off_a_terminal(tmp_path, capsys):
    sink = make_progress(quiet=False)
    assert type(sink) is CountingProgress  # pytest's stderr is not a TTY
    assert type(make_progress(quiet=True, stream=open(os.devnull))) is CountingProgress


# -- with the real registry ---------------------------------------------------------------------
@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker-v2s2"])
def test_layout_registry_layout_keeps_every_digest(tmp_path, registry, fresh_repo, docker):
    src = layout(tmp_path, "src")
    built, children = index(src, "rt", docker=docker, tag="idx")
    remote = reg(registry, fresh_repo)
    top = copy_image(src, "idx", remote, "v1")
    assert top.digest == built.desc.digest
    desc, raw = remote.get_manifest("v1")
    assert raw == built.raw and desc.media_type == (mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX)

    back = layout(tmp_path, "back")
    top = copy_image(remote, "v1", back, "v1", jobs=3)
    assert top.digest == built.desc.digest
    assert back.get_manifest("v1")[1] == built.raw
    for child in children:
        assert back.get_manifest(str(child.desc.digest))[1] == child.raw
        assert all_blobs_present(back, child.blobs)

    arm = layout(tmp_path, "arm")
    top = copy_image(remote, "v1", arm, "arm", platforms=[Platform.parse("linux/arm64/v8")])
    assert top.digest == children[1].desc.digest
    assert top.media_type == (mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST)
    assert not any(arm.has_blob(b) for b in children[0].blobs)


def test_second_repository_mounts_instead_of_uploading(tmp_path, registry, fresh_repo):
    src = layout(tmp_path, "src")
    built = image(src, "mountme", tag="v1", layers=3)
    first = reg(registry, fresh_repo)
    copy_image(src, "v1", first, "v1")
    other_repo = fresh_repo + "-b"
    second = reg(registry, other_repo)
    mark = registry.log_mark()
    sink = CountingProgress()
    top = copy_image(first, "v1", second, "v1", progress=sink)
    assert top.digest == built.desc.digest
    assert sink.stats.counts == {"copied": 0, "skipped": 0, "mounted": 4}
    entries = [e for e in registry.access_since(mark) if f"/v2/{other_repo}/blobs/" in e.path]
    assert entries, "expected mount requests"
    assert not [e for e in entries if e.method in ("PATCH", "PUT")]
    assert all("mount=" in e.uri for e in entries if e.method == "POST")
    assert second.get_manifest("v1")[1] == built.raw


def test_tampered_registry_blob_fails_pull_and_leaves_nothing(tmp_path, registry, fresh_repo):
    src = layout(tmp_path, "src")
    built = image(src, "tamper", tag="v1", layers=1)
    remote = reg(registry, fresh_repo)
    copy_image(src, "v1", remote, "v1")
    victim = built.blobs[1]
    data_path = registry.blob_data_path(victim.digest)
    data_path.write_bytes(b"\0" * victim.size)  # same size, other bytes: only the digest can tell
    dst = layout(tmp_path, "dst")
    with pytest.raises(DigestMismatch):
        copy_image(remote, "v1", dst, "v1")
    assert dst.tags() == []
    assert not dst.has_blob(victim) and not dst.blob_path(victim.digest).exists()
    assert not dst.blob_path(built.desc.digest).exists()  # no manifest either
    assert list((dst.path / ".tmp").iterdir()) == []


def test_referrers_are_copied_when_asked(tmp_path, registry, fresh_repo):
    src = layout(tmp_path, "src")
    built = image(src, "subject", tag="v1", layers=1)
    sig = b"signature bytes"
    sig_desc = Descriptor.for_bytes("application/vnd.example.sig", sig)
    put_bytes(src, sig_desc, sig)
    from ocibuild.oci.descriptor import EMPTY_DESCRIPTOR

    put_bytes(src, EMPTY_DESCRIPTOR, EMPTY_DESCRIPTOR.data)
    referrer = Manifest.build(
        Descriptor(EMPTY_DESCRIPTOR.media_type, EMPTY_DESCRIPTOR.digest, 2), [sig_desc],
        artifact_type="application/vnd.example.sig", subject=built.desc,
    )
    src.put_manifest(referrer.descriptor(), referrer.raw, tag="sig")  # a root, so the layout can list it
    assert [d.digest for d in src.referrers(built.desc)] == [referrer.digest]

    remote = reg(registry, fresh_repo)
    copy_image(src, "v1", remote, "v1", referrers=True)
    found = remote.referrers(built.desc)
    assert [d.digest for d in found] == [referrer.digest]
    assert remote.get_manifest(str(referrer.digest))[1] == referrer.raw
    assert remote.has_blob(sig_desc)
