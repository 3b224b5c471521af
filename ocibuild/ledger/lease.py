"""Leases: every build holds one, so garbage collection never takes what a build in flight still needs.

A lease is a ledger row (id, pid, host, process start time, heartbeat, expiry). A background thread
extends the expiry while the process runs; leaving the ``with`` block releases it, whatever way
the block ends. A process that dies without releasing (SIGKILL, power loss) leaves a lease that
expires: on the same host as soon as its pid is gone (or reused by another process, which the
recorded start time reveals), elsewhere when its expiry passes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

from ocibuild.ledger.db import ROLE_CONFIG, ROLE_LAYER, LeaseRow, Ledger
from ocibuild.ledger.scratch import Scratch, layout_location
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest

log = logging.getLogger(__name__)

DEFAULT_TTL = 15 * 60.0

LIVE = "live"
RELEASED = "released"
EXPIRED = "expired"
DEAD = "dead"  # same host, process gone (or its pid now belongs to another process)


def hostname() -> str:
    return socket.gethostname()


def _probe(pid: int) -> tuple[str, int | None]:
    """(``running``|``gone``|``unknown``, start time in clock ticks since boot) from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return "gone", None
    except OSError:
        return "unknown", None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):
        return "gone", None  # a zombie runs nothing and will never heartbeat again
    try:
        return "running", int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return "unknown", None


