"""fsck: check the scratch layout, the ledger and the blobs against each other.

What is checked: every ``index.json`` entry names a present, parseable manifest of the announced
size and digest, and no referrer tag outlives its subject (what GC would untag, see
``ocibuild.ledger.referrers``); every blob reachable from a root is present (or the ledger records a registry
it can be fetched from) with the announced size; manifests and configs hash to their file names
(``full`` re-hashes every blob); ledger rows point at blobs that exist; no lease expired without
being released; no stale temp files. Runs under the layout's shared writer lock so a concurrent GC
cannot produce false alarms, while builds keep writing.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from ocibuild.errors import ManifestError, OCIBuildError
from ocibuild.ledger.db import Ledger
from ocibuild.ledger.scan import Abort, cache_roots, looks_like_json, scan_blobs, temp_entries
from ocibuild.ledger.lease import DEFAULT_TTL, LIVE, lease_state
from ocibuild.ledger.referrers import ReferrerTag, live_referrer_tags, referrer_tags, subject_chain_live
from ocibuild.ledger.scratch import Scratch, layout_location
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import CHUNK, Digest, Hasher
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, parse_manifest


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    checked_blobs: int = 0
    checked_manifests: int = 0
    rehashed: int = 0
    full: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _hash_file(path: os.PathLike[str] | str, algorithm: str) -> tuple[Digest, int]:
    hasher = Hasher(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.digest(), hasher.size


def check(
    scratch: "Scratch | str | os.PathLike[str] | None" = None,
    *,
    full: bool = False,
    tmp_ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> FsckReport:
    sc = Scratch.resolve(scratch)
    report = FsckReport(full=full)
    ts = time.time() if now is None else now
    ledger: Ledger | None = None
    if sc.ledger_path.exists():
        try:
            ledger = Ledger(sc.ledger_path)
            ledger.leases()
        except OCIBuildError as exc:
            report.problems.append(f"ledger: {exc}")
            ledger = None
    try:
        live: set[str] = set()
        if ledger is not None:
            for row in ledger.leases(include_released=False):
                state = lease_state(row, now=ts)
                if state == LIVE:
                    live.add(row.id)
                else:
                    report.problems.append(f"lease {row.id} (pid {row.pid} on {row.host}) is {state} but not released; run ocibuild gc")
        if (sc.layout_path / "oci-layout").exists():
            from ocibuild.store.layout import LayoutStore

            try:
                store = LayoutStore(sc.layout_path)
            except OCIBuildError as exc:
                report.problems.append(str(exc))
                return report
            with store.writer_lock():
                _check_layout(sc, store, ledger, live, report, full, tmp_ttl, ts)
        _check_rootfs(sc, ledger, live, report, tmp_ttl)
    finally:
        if ledger is not None:
            ledger.close()
    return report


def _check_layout(
    sc: Scratch, store: Any, ledger: Ledger | None, live: set[str], report: FsckReport,
    full: bool, tmp_ttl: float, ts: float,
) -> None:
    loc = layout_location(store.path)
    rows = {r.digest: r for r in ledger.query(location=loc)} if ledger is not None else {}
    live_held = {d for lid, d, _ in (ledger.holds(loc) if ledger else []) if lid in live}
    verified: set[Digest] = set()

    def has_source(digest: Digest) -> bool:
        return ledger is not None and ledger.has_source(digest)

    def verify(digest: Digest, path: Any, what: str) -> bool:
        if digest in verified or not digest.supported:
            return True
        got, _ = _hash_file(path, digest.algorithm)
        report.rehashed += 1
        verified.add(digest)
        if got != digest:
            report.problems.append(f"{what} {digest}: content hashes to {got} (corrupt blob)")
            return False
        return True

    try:
        entries = store.index_entries()
    except OCIBuildError as exc:
        report.problems.append(f"index.json: {exc}")
        entries = []

    queue: deque[tuple[Descriptor, str]] = deque()
    tagged = {(t.name, t.digest): t for t in referrer_tags(
        str(store.path), [(e.ref_name, str(e.digest), e.media_type) for e in entries])}
    conditional: list[tuple[ReferrerTag, Descriptor]] = []
    for entry in entries:
        if (entry.ref_name, str(entry.digest)) in tagged:  # checked below, while its subject is live
            conditional.append((tagged[(entry.ref_name, str(entry.digest))], entry))
            continue
        label = f"index.json entry {entry.ref_name or '(untagged)'}"
        if not store.blob_path(entry.digest).exists() and not has_source(entry.digest):
            report.problems.append(f"{label}: manifest {entry.digest} is missing")
            continue
        queue.append((entry, label))
    for digest in live_held:
        row = rows.get(digest)
        if row is not None and row.media_type:
            queue.append((Descriptor(row.media_type, digest, row.size), f"lease {row.lease_id}"))
    try:
        queue.extend(
            (Descriptor(media_type or mt.OCI_MANIFEST, Digest.parse(d), 0), "build cache")
            for d, media_type in cache_roots(sc.cache_path)
        )
    except Abort as exc:
        report.problems.append(str(exc))

    seen: set[Digest] = set()

    def walk() -> None:
        while queue:
            desc, parent = queue.popleft()
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            path = store.blob_path(desc.digest)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                if not has_source(desc.digest) and not desc.urls and desc.data is None:
                    report.problems.append(f"blob {desc.digest} referenced by {parent} is missing and has no recorded source")
                continue
            report.checked_blobs += 1
            if desc.size and size != desc.size:
                report.problems.append(f"blob {desc.digest}: {size} bytes on disk, {desc.size} announced by {parent}")
                continue
            if mt.is_manifest_like(desc.media_type):
                if size > MAX_MANIFEST_BYTES:
                    report.problems.append(f"manifest {desc.digest}: {size} bytes, over the manifest size limit")
                    continue
                if not verify(desc.digest, path, "manifest"):
                    continue
                try:
                    manifest = parse_manifest(path.read_bytes(), desc.media_type)
                except ManifestError as exc:
                    report.problems.append(f"manifest {desc.digest} ({parent}) does not parse: {exc}")
                    continue
                report.checked_manifests += 1
                label = f"manifest {desc.digest.short()}"
                queue.extend((child, label) for child in manifest.children())
            elif desc.media_type in mt.CONFIG_TYPES or (size <= MAX_MANIFEST_BYTES and looks_like_json(path)) or full:
                verify(desc.digest, path, "blob")

    def live(digest: str) -> bool:
        return subject_chain_live(str(store.path), digest, lambda d: Digest.parse(d) in seen)

    def keep(tag: ReferrerTag) -> None:  # a referrer tag whose subject is live is checked like any root
        queue.extend((e, f"index.json entry {tag.name}") for t, e in conditional if t is tag)
        walk()

    walk()
    for tag in live_referrer_tags([t for t, _ in conditional], live, keep):
        if Digest.parse(tag.digest) not in live_held and not _young(store.blob_path(Digest.parse(tag.subject)), ts):
            report.problems.append(f"referrer tag {tag.name} outlives its subject {tag.subject}; run ocibuild gc")

    # Every blob file: named like a digest; recorded small JSON and (with full) everything re-hashed.
    found, foreign = scan_blobs(store.path)
    names = {Digest.parse(d): entry.path for d, entry in found.items()}
    for digest, path in names.items():
        row = rows.get(digest)
        if full or (row is not None and (mt.is_manifest_like(row.media_type) or row.media_type in mt.CONFIG_TYPES)):
            verify(digest, path, "blob")
    report.problems += [f"foreign file in blobs/: {name}" for name in foreign]

    # Ledger rows against the disk (rows of builds in flight may precede their blob).
    for digest, row in rows.items():
        if digest in names:
            try:
                size = store.blob_path(digest).stat().st_size
            except FileNotFoundError:
                continue
            if row.size and size != row.size:
                report.problems.append(f"ledger row {digest}: size {row.size}, blob has {size} bytes")
        elif digest not in live_held:
            report.problems.append(f"ledger row for missing blob {digest} ({row.role}, lease {row.lease_id})")

    for entry, age in temp_entries(store.path / ".tmp", ts):
        if age > tmp_ttl:
            report.problems.append(f"stale temp file .tmp/{entry.name} ({int(age)} s old); run ocibuild gc")


def _young(path: Any, ts: float) -> bool:
    """A subject GC would still spare its referrer tags for (written within the grace period)."""
    from ocibuild.ledger.gc import DEFAULT_GRACE

    try:
        return path.stat().st_mtime > ts - DEFAULT_GRACE
    except OSError:
        return False


def _check_rootfs(sc: Scratch, ledger: Ledger | None, live: set[str], report: FsckReport, tmp_ttl: float) -> None:
    """The extracted build-image layers (``cnb.rootfs``): named by diffID, no stale unfinished
    extraction, and a directory for every one the ledger records (unless a build is making it)."""
    import re

    from ocibuild.cnb.rootfs import ExtractedLayers

    layers = ExtractedLayers(sc.root)
    entries = layers.entries()
    for diff_id, path in entries.items():
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", diff_id):
            report.problems.append(f"foreign entry in rootfs/: {path.name}")
    for path, age in layers.temp_dirs():
        if age > tmp_ttl:
            report.problems.append(f"unfinished layer extraction {path.name} ({int(age)} s old); run ocibuild gc")
    if ledger is None:
        return
    held = {d for lid, d, loc in ledger.holds(layers.location) if lid in live}
    for row in ledger.query(location=layers.location):
        if str(row.digest) not in entries and row.digest not in held:
            report.problems.append(f"ledger row for missing extracted layer {row.digest} (lease {row.lease_id})")

