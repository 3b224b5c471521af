"""fsck: the layout, the ledger and the blobs checked against each other."""

from __future__ import annotations

import io

import pytest

from ledger_support import build_image, write_image
from ocibuild.ledger.db import Ledger
from ocibuild.ledger.fsck import check
from ocibuild.ledger.lease import Lease, hostname
from ocibuild.ledger.scratch import Scratch


@pytest.fixture
def scratch(tmp_path) -> Scratch:
    return Scratch.resolve(tmp_path / "scratch").ensure()


@pytest.fixture
def image(scratch):
    store = scratch.open_layout()
    with Lease(scratch) as lease:
        img = write_image(store, ["one", "two"], tag="app", lease=lease)
    return store, img


def test_clean_layout(scratch, image):
    report = check(scratch, full=True)
    assert report.ok and report.problems == [] and report.checked_manifests == 1 and report.checked_blobs == 4


def test_deleted_blob(scratch, image):
    store, img = image
    store.blob_path(img.layers[1].digest).unlink()
    problems = check(scratch).problems
    assert any(str(img.layers[1].digest) in p and "missing" in p for p in problems)
    assert any(p.startswith("ledger row for missing blob") for p in problems)


def test_missing_remote_layer_is_fine_when_its_source_is_recorded(scratch):
    store = scratch.open_layout()
    img, contents = build_image(["remote", "local"])
    with store.writer_lock():
        for desc in (img.config, img.layers[1]):
            store.put_blob(desc, io.BytesIO(contents[desc.digest]))
        store.put_manifest(img.desc, img.manifest.raw, tag="composed")
    assert any("no recorded source" in p for p in check(scratch).problems)
    Ledger(scratch.ledger_path).record_source(img.layers[0].digest, "registry.example/base")
    assert check(scratch).problems == []


def test_corrupted_manifest(scratch, image):
    store, img = image
    path = store.blob_path(img.digest)
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    problems = check(scratch).problems
    assert any("corrupt blob" in p and str(img.digest) in p for p in problems)


def test_corrupted_layer_found_only_by_full(scratch, image):
    store, img = image
    path = store.blob_path(img.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert check(scratch).problems == []  # layers are not re-hashed by default (same size)
    assert any("corrupt blob" in p for p in check(scratch, full=True).problems)


def test_torn_index(scratch, image):
    store, _ = image
    raw = (store.path / "index.json").read_bytes()
    (store.path / "index.json").write_bytes(raw[: len(raw) // 2])
    assert any(p.startswith("index.json:") for p in check(scratch).problems)


def test_unreleased_expired_lease_and_stale_temp(scratch, image):
    store, _ = image
    ledger = Ledger(scratch.ledger_path)
    ledger.create_lease("stale", pid=1, host=hostname(), proc_start=1, ttl=1, now=1.0)
    (store.path / ".tmp" / "old").write_bytes(b"x")
    import os

    os.utime(store.path / ".tmp" / "old", (1, 1))
    problems = check(scratch).problems
    assert any("lease stale" in p and "not released" in p for p in problems)
    assert any("stale temp file" in p for p in problems)


def test_foreign_file_in_blobs(scratch, image):
    store, _ = image
    (store.path / "blobs" / "sha256" / "upload.tmp").write_bytes(b"x")
    assert any("foreign file" in p for p in check(scratch).problems)


def test_cli_exit_codes_and_json(scratch, image):
    import json

    from typer.testing import CliRunner

    from ocibuild.cli.maintenance import app

    store, img = image
    runner = CliRunner()
    ok = runner.invoke(app, ["fsck", "--scratch", str(scratch.root), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    write_image(store, ["orphan"])
    dry = runner.invoke(app, ["gc", "--scratch", str(scratch.root), "--dry-run", "--json", "--grace", "0"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["removed_blobs"] == 3
    listed = runner.invoke(app, ["ledger", "--scratch", str(scratch.root), "--role", "app-image", "--json"])
    assert [o["digest"] for o in json.loads(listed.stdout)["objects"]] == [str(img.digest)]
    store.blob_path(img.config.digest).unlink()
    bad = runner.invoke(app, ["fsck", "--scratch", str(scratch.root)])
    assert bad.exit_code == 1 and str(img.config.digest) in bad.stdout


def _old(store) -> None:
    import os

    for digest in store.iter_blobs():
        os.utime(store.blob_path(digest), (1, 1))


def test_referrer_tags_are_checked_while_their_subject_lives_and_reported_once_it_is_gone(scratch, image):
    """The liveness GC uses: a referrer tag of a live subject is checked like any root (a missing
    SBOM layer is found), one whose subject is gone is reported as GC's to untag, not as damage."""
    from ocibuild.attest.keys import generate_signing_key
    from ocibuild.attest.publish import Blob
    from ocibuild.attest.referrers import attach
    from ocibuild.attest.sign import sign_image
    from ocibuild.ledger.gc import collect
    from ocibuild.store.layout import fallback_tag

    store, img = image
    key = generate_signing_key()
    document = Blob("application/spdx+json", b'{"spdxVersion":"SPDX-2.3"}')
    sbom = attach(store, img.desc, "application/spdx+json", [document], "sbom")
    signed = sign_image(store, img.desc, key)
    # An untagged referrer (found by its subject field alone) and its signature: live through the chain.
    countersign = write_image(store, ["countersign"], subject=sbom)
    countersigned = sign_image(store, countersign.desc, key)
    _old(store)
    assert check(scratch, full=True).problems == []
    assert collect(scratch, grace_seconds=0).untagged_referrers == []  # GC agrees: all live
    assert countersigned.tag in store.tags() and store.blob_path(countersign.digest).exists()

    document_digest = document.descriptor().digest
    store.blob_path(document_digest).unlink()
    assert any(str(document_digest) in p and "missing" in p for p in check(scratch).problems)
    with store.writer_lock():
        put_document(store, document)

    with store.writer_lock():
        store.update_index(lambda es: [e for e in es if e.ref_name != "app"])
    problems = sorted(check(scratch).problems)
    assert problems == sorted([
        f"referrer tag {fallback_tag(img.digest)} outlives its subject {img.digest}; run ocibuild gc",
        f"referrer tag {signed.tag} outlives its subject {img.digest}; run ocibuild gc",
        f"referrer tag {countersigned.tag} outlives its subject {countersign.digest}; run ocibuild gc",
    ])
    store.blob_path(document_digest).unlink()  # content under a dead referrer tag is not checked
    assert sorted(check(scratch).problems) == problems
    collect(scratch, grace_seconds=0)
    assert store.tags() == [] and check(scratch).problems == []


def put_document(store, blob) -> None:
    with blob.open() as stream:
        store.put_blob(blob.descriptor(), stream)


def test_a_referrer_tag_held_by_a_live_lease_is_no_problem(scratch):
    from ocibuild.attest.keys import generate_signing_key
    from ocibuild.attest.sign import sign_image
    from ocibuild.ledger.gc import collect

    store = scratch.open_layout()
    subject = write_image(store, ["untagged-subject"])
    signed = sign_image(store, subject.desc, generate_signing_key())
    _old(store)
    with Lease(scratch) as lease:
        lease.hold([signed.manifest], store)
        assert check(scratch).problems == []
        assert collect(scratch, grace_seconds=0).untagged_referrers == [] and signed.tag in store.tags()
    assert check(scratch).problems == [
        f"referrer tag {signed.tag} outlives its subject {subject.digest}; run ocibuild gc"]
