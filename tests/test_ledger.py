"""The ledger (SQLite rows, holds, sources), leases (heartbeat, release, death) and the scratch directory."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger_support import layer_bytes
from ocibuild.errors import StoreError
from ocibuild.ledger.db import Ledger
from ocibuild.ledger.lease import DEAD, EXPIRED, LIVE, RELEASED, Lease, hostname, lease_state, process_start_time
from ocibuild.ledger.scratch import ENV_SCRATCH, Scratch, default_scratch_dir, layout_location
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor


def _layer(name: str) -> Descriptor:
    return Descriptor.for_bytes(mt.OCI_LAYER_GZIP, layer_bytes(name))


# -- scratch -------------------------------------------------------------------------------------
def test_scratch_default_follows_xdg_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_SCRATCH, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_scratch_dir() == tmp_path / "xdg" / "ocibuild"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_scratch_dir() == tmp_path / "home" / ".cache" / "ocibuild"
    monkeypatch.setenv(ENV_SCRATCH, str(tmp_path / "env"))
    assert Scratch.resolve().root == tmp_path / "env"
    assert Scratch.resolve(tmp_path / "arg").root == tmp_path / "arg"  # the option wins


def test_scratch_paths(tmp_path):
    sc = Scratch.resolve(tmp_path).ensure()
    assert sc.layout_path == tmp_path / "layout" and sc.ledger_path == tmp_path / "ledger.db"
    assert sc.cache_path.is_dir() and sc.work_path.is_dir()
    store = sc.open_layout()
    assert (store.path / "oci-layout").exists()
    assert sc.location == layout_location(store.path)


# -- ledger rows ---------------------------------------------------------------------------------
def test_record_query_forget(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a, b = _layer("a"), _layer("b")
    ledger.record(a, location="/x", lease_id="L1", role="layer", ephemeral=True)
    ledger.record(b, location="/x", lease_id="L2", role="cache")
    ledger.record(a, location="reg.example/repo", lease_id="L1", role="layer")
    assert {r.digest for r in ledger.query(location="/x")} == {a.digest, b.digest}
    assert [r.digest for r in ledger.query(role="cache")] == [b.digest]
    assert [r.location for r in ledger.query(lease="L1", ephemeral=True)] == ["/x"]
    row = ledger.query(digest=a.digest, location="/x")[0]
    assert (row.media_type, row.size, row.lease_id, row.role) == (a.media_type, a.size, "L1", "layer")
    ledger.forget(a.digest, "/x")
    assert ledger.query(digest=a.digest) == ledger.query(location="reg.example/repo")
    assert ledger.holders(a.digest, "/x") == []


def test_record_again_keeps_creator_and_never_turns_permanent_into_ephemeral(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a = _layer("a")
    ledger.record(a, location="/x", lease_id="L1", role="app-image", ephemeral=False)
    ledger.record(a, location="/x", lease_id="L2", role="ephemeral-builder", ephemeral=True)
    row = ledger.query(digest=a.digest)[0]
    assert (row.lease_id, row.role, row.ephemeral) == ("L1", "app-image", False)
    assert sorted(ledger.holders(a.digest, "/x")) == ["L1", "L2"]  # both builds keep it alive


def test_sources_and_edges(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a, b = _layer("a"), _layer("b")
    ledger.record_source(a.digest, "registry.example/base/builder")
    ledger.record_source(a.digest, "registry.example/other")
    ledger.record_source(a.digest, "registry.example/other")
    assert ledger.sources(a.digest) == ["registry.example/base/builder", "registry.example/other"]
    assert ledger.sources(b.digest) == [] and not ledger.has_source(b.digest)
    ledger.record_edges(a.digest, [b.digest])
    assert ledger.children(a.digest) == [b.digest]


def test_plain_key_reads_match_the_parsed_rows(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a, b = _layer("a"), _layer("b")
    ledger.record(a, location="/x", lease_id="L1", role="layer", ephemeral=True)
    ledger.record(b, location="reg.example/repo", role="cache")
    ledger.record_edges(a.digest, [b.digest])
    keys = ledger.object_keys("/x")
    assert [(k.digest, k.media_type, k.lease_id, k.role, k.ephemeral) for k in keys] == [
        (str(a.digest), a.media_type, "L1", "layer", True)
    ]
    assert [k.digest for k in ledger.object_keys("reg.example/repo")] == [str(b.digest)]
    assert ledger.hold_keys("/x") == [("L1", str(a.digest), "/x")]
    assert ledger.edge_keys() == {str(a.digest): [str(b.digest)]}
    ledger.forget(a.digest, "/x")
    ledger.forget_orphan_edges()
    assert ledger.edge_keys() == {}


def test_batch_commits_all_or_nothing(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a, b, c = _layer("a"), _layer("b"), _layer("c")
    with pytest.raises(RuntimeError):
        with ledger.batch():
            ledger.record(a, location="/x")
            ledger.record(b, location="/x")
            raise RuntimeError("interrupted")
    assert ledger.query() == []
    with ledger.batch():
        ledger.record(a, location="/x")
        ledger.forget_many([(a.digest, "/x")])
        ledger.record(c, location="/x")
        # Another connection sees nothing until the batch commits.
        assert Ledger(tmp_path / "l.db").query() == []
    assert [r.digest for r in Ledger(tmp_path / "l.db").query()] == [c.digest]
    ledger.record(b, location="/x")  # plain writes work again after a batch
    assert len(ledger.query()) == 2


def test_ledger_is_shared_across_processes(tmp_path):
    """Four processes record 50 rows each at once: WAL + busy timeout lose nothing."""
    db = tmp_path / "l.db"
    Ledger(db).close()
    code = (
        "import sys; from ocibuild.ledger.db import Ledger; from ocibuild.oci.digest import Digest\n"
        "l = Ledger(sys.argv[1])\n"
        "for i in range(50): l.record(Digest.of(f'{sys.argv[2]}-{i}'.encode()), location='/x', lease_id=sys.argv[2])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), f"p{i}"]) for i in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert len(Ledger(db).query(location="/x")) == 200
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_ledger_is_a_store_error(tmp_path):
    db = tmp_path / "l.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="ledger"):
        Ledger(db)


# -- leases --------------------------------------------------------------------------------------
def test_lease_heartbeat_extends_expiry_and_exit_releases(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    with Lease(ledger, ttl=2, heartbeat_interval=0.05) as lease:
        first = ledger.lease(lease.id)
        assert first.pid == os.getpid() and first.host == hostname()
        assert first.proc_start == process_start_time(os.getpid())
        time.sleep(0.3)
        later = ledger.lease(lease.id)
        assert later.expires_at > first.expires_at and later.heartbeat > first.heartbeat
        assert lease_state(later) == LIVE
    assert lease_state(ledger.lease(lease.id)) == RELEASED
    assert not lease._thread.is_alive()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_lease_released_on_exception_and_ctrl_c(tmp_path, exc):
    ledger = Ledger(tmp_path / "l.db")
    with pytest.raises(type(exc)):
        with Lease(ledger) as lease:
            raise exc
    assert ledger.lease(lease.id).released is not None


def test_lease_expires_without_heartbeat(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    row = ledger.create_lease("old", pid=os.getpid(), host=hostname(),
                              proc_start=process_start_time(os.getpid()), ttl=60, now=time.time() - 120)
    assert lease_state(row) == EXPIRED
    other_host = ledger.create_lease("far", pid=1, host="elsewhere.example", proc_start=1, ttl=60)
    assert lease_state(other_host) == LIVE  # another host's pid means nothing here: expiry decides


def test_lease_of_dead_or_reused_pid_is_dead(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(child.pid)
    child.wait()
    gone = ledger.create_lease("gone", pid=child.pid, host=hostname(), proc_start=start, ttl=600)
    assert lease_state(gone) == DEAD
    # Our own pid, but with another start time: the pid was reused by a different process.
    reused = ledger.create_lease("reused", pid=os.getpid(), host=hostname(),
                                 proc_start=(process_start_time(os.getpid()) or 0) + 1, ttl=600)
    assert lease_state(reused) == DEAD


def test_publish_hook_writes_row_before_blob_is_visible(tmp_path):
    sc = Scratch.resolve(tmp_path)
    store = sc.open_layout()
    seen = []
    with Lease(sc) as lease:
        hook = lease.publish_hook(store, "ephemeral-builder", ephemeral=True)

        def spy(desc):
            hook(desc)
            rows = lease.ledger.query(digest=desc.digest, location=sc.location)
            seen.append((len(rows), store.blob_path(desc.digest).exists()))

        data = layer_bytes("hooked")
        desc = Descriptor.for_bytes(mt.OCI_LAYER_GZIP, data)
        with store.writer_lock():
            store.put_blob(desc, io.BytesIO(data), before_publish=spy)
    assert seen == [(1, False)]
    row = lease.ledger.query(digest=desc.digest)[0]
    assert (row.role, row.ephemeral, row.lease_id) == ("layer", True, lease.id)


def test_put_blob_holds_content_that_already_exists(tmp_path):
    sc = Scratch.resolve(tmp_path)
    store = sc.open_layout()
    data = layer_bytes("shared")
    desc = Descriptor.for_bytes(mt.OCI_LAYER_GZIP, data)
    with Lease(sc) as first:
        first.put_blob(store, desc, io.BytesIO(data))
    with Lease(sc) as second:
        second.put_blob(store, desc, io.BytesIO(data))  # already present: no publish, still held
        assert second.id in second.ledger.holders(desc.digest, sc.location)
        assert second.ledger.query(digest=desc.digest)[0].lease_id == first.id


def test_heartbeat_survives_concurrent_writers(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    with Lease(ledger, ttl=1, heartbeat_interval=0.02) as lease:
        def write(n):
            for i in range(40):
                ledger.record(_layer(f"{n}-{i}"), location="/x", lease_id=lease.id)
        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert lease_state(ledger.lease(lease.id)) == LIVE
    assert len(ledger.query(lease=lease.id)) == 160
