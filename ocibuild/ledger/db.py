"""The ledger: one SQLite file recording every digest ocibuild creates, where it lives and who made it.

The ledger is the authority GC trusts (containerd's metadata DB, scaled down): a row is written
*before* its blob becomes visible, so a blob without a row was not made by a build in flight.
Several processes share one ledger: WAL journal, a busy timeout and short ``BEGIN IMMEDIATE``
transactions; each thread (and each forked process) gets its own connection.

Tables: ``objects`` (digest, location → media type, size, creating lease, role, ephemeral, times),
``holds`` (which leases keep which objects alive; a blob shared by two builds is held by both),
``edges`` (parent → child digests), ``sources`` (digest → registry repository it can be mounted or
fetched from) and ``leases``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from ocibuild.errors import StoreError
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

# Roles ocibuild records (free text in the table; these are the ones the code uses).
ROLE_EPHEMERAL_BUILDER = "ephemeral-builder"
ROLE_BUILDER = "builder"
ROLE_APP_IMAGE = "app-image"
ROLE_CACHE = "cache"
ROLE_LAYER = "layer"
ROLE_CONFIG = "config"
ROLE_MANIFEST = "manifest"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest      TEXT NOT NULL,
    location    TEXT NOT NULL,
    media_type  TEXT NOT NULL DEFAULT '',
    size        INTEGER NOT NULL DEFAULT 0,
    lease_id    TEXT,
    role        TEXT NOT NULL DEFAULT 'layer',
    ephemeral   INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    PRIMARY KEY (digest, location)
);
CREATE INDEX IF NOT EXISTS objects_lease ON objects(lease_id);
CREATE INDEX IF NOT EXISTS objects_location ON objects(location);
CREATE TABLE IF NOT EXISTS holds (
    lease_id    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    location    TEXT NOT NULL,
    PRIMARY KEY (lease_id, digest, location)
);
CREATE INDEX IF NOT EXISTS holds_object ON holds(digest, location);
CREATE TABLE IF NOT EXISTS edges (
    parent      TEXT NOT NULL,
    child       TEXT NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE TABLE IF NOT EXISTS sources (
    digest      TEXT NOT NULL,
    location    TEXT NOT NULL,
    created     REAL NOT NULL,
    PRIMARY KEY (digest, location)
);
CREATE TABLE IF NOT EXISTS leases (
    id          TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    proc_start  INTEGER,
    created     REAL NOT NULL,
    heartbeat   REAL NOT NULL,
    expires_at  REAL NOT NULL,
    released    REAL
);
"""


@dataclass(frozen=True)
class ObjectRow:
    """One ``objects`` row: a digest ocibuild created at one location."""

    digest: Digest
    location: str
    media_type: str
    size: int
    lease_id: str | None
    role: str
    ephemeral: bool
    created: float
    updated: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["digest"] = str(self.digest)
        return out


class ObjectKey(NamedTuple):
    """What GC needs of an ``objects`` row at one location, unparsed (``digest`` is ``"alg:encoded"``)."""

    digest: str
    media_type: str
    lease_id: str | None
    role: str
    ephemeral: bool


@dataclass(frozen=True)
class LeaseRow:
    """One ``leases`` row. Whether it is still live is decided by ``ocibuild.ledger.lease.lease_state``."""

    id: str
    pid: int
    host: str
    proc_start: int | None
    created: float
    heartbeat: float
    expires_at: float
    released: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _object(row: sqlite3.Row) -> ObjectRow:
    return ObjectRow(
        Digest.parse(row["digest"]), row["location"], row["media_type"], row["size"], row["lease_id"],
        row["role"], bool(row["ephemeral"]), row["created"], row["updated"],
    )


def _lease(row: sqlite3.Row) -> LeaseRow:
    return LeaseRow(
        row["id"], row["pid"], row["host"], row["proc_start"], row["created"], row["heartbeat"],
        row["expires_at"], row["released"],
    )


