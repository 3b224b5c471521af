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
