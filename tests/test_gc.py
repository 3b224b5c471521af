"""Garbage collection of the scratch layout: roots, marking, leases, SIGKILL, concurrency, dry run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger_support import build_image, layer_bytes, tagged_images_complete, write_image, write_index
from ocibuild.ledger.db import Ledger
from ocibuild.ledger.fsck import check
from ocibuild.ledger.gc import collect, release_and_collect
from ocibuild.ledger.lease import Lease
from ocibuild.ledger.scratch import Scratch
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import Manifest
from ocibuild.store.layout import fallback_tag

SUPPORT = Path(__file__).resolve().parent / "ledger_support.py"


@pytest.fixture
def scratch(tmp_path) -> Scratch:
    return Scratch.resolve(tmp_path / "scratch").ensure()


def present(store, digests) -> bool:
    return all(store.blob_path(d).exists() for d in digests)


def absent(store, digests) -> bool:
    return not any(store.blob_path(d).exists() for d in digests)


def all_blob_digests(store) -> set[Digest]:
    return set(store.iter_blobs())


def test_marks_index_manifests_configs_and_layers(scratch):
    store = scratch.open_layout()
    kept = write_image(store, ["base", "app"], tag="app")
    child_a = write_image(store, ["multi-a"])
    child_b = write_image(store, ["multi-b", "base"])
    index = write_index(store, [child_a.desc, child_b.desc], tag="multi")
    orphan = write_image(store, ["orphan-1", "orphan-2"])
    before = all_blob_digests(store)

    report = collect(scratch, grace_seconds=0)

    assert not report.aborted, report.errors
    assert present(store, [*kept.blobs, *child_a.blobs, *child_b.blobs, index.digest])
    assert absent(store, orphan.blobs)
    assert report.removed_blobs == 4 and set(report.removed) == {str(d) for d in orphan.blobs}
    assert report.removed_manifests == 1
    assert report.removed_bytes == sum(len(x) for x in [orphan.manifest.raw]) + orphan.config.size + sum(
        layer.size for layer in orphan.layers)
    assert all_blob_digests(store) == before - set(orphan.blobs)
    assert check(scratch).problems == []


def test_subject_referrers_are_kept_and_referrer_tags_live_with_their_subject(scratch):
    store = scratch.open_layout()
    subject = write_image(store, ["subject"], tag="subject")
    signature = write_image(store, ["signature"], subject=subject.desc)  # untagged: kept for its subject
    sig_of_sig = write_image(store, ["countersign"], subject=signature.desc)  # referrer of a referrer
    dangling = write_image(store, ["dangling"], subject=write_image(store, ["gone-subject"]).desc)
    # The sha256-<hex> fallback index (distribution-spec 1.1) of a tagged subject: kept with it.
    sbom = write_image(store, ["sbom-of-subject"], subject=subject.desc)
    live_index = write_index(store, [sbom.desc], tag=fallback_tag(subject.digest))
    # The fallback index of an untagged subject: no root of its own, so it goes with its referrer.
    untagged_subject = write_image(store, ["untagged-subject"])
    via_fallback = write_image(store, ["sbom"], subject=untagged_subject.desc)
    orphan_index = write_index(store, [via_fallback.desc], tag=fallback_tag(untagged_subject.digest))
    # A user's tag that merely looks like a fallback tag (it points at an ordinary image): a root.
    look_alike = write_image(store, ["users-image"], tag="sha256-" + "0" * 64)
    named_after = write_image(store, ["named-after"])
    users = write_image(store, ["users-other"], tag=fallback_tag(named_after.digest))

    os.utime(store.blob_path(untagged_subject.digest), (1, 1))  # past the grace period
    assert check(scratch).problems == [
        f"referrer tag {fallback_tag(untagged_subject.digest)} outlives its subject {untagged_subject.digest}; "
        f"run ocibuild gc"]
    report = collect(scratch, grace_seconds=0)

    assert present(store, [*subject.blobs, *signature.blobs, *sig_of_sig.blobs, *sbom.blobs, live_index.digest])
    assert present(store, [*look_alike.blobs, *users.blobs])
    assert absent(store, [*dangling.blobs, *via_fallback.blobs, orphan_index.digest, *named_after.blobs])
    assert absent(store, untagged_subject.blobs)  # the fallback index points at referrers, not at the subject
    assert report.untagged_referrers == [f"{fallback_tag(untagged_subject.digest)}@{orphan_index.digest}"]
    assert set(store.tags()) == {"subject", fallback_tag(subject.digest), fallback_tag(named_after.digest),
                                 "sha256-" + "0" * 64}
    assert tagged_images_complete(store) == []
    assert check(scratch).problems == []


def _attest_and_sign(store, image, key, record=None):
    """A CycloneDX SBOM referrer of ``image``, its cosign signature, and a signature of the SBOM."""
    from ocibuild.attest.publish import Blob, no_record
    from ocibuild.attest.referrers import attach
    from ocibuild.attest.sign import sign_image

    record = record or no_record
    sbom = attach(store, image, "application/vnd.cyclonedx+json",
                  [Blob("application/vnd.cyclonedx+json", b'{"bomFormat":"CycloneDX","specVersion":"1.5"}')],
                  "sbom", record=record)
    signed = sign_image(store, image, key, record)
    sbom_signed = sign_image(store, sbom, key, record)  # a .sig of a referrer: lives while the SBOM does
    return sbom, signed, sbom_signed


def _att_manifest(store, subject: Digest, tag: str) -> Digest:
    """A cosign ``.att`` manifest as cosign writes it: DSSE envelopes of in-toto statements."""
    import base64
    import json

    from ocibuild.store.base import put_bytes

    statement = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1",
                 "subject": [{"name": "app", "digest": {subject.algorithm: subject.encoded}}], "predicate": {}}
    envelope = json.dumps({"payloadType": "application/vnd.in-toto+json",
                           "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                           "signatures": [{"sig": "AAAA"}]}).encode()
    layer = Descriptor.for_bytes("application/vnd.dsse.envelope.v1+json", envelope)
    config = Descriptor.for_bytes(mt.OCI_CONFIG, b"{}")
    with store.writer_lock():
        put_bytes(store, layer, envelope)
        put_bytes(store, config, b"{}")
        manifest = Manifest.build(config, [layer])
        store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return manifest.digest


def _make_old(store) -> None:
    for digest in store.iter_blobs():
        os.utime(store.blob_path(digest), (1, 1))


def test_signature_and_attestation_tags_live_with_their_subject_and_go_with_it(scratch):
    from ocibuild.attest.keys import generate_signing_key
    from ocibuild.attest.verify import verify_image

    store = scratch.open_layout()
    key = generate_signing_key()
    app = write_image(store, ["app"], tag="app:1")
    sbom, signed, sbom_signed = _attest_and_sign(store, app.desc, key)
    att = _att_manifest(store, app.digest, f"sha256-{app.digest.encoded}.att")
    # Look-alikes stay roots: a .sig tag whose payload signs another digest, an .att about another subject.
    other = write_image(store, ["other"], tag="other:1")
    other_sbom, other_signed, other_sbom_signed = _attest_and_sign(store, other.desc, key)
    fake_sig, fake_att = f"sha256-{'1' * 64}.sig", f"sha256-{'2' * 64}.att"
    with store.writer_lock():
        store.tag(other_signed.manifest, fake_sig)
    fake_att_digest = _att_manifest(store, other.digest, fake_att)
    _make_old(store)
    dies = {fallback_tag(app.digest): app.digest, signed.tag: app.digest,
            f"sha256-{app.digest.encoded}.att": app.digest, sbom_signed.tag: sbom.digest}
    stays = {"other:1", fallback_tag(other.digest), other_signed.tag, other_sbom_signed.tag, fake_sig, fake_att}

    assert check(scratch).problems == []
    report = collect(scratch, grace_seconds=0)
    assert report.untagged_referrers == [] and set(store.tags()) == {"app:1", *dies, *stays}
    assert tagged_images_complete(store) == []
    assert verify_image(store, app.desc, key.public()).signatures == 1
    assert verify_image(store, sbom, key.public()).signatures == 1

    with store.writer_lock():
        store.update_index(lambda es: [e for e in es if e.ref_name != "app:1"])  # the subject is gone
    assert sorted(check(scratch).problems) == sorted(
        f"referrer tag {tag} outlives its subject {subject}; run ocibuild gc" for tag, subject in dies.items())
    expected = sorted(f"{tag}@{store.resolve(tag).digest}" for tag in dies)
    assert collect(scratch, grace_seconds=0, dry_run=True).untagged_referrers == expected
    assert set(store.tags()) == {*dies, *stays}  # the dry run untagged nothing
    report = collect(scratch, grace_seconds=0)

    assert report.untagged_referrers == expected
    assert set(store.tags()) == stays
    assert absent(store, [*app.blobs, sbom.digest, signed.manifest.digest, sbom_signed.manifest.digest, att])
    assert present(store, [*other.blobs, other_sbom.digest, other_signed.manifest.digest,
                           other_sbom_signed.manifest.digest, fake_att_digest])
    assert tagged_images_complete(store) == []
    assert check(scratch).problems == []


def test_referrer_tags_of_a_young_subject_wait_for_the_grace_period(scratch):
    """A subject written but not yet tagged (another tool between its writes) keeps its signature."""
    from ocibuild.attest.keys import generate_signing_key

    store = scratch.open_layout()
    app = write_image(store, ["young"])  # untagged, just written
    signed = _attest_and_sign(store, app.desc, generate_signing_key())[1]

    report = collect(scratch)  # default grace
    assert report.untagged_referrers == [] and signed.tag in store.tags()
    assert present(store, [*app.blobs, signed.manifest.digest]) and check(scratch).problems == []
    _make_old(store)
    assert check(scratch).problems != []
    from typer.testing import CliRunner

    from ocibuild.cli.maintenance import app as maintenance

    dry = CliRunner().invoke(maintenance, ["gc", "--scratch", str(scratch.root), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would untag referrer {signed.tag}@{signed.manifest.digest} (its subject is gone)" in dry.stdout
    report = collect(scratch)
    assert signed.tag not in store.tags() and fallback_tag(app.digest) not in store.tags()
    assert absent(store, [*app.blobs, signed.manifest.digest]) and check(scratch).problems == []


def test_attestations_of_an_ephemeral_image_go_with_it(scratch):
    """A build's ephemeral image, attested and signed under its lease (rows not ephemeral: the
    attestation code records what the user asked for), is untagged when the lease ends, and its
    referrer tags, manifests and ledger rows go with it."""
    from ocibuild.attest.keys import generate_signing_key
    from ocibuild.attest.publish import ledger_record

    store = scratch.open_layout()
    kept = write_image(store, ["kept"], tag="kept")
    with Lease(scratch) as lease:
        eph = write_image(store, ["eph-app"], tag="eph", lease=lease, role="ephemeral-builder", ephemeral=True)
        sbom, signed, sbom_signed = _attest_and_sign(store, eph.desc, generate_signing_key(),
                                                     ledger_record(lease.ledger, store, lease.id))
        assert collect(scratch).untagged_referrers == []  # live lease: all kept
        assert signed.tag in store.tags()
    report = collect(scratch)  # default grace: the dead lease's rows say what is garbage

    assert report.untagged == [f"eph@{eph.digest}"]
    assert {n.rsplit("@", 1)[0] for n in report.untagged_referrers} == {
        fallback_tag(eph.digest), signed.tag, sbom_signed.tag}
    assert store.tags() == ["kept"] and present(store, kept.blobs)
    assert absent(store, [*eph.blobs, sbom.digest, signed.manifest.digest, sbom_signed.manifest.digest])
    from ocibuild.ledger.scratch import layout_location

    location = layout_location(store.path)
    assert {str(r.digest) for r in Ledger(scratch.ledger_path).query(location=location)} <= {
        str(d) for d in kept.blobs}
    assert check(scratch).problems == []


def test_children_missing_locally_are_fine(scratch):
    """A composed builder references base layers that live only in a registry."""
    store = scratch.open_layout()
    image, contents = build_image(["remote-base", "local-buildpack"])
    local = image.layers[1]
    with store.writer_lock():
        store.put_blob(image.config, io.BytesIO(contents[image.config.digest]))
        store.put_blob(local, io.BytesIO(contents[local.digest]))
        store.put_manifest(image.desc, image.manifest.raw, tag="composed")
    report = collect(scratch, grace_seconds=0)
    assert not report.aborted and report.removed_blobs == 0
    assert present(store, [image.digest, image.config.digest, local.digest])


def test_released_ephemeral_builder_is_removed_while_a_live_lease_keeps_its_own(scratch):
    store = scratch.open_layout()
    users_builder = write_image(store, ["builder-base", "lifecycle"], tag="my/builder:latest")
    builder_bytes = (store.path / "index.json").read_bytes()
    with Lease(scratch) as done:
        finished = write_image(store, ["builder-base", "lifecycle", "extra-bp"], tag="ephemeral-1",
                               lease=done, role="ephemeral-builder", ephemeral=True)
    live = Lease(scratch).acquire()
    try:
        running = write_image(store, ["builder-base", "other-bp"], tag="ephemeral-2", lease=live,
                              role="ephemeral-builder", ephemeral=True)
        in_flight = Descriptor.for_bytes(mt.OCI_LAYER_GZIP, layer_bytes("in-flight"))
        live.put_blob(store, in_flight, io.BytesIO(layer_bytes("in-flight")))  # no manifest yet

        report = collect(scratch)  # default grace: only the ledger can tell what is garbage

        assert store.tags() == ["my/builder:latest", "ephemeral-2"]
        assert report.untagged == [f"ephemeral-1@{finished.digest}"]
        only_finished = {finished.digest, finished.config.digest, finished.layers[2].digest}
        assert absent(store, only_finished)
        assert present(store, users_builder.blobs)  # shared layers stay: the user's builder reaches them
        assert present(store, [*running.blobs, in_flight.digest])
        assert (store.path / "index.json").read_bytes() != builder_bytes  # ephemeral-2 was added
        assert check(scratch).problems == []
    finally:
        report = release_and_collect(live, scratch)
    assert store.tags() == ["my/builder:latest"]
    assert absent(store, [running.digest, running.layers[1].digest, in_flight.digest])
    assert present(store, users_builder.blobs)
    assert Ledger(scratch.ledger_path).query(ephemeral=True) == []
    assert check(scratch).problems == []


def test_users_builder_in_scratch_is_never_untagged(scratch):
    """No composing needed: the "ephemeral" write of an existing manifest must not make it ephemeral."""
    store = scratch.open_layout()
    builder = write_image(store, ["b1", "b2"], tag="builder")
    index_before = (store.path / "index.json").read_bytes()
    with Lease(scratch) as lease:
        write_image(store, ["b1", "b2"], lease=lease, role="ephemeral-builder", ephemeral=True)
    collect(scratch, grace_seconds=0)
    assert (store.path / "index.json").read_bytes() == index_before
    assert present(store, builder.blobs)


def test_sigkilled_build_is_collected_by_next_gc(scratch, tmp_path):
    store = scratch.open_layout()
    keep = write_image(store, ["keep"], tag="keep")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(SUPPORT), "killable", str(scratch.root), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "worker died early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lease_id = ready.read_text()
        assert "ephemeral-killed" in store.tags()
        assert collect(scratch).removed_blobs == 0  # still alive: nothing of it is touched
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any("not released" in p for p in check(scratch).problems)

    report = collect(scratch)  # default grace: the dead lease's blobs are collected anyway

    assert lease_id in report.expired_leases
    assert store.tags() == ["keep"]
    assert report.removed_blobs == 5  # manifest, config, two layers, orphan layer
    assert all_blob_digests(store) == set(keep.blobs)
    assert check(scratch).problems == []


def test_dry_run_deletes_nothing(scratch):
    store = scratch.open_layout()
    write_image(store, ["kept"], tag="kept")
    write_image(store, ["orphan"])
    with Lease(scratch) as lease:
        write_image(store, ["eph"], tag="eph", lease=lease, ephemeral=True, role="ephemeral-builder")
    (store.path / ".tmp" / "stale").write_bytes(b"x")
    os.utime(store.path / ".tmp" / "stale", (1, 1))
    snapshot = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}

    report = collect(scratch, dry_run=True, grace_seconds=0)

    assert report.dry_run and report.removed_blobs == 6 and report.untagged and report.removed_temp
    assert {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()} == snapshot
    real = collect(scratch, grace_seconds=0)
    assert sorted(real.removed) == sorted(report.removed)


def test_grace_period_keeps_young_unrecorded_blobs(scratch):
    store = scratch.open_layout()
    young = write_image(store, ["young"])
    report = collect(scratch)
    assert report.removed_blobs == 0 and report.kept_young == 3
    old = time.time() - 7200
    for d in young.blobs:
        os.utime(store.blob_path(d), (old, old))
    assert collect(scratch).removed_blobs == 3


def test_unreadable_ledger_or_index_deletes_nothing(scratch):
    store = scratch.open_layout()
    orphan = write_image(store, ["orphan"])
    scratch.ledger_path.write_bytes(b"garbage" * 1000)
    report = collect(scratch, grace_seconds=0)
    assert report.aborted and "ledger" in report.errors[0]
    assert present(store, orphan.blobs)
    scratch.ledger_path.unlink()
    (store.path / "index.json").write_bytes(b'{"schemaVersion":2,"manifests":[{"mediaType":')
    report = collect(scratch, grace_seconds=0)
    assert report.aborted and present(store, orphan.blobs)


def test_corrupt_reachable_manifest_aborts_sweep(scratch):
    store = scratch.open_layout()
    tagged = write_image(store, ["t"], tag="t")
    orphan = write_image(store, ["o"])
    store.blob_path(tagged.digest).write_bytes(b"{not json")
    report = collect(scratch, grace_seconds=0)
    assert report.aborted and present(store, [*orphan.blobs, *(layer.digest for layer in tagged.layers)])


def test_build_cache_is_a_root(scratch):
    store = scratch.open_layout()
    cached = write_image(store, ["cache-layer"])
    (scratch.cache_path / "app").mkdir()
    idx = {"schemaVersion": 2, "manifests": [cached.desc.to_dict()]}
    import json

    (scratch.cache_path / "app" / "index.json").write_text(json.dumps(idx))
    assert collect(scratch, grace_seconds=0).removed_blobs == 0
    with Lease(scratch) as lease:
        by_role = write_image(store, ["cache-by-role"], lease=lease, role="cache")
    assert collect(scratch, grace_seconds=0).removed_blobs == 0
    assert present(store, [*cached.blobs, by_role.digest])


def test_stale_temp_files_and_work_dirs_of_dead_leases(scratch):
    store = scratch.open_layout()
    with Lease(scratch) as lease:
        (scratch.work_path / lease.id).mkdir()
        (store.path / ".tmp" / f"{lease.id}-x").write_bytes(b"partial")
    fresh = store.path / ".tmp" / "fresh"
    fresh.write_bytes(b"in flight")
    old = store.path / ".tmp" / "old"
    old.write_bytes(b"abandoned")
    os.utime(old, (1, 1))
    collect(scratch)
    assert fresh.exists() and not old.exists()
    assert not (scratch.work_path / lease.id).exists() and not (store.path / ".tmp" / f"{lease.id}-x").exists()


def test_ephemeral_manifest_pushed_to_registry_is_deleted_there(scratch, registry, fresh_repo):
    from ocibuild.oci.reference import parse_docker_reference
    from ocibuild.store.base import put_bytes
    from ocibuild.store.registry import get_registry_store

    image, contents = build_image(["pushed-eph"])
    remote = get_registry_store(parse_docker_reference(f"{registry.host}/{fresh_repo}:eph"))
    for desc in (image.config, *image.layers):
        put_bytes(remote, desc, contents[desc.digest])
    remote.put_manifest(image.desc, image.manifest.raw, tag="eph")
    location = f"{registry.host}/{fresh_repo}"
    with Lease(scratch) as lease:
        lease.record(image.desc, location=location, role="ephemeral-builder", ephemeral=True)
        assert collect(scratch).registry_deleted == []  # live: untouched
        remote.resolve(str(image.digest))
    report = collect(scratch)
    assert report.registry_deleted == [f"{location}@{image.digest}"], report.errors
    from ocibuild.errors import NotFound

    with pytest.raises(NotFound):
        remote.resolve(str(image.digest))
    assert Ledger(scratch.ledger_path).query(location=location) == []


def test_referrers_of_an_ephemeral_manifest_in_a_registry_are_deleted_with_it(scratch, registry, fresh_repo):
    """registry 2.8.2 (no referrers API): the SBOM artifact, the sha256-<hex> fallback index and the
    .sig manifests ocibuild recorded go with their ephemeral subject; what it did not write stays."""
    from ocibuild.attest.keys import generate_signing_key
    from ocibuild.attest.publish import ledger_record
    from ocibuild.attest.sign import sign_image
    from ocibuild.errors import NotFound
    from ocibuild.oci.reference import parse_docker_reference
    from ocibuild.store.base import put_bytes
    from ocibuild.store.registry import get_registry_store

    remote = get_registry_store(parse_docker_reference(f"{registry.host}/{fresh_repo}:eph"))
    location = f"{registry.host}/{fresh_repo}"
    kept, kept_contents = build_image(["kept-remote"])
    eph, contents = build_image(["pushed-eph-attested"])
    for image, blobs in ((kept, kept_contents), (eph, contents)):
        for desc in (image.config, *image.layers):
            put_bytes(remote, desc, blobs[desc.digest])
    remote.put_manifest(kept.desc, kept.manifest.raw, tag="kept")
    remote.put_manifest(eph.desc, eph.manifest.raw, tag="eph")
    key = generate_signing_key()
    with Lease(scratch) as lease:
        lease.record(eph.desc, location=location, role="ephemeral-builder", ephemeral=True)
        sbom, signed, sbom_signed = _attest_and_sign(remote, eph.desc, key,
                                                     ledger_record(lease.ledger, remote, lease.id))
        kept_signed = sign_image(remote, kept.desc, key, ledger_record(lease.ledger, remote, lease.id))
        fallback = remote.resolve(fallback_tag(eph.digest)).digest
        assert collect(scratch).registry_deleted == []  # live: untouched
    report = collect(scratch)

    assert sorted(report.registry_deleted) == sorted(
        f"{location}@{d}" for d in (eph.digest, sbom.digest, signed.manifest.digest, sbom_signed.manifest.digest, fallback))
    assert report.errors == []
    for gone in (str(eph.digest), str(sbom.digest), signed.tag, sbom_signed.tag, fallback_tag(eph.digest)):
        with pytest.raises(NotFound):
            remote.resolve(gone)
    assert remote.resolve(kept_signed.tag).digest == kept_signed.manifest.digest  # its subject lives
    assert remote.resolve("kept").digest == kept.digest
    left = {str(r.digest) for r in Ledger(scratch.ledger_path).query(location=location)}
    assert str(kept_signed.manifest.digest) in left and str(sbom.digest) not in left and str(eph.digest) not in left


def test_unreachable_registry_is_reported_not_fatal(scratch):
    with Lease(scratch) as lease:
        desc = build_image(["x"])[0].desc
        lease.record(desc, location="127.0.0.1:9/nothing/here", role="ephemeral-builder", ephemeral=True)
    from ocibuild.store.registry.client import RegistryOptions

    report = collect(scratch, registry_options=RegistryOptions(timeout=2, retries=0, max_retry_time=1))
    assert report.errors and "cannot delete" in report.errors[0] and not report.aborted
    assert Ledger(scratch.ledger_path).query(ephemeral=True)  # kept for the next gc to retry


@pytest.mark.slow
def test_eight_concurrent_writers_with_gc_lose_nothing(scratch):
    scratch.open_layout()
    rounds = 6
    procs = [
        subprocess.Popen([sys.executable, str(SUPPORT), "loop", str(scratch.root), str(i), str(rounds)],
                         stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
    store = scratch.open_layout()
    assert sorted(store.tags()) == sorted(f"app-{i}-{n}" for i in range(8) for n in range(rounds))
    assert tagged_images_complete(store) == []
    assert check(scratch).problems == []
    collect(scratch, grace_seconds=0)
    assert tagged_images_complete(store) == []
    assert not any(store.blob_path(Digest.of(layer_bytes(f"eph-{i}-{n}"))).exists()
                   for i in range(8) for n in range(rounds))
    assert check(scratch, full=True).problems == []


def test_large_sweep_unlinks_in_parallel_and_reconciles_ledger_in_one_pass(scratch):
    from ocibuild.ledger.gc import _POOL_MIN

    store = scratch.open_layout()
    kept = write_image(store, ["keep-a", "keep-b"], tag="kept")
    with Lease(scratch) as lease:  # a finished build: its rows are claimed by a dead lease
        orphans = [write_image(store, [f"o{i}-1", f"o{i}-2", f"o{i}-3"], lease=lease) for i in range(16)]
    doomed = [d for img in orphans for d in img.blobs]
    assert len(doomed) > _POOL_MIN

    report = collect(scratch)  # default grace: rows of a dead lease are swept regardless of age

    assert not report.aborted and not report.errors, report.errors
    assert report.removed_blobs == len(doomed) and report.removed_manifests == len(orphans)
    assert sorted(report.removed) == sorted(str(d) for d in doomed)
    assert report.removed_bytes == sum(
        img.desc.size + img.config.size + sum(layer.size for layer in img.layers) for img in orphans
    )
    assert absent(store, doomed) and present(store, kept.blobs)
    assert set(report.phases) == {"ledger_read", "mark", "sweep", "ledger_write"}
    with Ledger(scratch.ledger_path) as db:
        recorded = {row.digest for row in db.query()}
        assert not recorded & set(doomed)
        assert db.lease(lease.id).released is not None
    assert check(scratch).ok


def test_blob_that_cannot_be_unlinked_is_kept_and_reported(scratch):
    store = scratch.open_layout()
    orphan = write_image(store, ["orphan"])
    stuck = store.path / "blobs" / "sha256" / ("ab" * 32)  # named like a digest, but a directory
    stuck.mkdir()
    (stuck / "inside").write_bytes(b"x")

    report = collect(scratch, grace_seconds=0)

    assert not report.aborted and absent(store, orphan.blobs)
    assert stuck.is_dir() and report.errors == [f"cannot remove sha256:{'ab' * 32}: Is a directory"]


def test_reachable_manifest_naming_an_invalid_digest_aborts(scratch):
    import hashlib
    import json

    store = scratch.open_layout()
    orphan = write_image(store, ["orphan"])
    tagged = write_image(store, ["t"])
    doc = json.loads(tagged.manifest.raw)
    doc["layers"][0]["digest"] = "sha256:../../../../outside"
    raw = json.dumps(doc).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (store.path / "blobs" / "sha256" / digest).write_bytes(raw)
    desc = Descriptor(mt.OCI_MANIFEST, Digest.parse(f"sha256:{digest}"), len(raw))
    store.update_index(lambda es: [*es, desc])

    report = collect(scratch, grace_seconds=0)

    assert report.aborted and "without a valid digest" in report.errors[0]
    assert present(store, orphan.blobs)


def test_gc_command_imports_no_registry_client_without_remote_work(scratch):
    code = (
        "import sys\n"
        "from ocibuild.cli import main\n"
        f"sys.argv = ['ocibuild', 'gc', '--scratch', {str(scratch.root)!r}, '--json', '--grace', '0']\n"
        "try:\n    main.run()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('requests' in sys.modules, 'ocibuild.store.registry' in sys.modules, file=sys.stderr)\n"
    )
    write_image(scratch.open_layout(), ["orphan"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "False False"
    assert '"removed_blobs": 3' in out.stdout


def test_temp_file_of_a_killed_writer_is_removed_and_a_live_ones_kept(scratch):
    """A lease-less writer (``copy``) killed mid-blob leaves ``.tmp/blob-<pid>-…``: gc removes it at
    once, not after the temp TTL, while the temp file of a writer that still runs stays."""
    store = scratch.open_layout()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = store.tmp_dir / f"blob-{dead.pid}-abc"
    mine = store.tmp_dir / f"blob-{os.getpid()}-def"
    orphan.write_bytes(b"half a blob")
    mine.write_bytes(b"being written")
    report = collect(scratch)
    assert str(orphan) in report.removed_temp and not orphan.exists()
    assert mine.exists()
