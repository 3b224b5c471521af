"""A loopback TCP proxy that injects faults between a client and a real registry.

Faults wait in a queue. A ``status`` or ``stall`` at the head is taken by the next accepted
connection; a ``drop`` at the head is taken by the first connection (new or already open) whose
byte count in its ``direction`` crosses ``after`` — so a drop lands inside a blob, not in the small
requests that open a transfer. With an empty queue connections get ``default``. Kinds:

* ``pass``   — bytes forwarded both ways untouched;
* ``drop``   — forwarded until ``after`` bytes went in ``direction`` (``down``: registry to client,
  a pull; ``up``: client to registry, a push), then both sockets are closed mid-stream;
* ``status`` — the first response of the connection is replaced: the request head (and its body,
  by Content-Length or chunked framing) is read and discarded, and ``status`` with ``Retry-After``
  and ``Connection: close`` is answered instead; the registry never sees the request;
* ``stall``  — nothing is forwarded; the connection is held open for ``seconds``, then closed.

Everything is bounded: at most ``max_connections`` connections, sockets with timeouts, and
``stop()`` closes the listener and every live socket. ``log`` records (fault kind, bytes) per connection.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

Kind = Literal["pass", "drop", "status", "stall"]
_IO_TIMEOUT = 30.0
_BUF = 64 * 1024


@dataclass(frozen=True)
class Fault:
    kind: Kind = "pass"
    after: int = 0
    direction: Literal["up", "down"] = "down"
    status: int = 503
    retry_after: str | None = "0"
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.kind == "drop":
            return f"drop-{self.direction}@{self.after}"
        if self.kind == "status":
            return f"{self.status}(Retry-After={self.retry_after})"
        if self.kind == "stall":
            return f"stall {self.seconds:g}s"
        return "pass"


PASS = Fault()


class FaultProxy:
    """``FaultProxy(upstream_port)``; ``.host`` is ``127.0.0.1:PORT`` to give the client instead."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *, max_connections: int = 2000):
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self.faults: collections.deque[Fault] = collections.deque()
        self.default = PASS
        self.log: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def injected(self) -> list[str]:
        """The faults that were applied (not ``pass``), in connection order."""
        return [kind for kind, _ in self.log if kind != "pass"]

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for s in list(self._sockets):
                _close(s)
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------
    def _track(self, s: socket.socket) -> socket.socket:
        s.settimeout(_IO_TIMEOUT)
        with self._lock:
            self._sockets.add(s)
        return s

    def _accept_loop(self) -> None:
        count = 0
        while not self._stopped.is_set() and count < self.max_connections:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            count += 1
            with self._lock:
                if self.faults and self.faults[0].kind in ("status", "stall"):
                    fault = self.faults.popleft()
                elif self.faults:
                    fault = PASS  # forwarded and watched: a queued drop fires when its byte count is crossed
                else:
                    fault = self.default
            threading.Thread(target=self._serve, args=(self._track(client), fault), daemon=True,
                             name=f"faultproxy-{count}").start()

    def _serve(self, client: socket.socket, fault: Fault) -> None:
        moved, fired = 0, False
        try:
            if fault.kind == "stall":
                self._stopped.wait(fault.seconds)
                fired = True
            elif fault.kind == "status":
                moved = _answer_status(client, fault)
                fired = moved > 0
            else:
                upstream = self._track(socket.create_connection(self.upstream, timeout=_IO_TIMEOUT))
                moved, fired, fault = self._pipe(client, upstream, fault)
        except OSError:
            pass
        finally:
            with self._lock:  # a drop whose byte count was never reached injected nothing: logged as pass
                self.log.append((str(fault) if fired else "pass", moved))
            _close(client)

    def _pipe(self, client: socket.socket, upstream: socket.socket, fault: Fault) -> tuple[int, bool, Fault]:
        """Forward both ways; for ``drop`` stop both once ``after`` bytes passed in ``direction``.

        Returns the bytes moved, whether a drop fired, and the fault the connection ended with."""
        budget: dict[str, int | None] = {"up": None, "down": None}
        if fault.kind == "drop":
            budget[fault.direction] = fault.after
        done = threading.Event()
        moved = {"up": 0, "down": 0}
        fired = threading.Event()

        def queued_drop(way: str, upto: int) -> int | None:
            """Take the queued drop at the head if this connection crosses its byte count."""
            nonlocal fault
            with self._lock:
                head = self.faults[0] if self.faults else None
                if head is not None and head.kind == "drop" and head.direction == way and upto >= head.after:
                    self.faults.popleft()
                    fault = head
                    return head.after
            return None

        def forward(src: socket.socket, dst: socket.socket, way: str) -> None:
            try:
                while not done.is_set():
                    data = src.recv(_BUF)
                    if not data:
                        break
                    limit = budget[way]
                    if limit is None and fault.kind == "pass":
                        limit = queued_drop(way, moved[way] + len(data))
                    if limit is not None and moved[way] + len(data) >= limit:
                        dst.sendall(data[: max(0, limit - moved[way])])
                        moved[way] = limit
                        fired.set()
                        break
                    dst.sendall(data)
                    moved[way] += len(data)
            except OSError:
                pass
            finally:
                done.set()
                _close(client)
                _close(upstream)

        t = threading.Thread(target=forward, args=(upstream, client, "down"), daemon=True)
        t.start()
        forward(client, upstream, "up")
        t.join(timeout=_IO_TIMEOUT)
        return moved["up"] + moved["down"], fired.is_set(), fault


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(_BUF)
        if not data:
            return buf, b""
        buf += data
        if len(buf) > 1 << 20:
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _discard_body(sock: socket.socket, head: bytes, rest: bytes) -> int:
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            data = sock.recv(_BUF)
            if not data:
                break
            rest = rest[-16:] + data
        return len(rest)
    left = int(headers.get("content-length", "0") or 0) - len(rest)
    total = len(rest)
    while left > 0:
        data = sock.recv(min(_BUF, left))
        if not data:
            break
        left -= len(data)
        total += len(data)
    return total


def _answer_status(client: socket.socket, fault: Fault) -> int:
    head, rest = _read_head(client)
    if not head:
        return 0
    n = _discard_body(client, head, rest)
    reason = {429: "Too Many Requests", 503: "Service Unavailable", 502: "Bad Gateway", 500: "Internal Server Error"}
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by faultproxy"}]}'
    lines = [f"HTTP/1.1 {fault.status} {reason.get(fault.status, 'Error')}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close"]
    if fault.retry_after is not None:
        lines.append(f"Retry-After: {fault.retry_after}")
    client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    time.sleep(0.01)
    return len(head) + n


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
