"""Blob uploads: POST a session, stream the bytes (one PATCH, or Content-Range chunks), PUT ?digest=.

The bytes are hashed as they are sent and the final ``PUT ?digest=`` (the commit) is only sent
after the hash and size matched the descriptor; on any failure the session is DELETEd. The
stream is read in bounded pieces: memory stays flat whatever the blob size.
"""

from __future__ import annotations

import hashlib
import logging
from typing import BinaryIO, Callable
from urllib.parse import quote, urljoin

import requests

from ocibuild.errors import AuthError, DigestMismatch, NotFound, RegistryError
from ocibuild.oci.descriptor import Descriptor
from ocibuild.store.base import VerifyingReader, verifier_of
from ocibuild.store.registry.client import RegistryClient, TransportError, error_message

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
_READ = 1 << 20
# Error codes by which a registry says an upload session is gone (or spoiled by a dropped body).
_DEAD_SESSION_CODES = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})


class SessionLost(RegistryError):
    """This upload session cannot go on (connection dropped mid-body, session unknown or invalid,
    offsets unrecoverable): the blob must be sent again, from its start, in a new session."""


class _Trusted:
    """Stands in for the hash when the source stream verifies this very blob itself.

    Hashing every byte twice was half of a push's CPU. ``hexdigest`` is the expected digest only
    once the source's ``VerifyingReader`` has seen all of it and found it right.
    """

    def __init__(self, stream: BinaryIO, desc: Descriptor):
        self._stream = stream
        self._desc = desc

    def update(self, data: bytes) -> None:
        pass

    def copy(self) -> "_Trusted":
        return self

    def hexdigest(self) -> str:
        verifier = _verifier(self._stream, self._desc)  # a re-opened source has a new verifier
        return verifier.desc.digest.encoded if verifier is not None and verifier.verified else ""


def _verifier(stream: BinaryIO, desc: Descriptor) -> VerifyingReader | None:
    """The verifier of ``stream``, looking through a re-openable source (``stream.current``)."""
    return verifier_of(getattr(stream, "current", stream), desc)


def _new_hasher(stream: BinaryIO, desc: Descriptor):
    if _verifier(stream, desc) is not None:
        return _Trusted(stream, desc)
    return hashlib.new(desc.digest.algorithm)