class Ledger:
    """The SQLite ledger at ``path`` (created on first use). Safe across threads and processes."""

    def __init__(self, path: "str | os.PathLike[str]", *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._init_schema()

    # -- connections and transactions -------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")  # the row must survive before the blob appears
        except sqlite3.Error as exc:
            raise StoreError(f"ledger {self.path} cannot be opened: {exc}") from None
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._local.depth = 0
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _init_schema(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"ledger {self.path} has schema {version}; this ocibuild knows {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                with self._write() as c:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        c.execute(statement)
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"ledger {self.path} is unreadable: {exc}") from None
        except OSError as exc:
            raise StoreError(f"ledger {self.path} cannot be created: {exc.strerror}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction, taken up front (``IMMEDIATE``) so it never deadlocks on upgrade.

        Inside ``batch()`` it joins the outer transaction (one commit, one fsync for all of them)."""
        conn = self._conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"ledger {self.path} is unusable: {exc}") from None
        self._local.depth = 1
        try:
            yield conn
        except BaseException:
            self._local.depth = 0
            conn.execute("ROLLBACK")
            raise
        else:
            self._local.depth = 0
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"ledger {self.path}: cannot commit: {exc}") from None

    @contextmanager
    def batch(self) -> Iterator["Ledger"]:
        """Every write inside is one transaction: all of it is recorded, or none (GC's reconciliation)."""
        with self._write():
            yield self

    @contextmanager
    def snapshot(self) -> Iterator["Ledger"]:
        """A read transaction: every query inside sees the same state (GC marks from one snapshot)."""
        conn = self._conn()
        self._run(conn, "BEGIN DEFERRED")
        try:
            # A deferred transaction takes its snapshot at the first read; read now.
            self._run(conn, "SELECT count(*) FROM leases")
            yield self
        finally:
            conn.execute("COMMIT")

    def _run(self, conn: sqlite3.Connection, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"ledger {self.path} is unreadable: {exc}") from None

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self._run(self._conn(), sql, args)

    def _tuples(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Like ``_read`` but plain tuples (no ``sqlite3.Row``): for the bulk reads of GC."""
        try:
            cur = self._conn().cursor()
            cur.row_factory = None
            return cur.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"ledger {self.path} is unreadable: {exc}") from None

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects ----------------------------------------------------------------------------
    def record(
        self,
        desc: Descriptor | Digest | str,
        *,
        location: str,
        lease_id: str | None = None,
        role: str = ROLE_LAYER,
        ephemeral: bool = False,
        media_type: str | None = None,
        size: int | None = None,
        now: float | None = None,
    ) -> None:
        """Record that ``desc`` exists (or is about to) at ``location``, held by ``lease_id``.

        Recording again keeps the first creator and creation time; ``ephemeral`` only ever goes
        from true to false (content someone recorded as permanent is never turned ephemeral).
        """
        digest, media_type, size = _describe(desc, media_type, size)
        ts = time.time() if now is None else now
        with self._write() as c:
            c.execute(
                """INSERT INTO objects (digest, location, media_type, size, lease_id, role, ephemeral, created, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (digest, location) DO UPDATE SET
                     media_type = CASE WHEN excluded.media_type != '' THEN excluded.media_type ELSE objects.media_type END,
                     size = CASE WHEN excluded.size > 0 THEN excluded.size ELSE objects.size END,
                     lease_id = COALESCE(objects.lease_id, excluded.lease_id),
                     role = CASE WHEN objects.ephemeral = 1 AND excluded.ephemeral = 0 THEN excluded.role ELSE objects.role END,
                     ephemeral = MIN(objects.ephemeral, excluded.ephemeral),
                     updated = excluded.updated""",
                (str(digest), location, media_type, size, lease_id, role, int(ephemeral), ts, ts),
            )
            if lease_id is not None:
                c.execute(
                    "INSERT OR IGNORE INTO holds (lease_id, digest, location) VALUES (?, ?, ?)",
                    (lease_id, str(digest), location),
                )

    def hold(self, lease_id: str, digests: Iterable[Digest | str], location: str) -> None:
        """Keep existing content alive for a lease without claiming to have created it."""
        with self._write() as c:
            c.executemany(
                "INSERT OR IGNORE INTO holds (lease_id, digest, location) VALUES (?, ?, ?)",
                [(lease_id, str(d), location) for d in digests],
            )

    def holders(self, digest: Digest | str, location: str) -> list[str]:
        rows = self._read("SELECT lease_id FROM holds WHERE digest = ? AND location = ?", (str(digest), location))
        return [r["lease_id"] for r in rows]

    def holds(self, location: str | None = None) -> list[tuple[str, Digest, str]]:
        """Every (lease id, digest, location) hold, optionally at one location."""
        sql, args = "SELECT lease_id, digest, location FROM holds", []
        if location is not None:
            sql += " WHERE location = ?"
            args.append(location)
        return [(r["lease_id"], Digest.parse(r["digest"]), r["location"]) for r in self._read(sql, args)]

    def hold_keys(self, location: str | None = None) -> list[tuple[str, str, str]]:
        """``holds()`` with digests as plain strings (GC reads every hold; it builds no objects)."""
        sql, args = "SELECT lease_id, digest, location FROM holds", []
        if location is not None:
            sql += " WHERE location = ?"
            args.append(location)
        return self._tuples(sql, args)

    def drop_holds(self, lease_ids: Iterable[str]) -> None:
        ids = list(lease_ids)
        if not ids:
            return
        with self._write() as c:
            c.executemany("DELETE FROM holds WHERE lease_id = ?", [(i,) for i in ids])

    def set_ephemeral(self, digest: Digest | str, location: str, ephemeral: bool) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE objects SET ephemeral = ?, updated = ? WHERE digest = ? AND location = ?",
                (int(ephemeral), time.time(), str(digest), location),
            )

    def query(
        self,
        role: str | None = None,
        lease: str | None = None,
        ephemeral: bool | None = None,
        location: str | None = None,
        digest: Digest | str | None = None,
    ) -> list[ObjectRow]:
        """Rows matching every filter given, oldest first."""
        clauses, args = [], []
        for column, value in (("role", role), ("lease_id", lease), ("location", location)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if ephemeral is not None:
            clauses.append("ephemeral = ?")
            args.append(int(ephemeral))
        if digest is not None:
            clauses.append("digest = ?")
            args.append(str(digest))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_object(r) for r in self._read(f"SELECT * FROM objects{where} ORDER BY created, digest", args)]

    def object_keys(self, location: str) -> list[ObjectKey]:
        """The rows at ``location`` as plain tuples: GC reads them all and parses nothing."""
        rows = self._tuples(
            "SELECT digest, media_type, lease_id, role, ephemeral FROM objects WHERE location = ?", (location,)
        )
        return [ObjectKey(d, m, lid, r, bool(e)) for d, m, lid, r, e in rows]

    def forget(self, digest: Digest | str, location: str) -> None:
        self.forget_many([(digest, location)])

    def forget_many(self, items: Iterable[tuple[Digest | str, str]]) -> None:
        """Delete the rows (and holds) of objects that no longer exist at a location."""
        pairs = [(str(d), loc) for d, loc in items]
        if not pairs:
            return
        with self._write() as c:
            c.executemany("DELETE FROM objects WHERE digest = ? AND location = ?", pairs)
            c.executemany("DELETE FROM holds WHERE digest = ? AND location = ?", pairs)

    # -- edges and sources --------------------------------------------------------------------
    def record_edges(self, parent: Digest | str, children: Iterable[Digest | str]) -> None:
        with self._write() as c:
            c.executemany(
                "INSERT OR IGNORE INTO edges (parent, child) VALUES (?, ?)",
                [(str(parent), str(child)) for child in children],
            )

    def children(self, parent: Digest | str) -> list[Digest]:
        rows = self._read("SELECT child FROM edges WHERE parent = ? ORDER BY child", (str(parent),))
        return [Digest.parse(r["child"]) for r in rows]

    def edges(self) -> dict[Digest, list[Digest]]:
        out: dict[Digest, list[Digest]] = {}
        for r in self._read("SELECT parent, child FROM edges"):
            out.setdefault(Digest.parse(r["parent"]), []).append(Digest.parse(r["child"]))
        return out

    def edge_keys(self) -> dict[str, list[str]]:
        """``edges()`` with digests as plain strings."""
        out: dict[str, list[str]] = {}
        for parent, child in self._tuples("SELECT parent, child FROM edges"):
            out.setdefault(parent, []).append(child)
        return out

    def forget_edges(self, parents: Iterable[Digest | str]) -> None:
        with self._write() as c:
            c.executemany("DELETE FROM edges WHERE parent = ?", [(str(p),) for p in parents])

    def forget_orphan_edges(self) -> None:
        """Drop the edges of parents no location records any more."""
        with self._write() as c:
            c.execute("DELETE FROM edges WHERE parent NOT IN (SELECT digest FROM objects)")

    def record_source(self, digest: Digest | str, location: str) -> None:
        """``digest`` can be mounted or fetched from ``location`` (``host/repository``)."""
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO sources (digest, location, created) VALUES (?, ?, ?)",
                (str(digest), location, time.time()),
            )

    def sources(self, digest: Digest | str) -> list[str]:
        rows = self._read("SELECT location FROM sources WHERE digest = ? ORDER BY created, location", (str(digest),))
        return [r["location"] for r in rows]

    def has_source(self, digest: Digest | str) -> bool:
        return bool(self._read("SELECT 1 FROM sources WHERE digest = ? LIMIT 1", (str(digest),)))

    # -- leases -------------------------------------------------------------------------------
    def create_lease(
        self, lease_id: str, *, pid: int, host: str, proc_start: int | None, ttl: float, now: float | None = None
    ) -> LeaseRow:
        ts = time.time() if now is None else now
        with self._write() as c:
            c.execute(
                "INSERT INTO leases (id, pid, host, proc_start, created, heartbeat, expires_at, released)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (lease_id, pid, host, proc_start, ts, ts, ts + ttl),
            )
        return LeaseRow(lease_id, pid, host, proc_start, ts, ts, ts + ttl, None)

    def heartbeat(self, lease_id: str, ttl: float) -> bool:
        """Extend an unreleased lease; False when it is gone or already released."""
        ts = time.time()
        with self._write() as c:
            cur = c.execute(
                "UPDATE leases SET heartbeat = ?, expires_at = ? WHERE id = ? AND released IS NULL",
                (ts, ts + ttl, lease_id),
            )
            return cur.rowcount == 1

    def release(self, lease_id: str, now: float | None = None) -> None:
        ts = time.time() if now is None else now
        with self._write() as c:
            c.execute("UPDATE leases SET released = ? WHERE id = ? AND released IS NULL", (ts, lease_id))

    def lease(self, lease_id: str) -> LeaseRow | None:
        rows = self._read("SELECT * FROM leases WHERE id = ?", (lease_id,))
        return _lease(rows[0]) if rows else None

    def leases(self, *, include_released: bool = True) -> list[LeaseRow]:
        where = "" if include_released else " WHERE released IS NULL"
        return [_lease(r) for r in self._read(f"SELECT * FROM leases{where} ORDER BY created, id")]

    def delete_leases(self, lease_ids: Iterable[str]) -> None:
        lease_ids = list(lease_ids)
        with self._write() as c:
            c.executemany("DELETE FROM leases WHERE id = ?", [(i,) for i in lease_ids])
            c.executemany("DELETE FROM holds WHERE lease_id = ?", [(i,) for i in lease_ids])


def _describe(desc: Descriptor | Digest | str, media_type: str | None, size: int | None) -> tuple[Digest, str, int]:
    if isinstance(desc, Descriptor):
        return desc.digest, media_type or desc.media_type, desc.size if size is None else size
    digest = desc if isinstance(desc, Digest) else Digest.parse(desc)
    return digest, media_type or "", size or 0
