"""Garbage collection of the scratch layout: mark from every root, sweep the rest, trust the ledger.

Roots are ``index.json`` entries (tags, untagged pushes), the objects held by live leases, and the
build cache. Ephemeral manifests of released or expired leases are first untagged, then marking
follows indexes, manifests, configs, layers, ledger edges and referrers: a manifest whose
``subject`` is marked is kept, and so is a tag of the referrers tag scheme (``sha256-<hex>``,
``.sig``, ``.att``, ``.sbom``) whose subject is marked; such a tag is no root of its own
(``ocibuild.ledger.referrers``) and is untagged once its subject is gone. A referrer never keeps
its subject. Children that are not present locally are fine: a composed builder's base layers
live in a registry.

The sweep holds the layout's exclusive ``gc_lock`` (writers hold it shared) and is biased to
leaking: if the ledger, ``index.json`` or a reachable manifest cannot be read, nothing is deleted;
blobs younger than a grace period are kept unless a dead lease recorded them, and so are the
referrer tags of such a young subject. Kept blobs are not
re-hashed (digests were verified on write); only manifests and indexes are read. Digests are
plain strings throughout (see ``ocibuild.ledger.scan``); unlinks run in a small thread pool.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ocibuild.errors import ManifestError, NotFound, OCIBuildError
from ocibuild.ledger.db import ROLE_CACHE, Ledger, ObjectKey, ObjectRow
from ocibuild.ledger.lease import DEFAULT_TTL, LIVE, Lease, lease_state
from ocibuild.ledger.referrers import ReferrerTag, live_referrer_tags, referrer_tags
from ocibuild.ledger.scan import (
    Abort, blob_file, cache_roots, is_digest, looks_like_json, one_line, scan_blobs, temp_entries,
)
from ocibuild.ledger.scratch import Scratch, is_layout_location, layout_location
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES

log = logging.getLogger(__name__)

DEFAULT_GRACE = 3600.0
"""Unrecorded blobs younger than this are kept: another tool may be about to reference them."""
LEASE_RETENTION = 7 * 24 * 3600.0
"""Released leases are forgotten after a week (the ledger keeps its audit trail that long)."""


@dataclass
class GCReport:
    """What one collection removed (or, with ``dry_run``, would remove)."""

    dry_run: bool = False
    removed_blobs: int = 0
    removed_bytes: int = 0
    removed_manifests: int = 0
    kept: int = 0
    kept_young: int = 0
    removed: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)
    untagged_referrers: list[str] = field(default_factory=list)
    """Referrer tags (``tag@digest``) untagged because their subject is gone."""
    registry_deleted: list[str] = field(default_factory=list)
    removed_temp: list[str] = field(default_factory=list)
    removed_rootfs: list[str] = field(default_factory=list)
    """Extracted build-image layers removed (diffIDs), and unfinished extractions (paths)."""
    expired_leases: list[str] = field(default_factory=list)
    forgotten_rows: int = 0
    errors: list[str] = field(default_factory=list)
    aborted: bool = False
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the layout pass: ledger_read, mark, sweep, ledger_write."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- entry points ------------------------------------------------------------------------------
def collect(
    scratch: "Scratch | str | os.PathLike[str] | None" = None,
    *,
    dry_run: bool = False,
    grace_seconds: float = DEFAULT_GRACE,
    tmp_ttl: float = DEFAULT_TTL,
    registry_options: Any = None,
    now: float | None = None,
) -> GCReport:
    """Collect the scratch layout of ``scratch`` and delete ephemeral manifests pushed to registries,
    with the referrers ocibuild recorded for them there (``registry_options``: a ``RegistryOptions``
    or a zero-argument factory of one)."""
    started = time.monotonic()
    sc = Scratch.resolve(scratch)
    report = GCReport(dry_run=dry_run)
    if not sc.root.exists():
        return report
    try:
        ledger = sc.open_ledger()
    except OCIBuildError as exc:
        report.aborted = True
        report.errors.append(f"ledger unreadable, nothing deleted: {exc}")
        return report
    try:
        remote: list[ObjectRow] = []
        if (sc.layout_path / "oci-layout").exists():
            from ocibuild.store.layout import LayoutStore

            store = LayoutStore(sc.layout_path)
            with store.gc_lock(), _no_cycle_collection():
                try:
                    remote = _collect_layout(sc, store, ledger, report, dry_run, grace_seconds, tmp_ttl, now)
                except (Abort, OCIBuildError, OSError) as exc:
                    report.aborted = True
                    report.errors.append(f"nothing deleted: {one_line(exc)}")
                    return report
        else:
            try:
                remote = _dead_remote_ephemerals(ledger, _live_ids(ledger, now))
            except OCIBuildError as exc:
                report.aborted = True
                report.errors.append(f"ledger unreadable, nothing deleted: {exc}")
                return report
        _delete_remote(ledger, remote, report, dry_run, registry_options)
    finally:
        ledger.close()
        report.seconds = round(time.monotonic() - started, 4)
    return report


def release_and_collect(
    lease: Lease, scratch: "Scratch | str | os.PathLike[str] | None" = None, **kwargs: Any
) -> GCReport | None:
    """For the ``finally:`` of every build: release the lease, then collect. Never raises
    (a failing GC must not hide the build's own error); problems are logged and reported."""
    try:
        lease.release()
    except Exception as exc:  # the lease will expire on its own
        log.warning("could not release lease %s: %s", lease.id, one_line(exc))
    try:
        report = collect(scratch, **kwargs)
    except Exception as exc:
        log.warning("garbage collection failed: %s", one_line(exc))
        return None
    for err in report.errors:
        log.warning("gc: %s", err)
    return report


# -- the layout pass ---------------------------------------------------------------------------
@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector: the pass allocates tens of thousands of small acyclic
    objects, and the full collections they trigger cost a fifth of the non-unlink time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _live_ids(ledger: Ledger, now: float | None) -> set[str]:
    return {row.id for row in ledger.leases(include_released=False) if lease_state(row, now=now) == LIVE}


def _dead_remote_ephemerals(ledger: Ledger, live: set[str]) -> list[ObjectRow]:
    holds = ledger.hold_keys()
    return [row for row in ledger.query(ephemeral=True) if _is_dead_remote(row, holds, live)]


def _collect_layout(
    sc: Scratch,
    store: Any,
    ledger: Ledger,
    report: GCReport,
    dry_run: bool,
    grace: float,
    tmp_ttl: float,
    now: float | None,
) -> list[ObjectRow]:
    ts = time.time() if now is None else now
    loc = layout_location(store.path)
    clock = _Phases(report)

    # 1. One consistent read of the ledger (under the exclusive lock: no writer records meanwhile).
    #    Digests stay plain strings from here on: GC handles tens of thousands and parses none.
    with ledger.snapshot():
        leases = ledger.leases()
        holds = ledger.hold_keys()
        rows = ledger.object_keys(loc)
        all_ephemeral = ledger.query(ephemeral=True)
        edges = ledger.edge_keys()
    states = {row.id: lease_state(row, now=ts) for row in leases}
    live = {lid for lid, state in states.items() if state == LIVE}
    dead = set(states) - live
    live_held = {d for lid, d, hloc in holds if lid in live and hloc == loc}
    row_of = {row.digest: row for row in rows}
    claimed_dead = {
        row.digest for row in rows
        if row.digest not in live_held and row.lease_id is not None and row.lease_id not in live
    }
    ephemeral_dead = {
        row.digest for row in rows
        if row.ephemeral and mt.is_manifest_like(row.media_type) and row.digest not in live_held
    }
    clock.lap("ledger_read")

    # 2. Untag ephemeral manifests whose build is over.
    entries = store.index_entries()  # a torn index.json raises: abort
    dropped = [e for e in entries if str(e.digest) in ephemeral_dead]
    if dropped:
        report.untagged = [f"{e.ref_name or ''}@{e.digest}" for e in dropped]
        if not dry_run:
            entries = store.update_index(lambda es: [e for e in es if str(e.digest) not in ephemeral_dead])
        else:
            entries = [e for e in entries if str(e.digest) not in ephemeral_dead]

    # 3. Roots: every entry but the referrer tags, which live while their subject does.
    layout = str(store.path)
    tagged = referrer_tags(layout, [(e.ref_name, str(e.digest), e.media_type) for e in entries])
    conditional = {(t.name, t.digest) for t in tagged}
    roots: list[tuple[str, str | None]] = [
        (str(e.digest), e.media_type) for e in entries if (e.ref_name, str(e.digest)) not in conditional
    ]
    roots += [(d, row_of[d].media_type if d in row_of else None) for d in live_held]
    roots += [(row.digest, row.media_type) for row in rows if row.role == ROLE_CACHE and not row.ephemeral]
    roots += cache_roots(sc.cache_path)

    # 4. Mark, then one scan of blobs/ (names only) for the referrers of what is marked.
    marked: set[str] = set()
    manifests_seen: set[str] = set()
    _mark(layout, roots, marked, manifests_seen, row_of, edges)
    blobs, _foreign = scan_blobs(layout)
    orphaned = _mark_referrers(layout, blobs, marked, manifests_seen, row_of, edges, tagged,
                               exclude=ephemeral_dead,
                               young=_young_subject(blobs, claimed_dead | ephemeral_dead, ts - grace))
    entries = _untag_orphaned_referrers(store, entries, orphaned, live_held, report, dry_run)
    clock.lap("mark")

    # 5. Sweep: stat and unlink the unreached blobs, several at a time (the unlinks wait on the disk),
    #    in inode order (freeing neighbouring inodes together dirties fewer metadata blocks).
    doomed = sorted((d for d in blobs if d not in marked), key=lambda d: blobs[d].inode())
    report.kept = len(blobs) - len(doomed)
    jobs = [(blobs[d].path, None if d in claimed_dead else ts - grace) for d in doomed]
    swept: list[str] = []
    gone: set[str] = set()
    for digest, outcome in zip(doomed, _run_removals(jobs, dry_run)):
        if outcome == _YOUNG:
            report.kept += 1
            report.kept_young += 1
        elif outcome == _GONE:
            gone.add(digest)
        elif isinstance(outcome, str):
            report.kept += 1
            report.errors.append(f"cannot remove {digest}: {outcome}")
        else:
            swept.append(digest)
            report.removed_blobs += 1
            report.removed_bytes += outcome
            row = row_of.get(digest)
            if (row is not None and mt.is_manifest_like(row.media_type)) or digest in manifests_seen:
                report.removed_manifests += 1
    report.removed = swept
    clock.lap("sweep")

    # 6. Temp files and work directories of finished builds; extracted build-image layers no image needs.
    _clean_temp(store.path / ".tmp", sc.work_path, dead, ts, tmp_ttl, report, dry_run)
    _sweep_rootfs(sc, store, ledger, [str(e.digest) for e in entries] + sorted(live_held), holds, live, report,
                  dry_run, tmp_ttl)

    report.expired_leases = sorted(lid for lid in dead if states[lid] != "released")
    remote = [r for r in all_ephemeral if _is_dead_remote(r, holds, live)]
    if dry_run:
        return remote

    # 7. Reconcile the ledger with what is on disk now (the scan is exact: writers are locked out),
    #    in one transaction.
    swept_set = set(swept)
    stale = [
        row.digest for row in rows
        if row.digest not in swept_set and row.digest not in live_held
        and (row.digest not in blobs or row.digest in gone)
    ]
    with ledger.batch():
        ledger.forget_many([(d, loc) for d in [*swept, *stale]])
        ledger.forget_orphan_edges()
        for digest in ephemeral_dead - swept_set:
            if digest in blobs and digest not in gone:
                ledger.set_ephemeral(digest, loc, False)  # still referenced: no longer ours to delete
        for lid in report.expired_leases:
            ledger.release(lid, now=ts)
        ledger.drop_holds(lid for lid in dead if not _has_remote_holds(lid, holds))
        ledger.delete_leases(
            row.id for row in leases
            if row.id in dead and (row.released or ts) < ts - LEASE_RETENTION
        )
    report.forgotten_rows = len(swept) + len(stale)
    clock.lap("ledger_write")
    return remote


class _Phases:
    """Seconds spent in each phase, into ``report.phases`` (bench/gc prints them)."""

    def __init__(self, report: GCReport):
        self.report, self.last = report, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.report.phases[name] = round(now - self.last, 4)
        self.last = now


UNLINK_THREADS = 16
"""Unlinks run this many at a time: each mostly waits on the filesystem journal, not the CPU."""
_POOL_MIN = 64
_YOUNG, _GONE = -1, -2


def _remove(job: tuple[str, float | None], dry_run: bool = False) -> int | str:
    """Stat and unlink one blob: its size, ``_YOUNG`` (modified after the cutoff: kept), ``_GONE``,
    or an error message (the blob is kept and reported)."""
    path, cutoff = job
    try:
        st = os.stat(path)
        if cutoff is not None and st.st_mtime > cutoff:
            return _YOUNG
        if not dry_run:
            os.unlink(path)
        return st.st_size
    except FileNotFoundError:
        return _GONE
    except OSError as exc:
        return exc.strerror or str(exc)


def _run_removals(jobs: list[tuple[str, float | None]], dry_run: bool) -> list[int | str]:
    if dry_run or len(jobs) < _POOL_MIN:
        return [_remove(job, dry_run) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor  # only a large sweep pays for the import

    with ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="ocibuild-gc") as pool:
        return list(pool.map(_remove, jobs, chunksize=32))


def _has_remote_holds(lease_id: str, holds: Iterable[tuple[str, str, str]]) -> bool:
    return any(lid == lease_id and not is_layout_location(loc) for lid, _, loc in holds)


def _is_dead_remote(row: ObjectRow, holds: list[tuple[str, str, str]], live: set[str]) -> bool:
    if is_layout_location(row.location) or not mt.is_manifest_like(row.media_type):
        return False
    digest = str(row.digest)
    return not any(lid in live and d == digest and loc == row.location for lid, d, loc in holds)


class _Doc:
    """The parts of a manifest or index GC needs, from plain JSON (no model objects: GC reads many)."""

    __slots__ = ("media_type", "children", "subject")

    def __init__(self, media_type: str | None, children: list[tuple[str, str | None]], subject: str | None):
        self.media_type, self.children, self.subject = media_type, children, subject


def _desc(value: Any) -> tuple[str, str | None]:
    if not isinstance(value, dict) or not is_digest(value.get("digest")):
        raise ManifestError("descriptor without a valid digest")
    media_type = value.get("mediaType")
    return value["digest"], media_type if isinstance(media_type, str) else None


def _parse_doc(raw: bytes) -> _Doc:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ManifestError("not a schemaVersion 2 manifest or index")
    children: list[tuple[str, str | None]] = []
    if "manifests" in doc:
        children += [_desc(d) for d in doc["manifests"] or ()]
    elif "config" in doc:
        children.append(_desc(doc["config"]))
        children += [_desc(d) for d in doc.get("layers") or ()]
    else:
        raise ManifestError("neither a manifest nor an index")
    subject = _desc(doc["subject"])[0] if doc.get("subject") is not None else None
    media_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else None
    return _Doc(media_type, children, subject)


def _matches(digest: str, raw: bytes) -> bool:
    """Whether ``raw`` hashes to ``digest`` (digests of algorithms ocibuild cannot compute pass)."""
    algorithm, _, encoded = digest.partition(":")
    if algorithm not in _VERIFIABLE:
        return True
    return hashlib.new(algorithm, raw).hexdigest() == encoded


_VERIFIABLE = frozenset({"sha256", "sha512"})


def _read_small(path: str) -> bytes | None:
    """A file's bytes if it exists and may be a manifest (small, starts like JSON), else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_MANIFEST_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, max(size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_manifest(layout: str, digest: str, *, strict: bool) -> _Doc | None:
    """Parse a local manifest or index; None when absent. ``strict``: unreadable content aborts GC."""
    path = blob_file(layout, digest)
    try:
        raw = _read_small(path)
        if raw is None:
            if strict and os.path.exists(path):
                raise ManifestError("over the manifest size limit")
            return None
        if not _matches(digest, raw):
            raise ManifestError("content does not match its digest")
        return _parse_doc(raw)
    except (OSError, OCIBuildError) as exc:
        if strict:
            raise Abort(f"manifest {digest} is unreadable ({one_line(exc)}); run ocibuild fsck") from None
        return None


def _mark(
    layout: str,
    roots: Iterable[tuple[str, str | None]],
    marked: set[str],
    manifests_seen: set[str],
    row_of: dict[str, ObjectKey],
    edges: dict[str, list[str]],
) -> None:
    queue: deque[tuple[str, str | None]] = deque(roots)
    while queue:
        digest, media_type = queue.popleft()
        if digest in marked:
            continue
        if not is_digest(digest):
            raise Abort(f"a root or ledger edge names an invalid digest {digest!r}; run ocibuild fsck")
        marked.add(digest)
        for child in edges.get(digest, ()):
            queue.append((child, row_of[child].media_type if child in row_of else None))
        if not mt.is_manifest_like(media_type):
            row = row_of.get(digest)
            media_type = row.media_type if row is not None else media_type
        if mt.is_manifest_like(media_type):
            doc = _read_manifest(layout, digest, strict=True)
        elif not media_type and looks_like_json(blob_file(layout, digest)):
            doc = _read_manifest(layout, digest, strict=False)  # a held digest of unknown type
        else:
            continue
        if doc is None:
            continue  # lives elsewhere (a registry): its children are not ours to keep
        manifests_seen.add(digest)
        queue.extend(doc.children)


def _mark_referrers(
    layout: str,
    blobs: dict[str, os.DirEntry[str]],
    marked: set[str],
    manifests_seen: set[str],
    row_of: dict[str, ObjectKey],
    edges: dict[str, list[str]],
    tagged: list[ReferrerTag],
    *,
    exclude: set[str],
    young: Callable[[str], bool] = lambda _d: False,
) -> list[ReferrerTag]:
    """Keep every local manifest and every referrer tag whose subject is marked (to a fixpoint:
    referrers of referrers), and the referrer tags of a ``young`` subject (the grace period: the
    tool writing it may be about to tag it); returns the referrer tags left, whose subject is gone."""
    by_subject: dict[str, list[tuple[str, str | None]]] = {}
    for digest, entry in blobs.items():
        if digest in marked or digest in exclude:
            continue
        row = row_of.get(digest)
        if row is not None and row.media_type and not mt.is_manifest_like(row.media_type):
            continue  # the ledger knows it is a config or a layer
        try:
            raw = _read_small(entry.path)
        except OSError:
            continue
        if raw is None or raw.lstrip()[:1] != b"{" or b'"schemaVersion"' not in raw:
            continue
        if b'"subject"' not in raw:
            if b'"manifests"' in raw or b'"layers"' in raw:
                manifests_seen.add(digest)  # counted in the report; nothing to follow
            continue
        try:
            if not _matches(digest, raw):
                continue
            doc = _parse_doc(raw)
        except OCIBuildError:
            continue
        manifests_seen.add(digest)
        if doc.subject is not None:
            by_subject.setdefault(doc.subject, []).append((digest, doc.media_type))

    def keep(tag: ReferrerTag) -> None:
        _mark(layout, [(tag.digest, tag.media_type)], marked, manifests_seen, row_of, edges)

    def live(subject: str) -> bool:
        return subject in marked or young(subject)

    pending = True
    while pending:
        pending = False
        for subject in [s for s in by_subject if s in marked]:
            found = [r for r in by_subject.pop(subject) if r[0] not in marked]
            if found:
                _mark(layout, found, marked, manifests_seen, row_of, edges)
                pending = True
        before = len(tagged)
        tagged = live_referrer_tags(tagged, live, keep)
        pending = pending or len(tagged) != before
    return tagged


def _young_subject(blobs: dict[str, os.DirEntry[str]], dead: set[str], cutoff: float) -> Callable[[str], bool]:
    """Whether a subject is a local blob modified after ``cutoff`` that no dead lease claims."""

    def young(digest: str) -> bool:
        entry = blobs.get(digest)
        if entry is None or digest in dead:
            return False
        try:
            return entry.stat().st_mtime > cutoff
        except OSError:
            return False

    return young


def _untag_orphaned_referrers(
    store: Any, entries: list[Any], orphaned: list[ReferrerTag], live_held: set[str], report: GCReport,
    dry_run: bool,
) -> list[Any]:
    """Remove the referrer tags whose subject is gone (not those a live lease holds), before the
    sweep: ``index.json`` never names a blob the sweep removed. Returns the entries left."""
    doomed = {(t.name, t.digest) for t in orphaned if t.digest not in live_held}
    if not doomed:
        return entries
    report.untagged_referrers = sorted(f"{name}@{digest}" for name, digest in doomed)

    def keep(es: list[Any]) -> list[Any]:
        return [e for e in es if (e.ref_name, str(e.digest)) not in doomed]

    return keep(entries) if dry_run else store.update_index(keep)


def _writer_gone(name: str) -> bool:
    """A ``blob-<pid>-…`` temp file whose writer process no longer runs (it was killed mid-write)."""
    from ocibuild.ledger.lease import _pid_alive
    from ocibuild.store.layout import TEMP_PREFIX

    pid = name[len(TEMP_PREFIX):].split("-", 1)[0] if name.startswith(TEMP_PREFIX) else ""
    return pid.isdigit() and not _pid_alive(int(pid))


def _clean_temp(
    tmp: Path, work: Path, dead: set[str], ts: float, ttl: float, report: GCReport, dry_run: bool
) -> None:
    """Temp entries older than the TTL or named after a finished lease; work dirs of finished leases."""
    candidates = [
        Path(entry.path) for entry, age in temp_entries(tmp, ts)
        if age > ttl or any(entry.name.startswith(lid) for lid in dead) or _writer_gone(entry.name)
    ]
    if work.is_dir():
        candidates += [Path(e.path) for e in os.scandir(work) if e.name in dead]
    for path in candidates:
        report.removed_temp.append(str(path))
        if dry_run:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _sweep_rootfs(sc: Scratch, store: Any, ledger: Ledger, roots: list[str], holds: list[tuple[str, str, str]], live: set[str],
                  report: GCReport, dry_run: bool, tmp_ttl: float) -> None:
    """Remove extracted layers (``cnb.rootfs``) that no image reachable in the layout lists and no
    live lease holds. An unreadable manifest or config keeps them all (biased to leaking)."""
    from ocibuild.cnb.rootfs import ExtractedLayers, needed_diff_ids

    layers = ExtractedLayers(sc.root)
    if not layers.root.is_dir():
        return
    try:
        keep = needed_diff_ids(store.path, roots)
    except (OSError, ValueError) as exc:
        report.errors.append(f"extracted layers kept: {one_line(exc)}")
        return
    keep |= {d for lid, d, loc in holds if lid in live and loc == layers.location}
    report.removed_rootfs = layers.sweep(keep, tmp_ttl=tmp_ttl, dry_run=dry_run)
    if not dry_run:
        ledger.forget_many([(d, layers.location) for d in report.removed_rootfs if ":" in d and "/" not in d])


# -- registries --------------------------------------------------------------------------------
def _delete_remote(
    ledger: Ledger, rows: list[ObjectRow], report: GCReport, dry_run: bool, options: Any
) -> None:
    """Delete by digest the ephemeral manifests finished builds pushed to registries.

    ``options`` may be a zero-argument factory, called only when there is something to delete."""
    if not rows:
        return
    if dry_run:
        report.registry_deleted += [f"{r.location}@{r.digest}" for r in rows]
        return
    if callable(options):
        options = options()
    from ocibuild.oci.reference import parse_docker_reference
    from ocibuild.store.registry import get_registry_store

    done: set[str] = set()
    for row in rows:
        name = f"{row.location}@{row.digest}"
        if name in done:
            continue  # a referrer of an ephemeral manifest deleted above
        try:
            store = get_registry_store(parse_docker_reference(name), options)
            recorded = {key.digest for key in ledger.object_keys(row.location)}
            # Its referrers first: should one fail, the subject stays ephemeral and the next gc retries.
            for digest in [*_remote_referrers(store, str(row.digest), recorded), str(row.digest)]:
                if f"{row.location}@{digest}" in done:
                    continue
                try:
                    store.delete(digest)
                except NotFound:
                    pass  # already gone: that is what we wanted
                ledger.forget(digest, row.location)
                report.registry_deleted.append(f"{row.location}@{digest}")
                done.add(f"{row.location}@{digest}")
        except Exception as exc:  # reported, retried by the next gc; never fatal
            report.errors.append(f"cannot delete {name}: {one_line(exc)}")


def _remote_referrers(store: Any, digest: str, recorded: set[str]) -> list[str]:
    """What refers to ``digest`` in a registry repository (the referrers API or the fallback index,
    the fallback index itself, cosign's ``.sig`` manifest), transitively, deepest first; only what
    the ledger records there: ocibuild deletes nothing it did not write."""
    from ocibuild.oci.descriptor import Descriptor
    from ocibuild.oci.digest import Digest
    from ocibuild.store.referrers import fallback_tag, signature_tag

    found: list[str] = []
    queue = [digest]
    while queue:
        subject = Digest.parse(queue.pop())
        refs = [str(d.digest) for d in store.referrers(Descriptor(mt.OCI_MANIFEST, subject, 0))]
        for tag in (fallback_tag(subject), signature_tag(subject)):
            try:
                refs.append(str(store.resolve(tag).digest))
            except NotFound:
                pass
        for ref in refs:
            if ref in recorded and ref != digest and ref not in found:
                found.append(ref)
                queue.append(ref)
    return found[::-1]


__all__ = ["DEFAULT_GRACE", "GCReport", "collect", "release_and_collect"]