class _SendReader:
    """Feeds at most ``limit`` bytes of ``stream`` to requests, hashing and reporting them.

    ``__len__`` lets requests send a Content-Length instead of chunked encoding.
    """

    def __init__(self, stream: BinaryIO, limit: int, hasher, progress: Progress | None):
        self._stream = stream
        self._left = limit
        self._hasher = hasher
        self._progress = progress
        self.sent = 0

    def __len__(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0 or n == 0:
            return b""
        if n is None or n < 0:  # read everything left (only test doubles ask for this)
            return b"".join(iter(lambda: self.read(_READ), b""))
        data = self._stream.read(min(n, self._left, _READ))
        if not data:
            raise DigestMismatch(f"stream ended {self._left} bytes before the announced size")
        self._left -= len(data)
        self.sent += len(data)
        self._hasher.update(data)
        if self._progress is not None:
            self._progress(len(data))
        return data


class BlobUpload:
    """One upload session for one blob into one repository."""

    def __init__(self, client: RegistryClient, repository: str, desc: Descriptor, scopes: tuple[str, ...]):
        self.client = client
        self.repository = repository
        self.desc = desc
        self.scopes = scopes
        self.location: str | None = None
        self.min_chunk = 0

    @property
    def _where(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def _set_location(self, resp: requests.Response) -> None:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self._where}: upload answered HTTP {resp.status_code} without a Location", resp.status_code)
        self.location = urljoin(resp.url or self.client.base_url + "/", loc)

    def start(self) -> None:
        resp = self.client.request(
            "POST",
            f"/v2/{self.repository}/blobs/uploads/",
            scopes=self.scopes,
            headers={"Content-Length": "0"},
        )
        self.adopt(resp)

    def adopt(self, resp: requests.Response) -> None:
        """Take over a session a POST opened (a 202 from an upload or a refused mount)."""
        if resp.status_code != 202:
            raise _error(resp, f"{self._where}: cannot start blob upload")
        self._set_location(resp)
        try:
            self.min_chunk = max(0, int(resp.headers.get("OCI-Chunk-Min-Length", "0")))
        except ValueError:
            self.min_chunk = 0

    def cancel(self) -> None:
        """DELETE the session; best effort (the registry purges stale sessions anyway)."""
        if self.location is None:
            return
        try:
            self.client.request("DELETE", self.location, scopes=self.scopes).close()
        except Exception as exc:  # noqa: BLE001 - cancelling must never hide the original error
            log.debug("cancelling upload session for %s failed: %s", self._where, type(exc).__name__)
        self.location = None

    def _with_query(self, **query: str) -> str:
        assert self.location is not None
        sep = "&" if "?" in self.location else "?"
        return self.location + sep + "&".join(f"{k}={quote(v, safe=':')}" for k, v in query.items())

    def _session_request(self, method: str, url: str, headers: dict[str, str], body=None, retry: bool = False):
        """A request into the session. A dropped connection is not resent into it (``retry``
        False): the registry may hold part of the body, so the session is ``SessionLost``."""
        try:
            return self.client.request(
                method, url, scopes=self.scopes, headers=headers, body=body, retry_transport=retry
            )
        except TransportError as exc:
            raise SessionLost(f"{self._where}: upload of {self.desc.digest.short()} interrupted: {exc}") from None

    def commit(self) -> None:
        """The final, empty ``PUT ?digest=``: only called after the bytes were verified."""
        resp = self._session_request(
            "PUT",
            self._with_query(digest=str(self.desc.digest)),
            {"Content-Length": "0", "Content-Type": "application/octet-stream"},
            retry=True,
        )
        self._committed(resp)

    def _committed(self, resp) -> None:  # noqa: ANN001
        """The answer to a ``PUT ?digest=``: 201/204 and, when the registry says, the same digest."""
        if resp.status_code not in (201, 204):
            raise _session_error(resp, f"{self._where}: blob {self.desc.digest.short()} was refused")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != str(self.desc.digest):
            raise DigestMismatch(f"{self._where}: registry stored blob as {got}, expected {self.desc.digest}")
        self.location = None

    # -- monolithic PUT of a small blob -----------------------------------------------------------

    def send_small(self, stream: BinaryIO, progress: Progress | None) -> None:
        """Small blobs (configs): read (bounded), verify, then one ``PUT ?digest=`` with the bytes."""
        hasher = _new_hasher(stream, self.desc)
        data = _SendReader(stream, self.desc.size, hasher, None)
        chunks = []
        while piece := data.read(_READ):
            chunks.append(piece)
        self._verify(hasher, stream)
        payload = b"".join(chunks)
        resp = self._session_request(
            "PUT",
            self._with_query(digest=str(self.desc.digest)),
            {"Content-Type": "application/octet-stream"},
            payload,
        )
        self._committed(resp)
        if progress is not None:
            progress(len(payload))

    # -- one streamed PATCH -------------------------------------------------------------------------

    def send_stream(self, stream: BinaryIO, progress: Progress | None) -> None:
        """The whole blob in one PATCH (no Content-Range), verified, then committed."""
        hasher = _new_hasher(stream, self.desc)
        start = _tell(stream)
        calls = 0

        def body() -> _SendReader:
            nonlocal hasher, calls
            if calls:
                _rewind(stream, start, self._where)
                hasher = _new_hasher(stream, self.desc)
            calls += 1
            return _SendReader(stream, self.desc.size, hasher, progress)

        assert self.location is not None
        resp = self._session_request("PATCH", self.location, {"Content-Type": "application/octet-stream"}, body)
        if resp.status_code != 202:
            raise _session_error(resp, f"{self._where}: blob upload failed")
        self._set_location(resp)
        self._verify(hasher, stream)
        self.commit()

    # -- Content-Range chunks -----------------------------------------------------------------------

    def send_chunked(self, stream: BinaryIO, chunk_size: int, progress: Progress | None) -> None:
        """Sequential ``Content-Range`` PATCHes; a 416 resumes from the offset the registry reports."""
        size = self.desc.size
        chunk = max(chunk_size, self.min_chunk, 1)
        base = _tell(stream)
        hasher = _new_hasher(stream, self.desc)
        checkpoints: dict[int, object] = {0: hasher.copy()}
        offset = 0
        recoveries = 0
        while offset < size:
            end = min(offset + chunk, size)
            checkpoints.setdefault(offset, hasher.copy())
            assert self.location is not None
            reader_box: list[_SendReader] = []

            def body(offset: int = offset, end: int = end) -> _SendReader:
                nonlocal hasher
                if reader_box:  # a retry: rewind the stream and the hash to this chunk's start
                    _rewind(stream, _at(base, offset), self._where)
                    hasher = checkpoints[offset].copy()  # type: ignore[attr-defined]
                reader = _SendReader(stream, end - offset, hasher, progress)
                reader_box.append(reader)
                return reader

            resp = self._session_request(
                "PATCH",
                self.location,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end - 1}",
                    "Content-Length": str(end - offset),
                },
                body,
            )
            if resp.status_code == 416:
                recoveries += 1
                if recoveries > 3:
                    raise _session_error(resp, f"{self._where}: registry keeps refusing chunk offsets")
                resp.close()
                offset = self._recover(end)
                hasher = self._rehash_to(offset, base, stream, checkpoints)
                continue
            if resp.status_code not in (202, 204):
                raise _session_error(resp, f"{self._where}: chunk {offset}-{end - 1} refused")
            self._set_location(resp)
            offset = end
            checkpoints[offset] = hasher.copy()
        self._verify(hasher, stream)
        self.commit()

    def _recover(self, sent_end: int) -> int:
        """``GET <location>`` -> 204 with ``Range: 0-N``: the offset to resume from."""
        assert self.location is not None
        resp = self._session_request("GET", self.location, {}, retry=True)
        if resp.status_code not in (204, 200):
            raise _session_error(resp, f"{self._where}: cannot query upload status after a 416")
        if resp.headers.get("Location"):
            self._set_location(resp)
        rng = resp.headers.get("Range", "")
        try:
            resume = int(rng.split("-", 1)[1]) + 1 if "-" in rng else 0
        except ValueError:
            raise RegistryError(f"{self._where}: unparsable upload Range {rng!r}") from None
        if resume < 0 or resume > sent_end:
            raise SessionLost(f"{self._where}: registry reports {resume} bytes received, but {sent_end} were sent")
        return resume

    def _rehash_to(self, offset: int, base: int, stream: BinaryIO, checkpoints: dict[int, object]):
        """Hash state at ``offset``: the nearest checkpoint before it, plus the bytes in between."""
        start = max(k for k in checkpoints if k <= offset)
        hasher = checkpoints[start].copy()  # type: ignore[attr-defined]
        _rewind(stream, _at(base, start), self._where)
        left = offset - start
        while left > 0:
            data = stream.read(min(left, _READ))
            if not data:
                raise DigestMismatch(f"{self._where}: stream ended early while resuming")
            hasher.update(data)
            left -= len(data)
        return hasher

    # -- verification --------------------------------------------------------------------------------

    def _verify(self, hasher, stream: BinaryIO) -> None:
        """The bytes sent must be exactly the descriptor's: nothing past ``size``, digest equal."""
        if stream.read(1):
            raise DigestMismatch(f"blob {self.desc.digest}: stream is longer than the announced {self.desc.size} bytes")
        got = hasher.hexdigest()
        if got != self.desc.digest.encoded:
            raise DigestMismatch(
                f"digest mismatch: uploaded content hashes to {self.desc.digest.algorithm}:{got}, "
                f"expected {self.desc.digest}"
            )