def process_start_time(pid: int) -> int | None:
    """The start time of a running ``pid`` (field 22 of /proc/PID/stat), None if gone or unknown."""
    return _probe(pid)[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_state(row: LeaseRow, *, now: float | None = None, host: str | None = None) -> str:
    """``live``, ``released``, ``expired`` (expiry passed) or ``dead`` (same host, process gone).

    When the process cannot be inspected the lease counts as live until it expires (bias to leaking).
    """
    if row.released is not None:
        return RELEASED
    ts = time.time() if now is None else now
    if row.expires_at <= ts:
        return EXPIRED
    if row.host != (host or hostname()):
        return LIVE
    state, started = _probe(row.pid)
    if state == "gone":
        return DEAD
    if state == "running":
        if row.proc_start is not None and started != row.proc_start:
            return DEAD  # the pid now belongs to another process
        return LIVE
    return LIVE if _pid_alive(row.pid) else DEAD


def is_live(row: LeaseRow, *, now: float | None = None) -> bool:
    return lease_state(row, now=now) == LIVE


class Lease(AbstractContextManager["Lease"]):
    """A build's claim on everything it writes to the scratch layout (and pushes to registries).

    ``with Lease(scratch) as lease:`` creates the row and starts the heartbeat; exit releases it on
    success, exception or ``KeyboardInterrupt``. After release the lease's objects are no longer
    roots: the next GC keeps only what ``index.json`` tags or the cache still reach.
    """

    def __init__(
        self,
        ledger: "Ledger | Scratch | str | os.PathLike[str] | None" = None,
        *,
        ttl: float = DEFAULT_TTL,
        heartbeat_interval: float | None = None,
        lease_id: str | None = None,
    ):
        self._owns_ledger = not isinstance(ledger, Ledger)
        if isinstance(ledger, Ledger):
            self.ledger = ledger
        else:
            self.ledger = Scratch.resolve(ledger).open_ledger()
        self.ttl = float(ttl)
        self.heartbeat_interval = heartbeat_interval if heartbeat_interval is not None else max(self.ttl / 3, 0.05)
        self.id = lease_id or uuid.uuid4().hex
        self.row: LeaseRow | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.released = False

    # -- lifecycle ----------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        if self.row is not None:
            return self
        pid = os.getpid()
        self.row = self.ledger.create_lease(
            self.id, pid=pid, host=hostname(), proc_start=process_start_time(pid), ttl=self.ttl
        )
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.id[:8]}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                if not self.ledger.heartbeat(self.id, self.ttl):
                    log.warning("lease %s was released by someone else; its objects are no longer protected", self.id)
                    return
            except Exception as exc:  # a busy ledger must not kill the build; the next beat retries
                log.warning("lease %s: heartbeat failed: %s", self.id, exc)

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released; close the ledger if this lease opened it.
        Idempotent."""
        if self.released:
            return
        self.released = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            if self.row is not None:
                self.ledger.release(self.id)
        finally:
            if self._owns_ledger:
                self.ledger.close()  # its connections (this thread's and the heartbeat's), WAL checkpointed

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def active(self) -> bool:
        return self.row is not None and not self.released

    # -- recording ----------------------------------------------------------------------------
    def record(
        self, desc: Descriptor, *, location: str, role: str, ephemeral: bool = False
    ) -> None:
        """Record an object this build created at ``location`` (a layout path or ``host/repository``)."""
        self.ledger.record(desc, location=location, lease_id=self.id, role=role, ephemeral=ephemeral)

    def hold(self, digests: Iterable[Descriptor | Digest], store: Any = None, *, location: str | None = None) -> None:
        """Protect existing content this build relies on but did not write.

        Pass the layout ``store``: the hold is written under its writer lock, so no GC runs between
        the hold and the caller's next ``has_blob`` check. Hold first, then check presence.
        """
        if location is None:
            if store is None:
                raise ValueError("hold() needs a store or a location")
            location = layout_location(store.path)
        items = [d.digest if isinstance(d, Descriptor) else d for d in digests]
        lock = store.writer_lock() if store is not None and hasattr(store, "writer_lock") else nullcontext()
        with lock:
            self.ledger.hold(self.id, items, location)

    def publish_hook(
        self, store: Any, role: str, ephemeral: bool = False, *, blob_role: str | None = None
    ) -> Callable[[Descriptor], None]:
        """The ``before_publish`` callable for ``LayoutStore.put_blob``/``put_manifest``.

        Manifests and indexes get ``role``; configs and layers get ``config``/``layer`` (or
        ``blob_role``). A blob that is already present when the hook runs (another writer won the
        race, or it predates this build) is recorded as not ephemeral: pre-existing content is never
        this build's to delete.
        """
        location = layout_location(store.path)

        def before_publish(desc: Descriptor) -> None:
            if mt.is_manifest_like(desc.media_type):
                row_role = role
            elif blob_role is not None:
                row_role = blob_role
            else:
                row_role = ROLE_CONFIG if desc.media_type in mt.CONFIG_TYPES else ROLE_LAYER
            existed = os.path.exists(store.blob_path(desc.digest))
            self.ledger.record(
                desc, location=location, lease_id=self.id, role=row_role, ephemeral=ephemeral and not existed
            )

        return before_publish

    # -- writing under the lease ---------------------------------------------------------------
    def put_blob(
        self, store: Any, desc: Descriptor, stream: Any, *, role: str | None = None, ephemeral: bool = False
    ) -> None:
        """Write a blob into a layout under this lease, holding it even when it is already there.

        Runs under the layout's writer lock: no GC can sweep the blob between the hold and the write.
        """
        with store.writer_lock():
            self.ledger.hold(self.id, [desc.digest], layout_location(store.path))
            store.put_blob(desc, stream, before_publish=self.publish_hook(store, role or ROLE_LAYER, ephemeral,
                                                                          blob_role=role))

    def put_manifest(
        self, store: Any, desc: Descriptor, raw: bytes, *, role: str, tag: str | None = None,
        ephemeral: bool = False,
    ) -> Descriptor:
        """Write (and optionally tag) a manifest under this lease; see ``put_blob``."""
        with store.writer_lock():
            self.ledger.hold(self.id, [desc.digest], layout_location(store.path))
            return store.put_manifest(desc, raw, tag=tag, before_publish=self.publish_hook(store, role, ephemeral))


def dead_leases(ledger: Ledger, *, now: float | None = None) -> list[LeaseRow]:
    """Leases that are not live (released, expired or dead), judged once."""
    return [row for row in ledger.leases() if lease_state(row, now=now) != LIVE]