def stream_position(stream: BinaryIO) -> int | None:
    """Where ``stream`` is now, or None when it cannot be rewound to there."""
    return _tell(stream)


def _tell(stream: BinaryIO) -> int | None:
    try:
        return stream.tell() if stream.seekable() else None
    except (OSError, AttributeError, ValueError):
        return None


def _at(base: int | None, offset: int) -> int | None:
    return None if base is None else base + offset


def _rewind(stream: BinaryIO, position: int | None, where: str) -> None:
    if position is None:
        raise RegistryError(f"{where}: upload must be resent but the source stream cannot be rewound")
    stream.seek(position)


def _session_error(resp: requests.Response, prefix: str) -> Exception:
    """``SessionLost`` when the answer says the session is gone or its offsets cannot be agreed."""
    if resp.status_code in (404, 416) or (400 <= resp.status_code < 500 and resp.status_code not in (401, 403)
                                          and error_message(resp)[1] in _DEAD_SESSION_CODES):
        text, code = error_message(resp)
        resp.close()
        return SessionLost(f"{prefix}: {text}", resp.status_code, code)
    return _error(resp, prefix)


def _error(resp: requests.Response, prefix: str) -> Exception:
    text, code = error_message(resp)
    resp.close()
    if resp.status_code in (401, 403):
        return AuthError(f"{prefix}: not authorized ({text})")
    if resp.status_code == 404:
        return NotFound(f"{prefix}: {text}")
    return RegistryError(f"{prefix}: {text}", resp.status_code, code)
