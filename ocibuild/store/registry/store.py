"""``RegistryStore``: the Store protocol over one repository of a registry (distribution spec v1.1)."""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import re
import threading
from typing import BinaryIO, Callable, Iterator
from urllib.parse import urljoin

import requests
import urllib3

from ocibuild.errors import AuthError, DigestMismatch, ManifestError, NotFound, RegistryError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, Index, Manifest, load_json, parse_manifest
from ocibuild.oci.reference import Reference
from ocibuild.store.base import Progress, VerifyingReader, digest_arg, verify_bytes
from ocibuild.store.registry.auth import repository_scope
from ocibuild.store.registry import client as client_module
from ocibuild.store.registry.client import RegistryClient, RegistryOptions, error_message
from ocibuild.store.registry.upload import BlobUpload, SessionLost, stream_position

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(mt.MANIFEST_ACCEPT)
SMALL_BLOB = 1024 * 1024
# Small reads (tar headers) are served from this buffer; large reads go straight to the socket.
_READ_BUFFER = 64 * 1024
_TAGS_PAGE = 1000
_FALLBACK_BAD = re.compile(r"[^a-zA-Z0-9_.-]")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def fallback_tag(digest: Digest) -> str:
    """The referrers fallback tag: ``<alg>-<encoded>`` truncated and sanitised (``sha256-<hex>``)."""
    return _FALLBACK_BAD.sub("-", f"{digest.algorithm[:32]}-{digest.encoded[:64]}")


def _content_type(resp: requests.Response) -> str | None:
    value = resp.headers.get("Content-Type")
    return value.split(";", 1)[0].strip() if value else None


def _encoded(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")


def _read_capped(resp: requests.Response, what: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        resp.close()
        raise ManifestError(f"{what} is {length} bytes, over the {limit} byte limit")
    out = bytearray()
    for chunk in resp.iter_content(64 * 1024):
        out += chunk
        if len(out) > limit:
            resp.close()
            raise ManifestError(f"{what} is over the {limit} byte limit")
    return bytes(out)


class _ConnectionLost(RegistryError):
    """The body of a response stopped before its end: a download that may be resumed."""


class _BodyReader:
    """A response body as ``read(n)``/``readinto(b)``; transport failures become ``RegistryError``.

    An identity-encoded body (what we ask for) is read without urllib3's decode buffering: each
    ``read(n)`` is one buffered socket read. A body the server encoded anyway is decoded, since
    the digest is of the blob.
    """

    def __init__(self, resp: requests.Response, what: str, encoded: bool):
        self._resp = resp
        self._what = what
        self._decode = encoded
        resp.raw.decode_content = encoded
        # http.client's response reads straight into a caller's buffer (urllib3's readinto copies);
        # only for an identity body, where the bytes on the wire are the blob.
        fp = getattr(resp.raw, "_fp", None)
        if not encoded and isinstance(fp, http.client.HTTPResponse):
            self.readinto = self._readinto_fp  # type: ignore[method-assign]
            self._fp = fp

    def read(self, n: int = -1) -> bytes:
        try:
            return self._resp.raw.read(None if n is None or n < 0 else n, decode_content=self._decode)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise _ConnectionLost(f"{self._what}: connection lost while reading ({type(exc).__name__})") from None

    def _readinto_fp(self, buffer: memoryview) -> int:
        try:
            n = self._fp.readinto(buffer)
        except (http.client.HTTPException, OSError) as exc:
            raise _ConnectionLost(f"{self._what}: connection lost while reading ({type(exc).__name__})") from None
        if not n and len(buffer) and self._fp.length:  # EOF before Content-Length: http.client won't say
            raise _ConnectionLost(f"{self._what}: connection lost while reading ({self._fp.length} bytes missing)")
        return n

    def close(self) -> None:
        self._resp.close()


class _ResumingBody:
    """A blob body that survives dropped connections: it re-asks for the rest with ``Range``.

    Sits under the ``VerifyingReader``, so the hash simply continues over the resumed bytes and
    nothing is trusted until the whole blob verified. ``reopen(offset)`` returns the next body
    positioned at ``offset`` (a 206 from there, or a 200 with the first ``offset`` bytes skipped).
    Only identity bodies resume: offsets into a decoded body mean nothing on the wire.
    """

    def __init__(
        self, body: _BodyReader, reopen: Callable[[int], _BodyReader], resumable: bool, what: str, max_resumes: int
    ):
        self._body = body
        self._reopen = reopen
        self._resumable = resumable
        self._what = what
        self._max_resumes = max_resumes
        self.offset = 0
        self.resumes = 0

    def _resume(self, lost: _ConnectionLost) -> None:
        """Replace the dropped body by one continuing at ``offset``, within the resume budget."""
        self._body.close()
        while True:
            if not self._resumable or self.resumes >= self._max_resumes:
                if self.resumes:
                    raise RegistryError(f"{lost} (gave up after {self.resumes} resumed downloads)") from None
                raise lost
            self.resumes += 1
            log.info("%s: connection lost at byte %d, resuming (%d/%d)",
                     self._what, self.offset, self.resumes, self._max_resumes)
            try:
                self._body = self._reopen(self.offset)
                return
            except _ConnectionLost as again:  # dropped again while skipping to the offset
                lost = again

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                data = self._body.read(n)
            except _ConnectionLost as lost:
                self._resume(lost)
                continue
            self.offset += len(data)
            return data

    def readinto(self, buffer: memoryview) -> int:
        while True:
            try:
                readinto = getattr(self._body, "readinto", None)
                if readinto is not None:
                    n = readinto(buffer) or 0
                else:
                    data = self._body.read(len(buffer))
                    n = len(data)
                    buffer[:n] = data
            except _ConnectionLost as lost:
                self._resume(lost)
                continue
            self.offset += n
            return n

    def close(self) -> None:
        self._body.close()


class _HighWater:
    """Progress that counts each byte of a blob once, however many times it is resent."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._sent = 0
        self._reported = 0

    def rewind(self) -> None:
        self._sent = 0

    def __call__(self, n: int) -> None:
        self._sent += n
        if self._sent > self._reported:
            self._progress(self._sent - self._reported)
            self._reported = self._sent


class RegistryStore:
    """One repository of a registry. Every read is verified; every write is checked."""

    resends_blobs = True
    """``put_blob`` may rewind its stream (a new upload session after a dropped one): give it a
    seekable stream when you can (``transfer.copy`` gives a re-opening one)."""

    def __init__(self, ref: Reference, options: RegistryOptions | None = None, client: RegistryClient | None = None):
        self._ref = ref
        self._owns_client = client is None
        self._client = client or RegistryClient(ref.registry, options)
        self._fallback_lock = threading.Lock()
        # Digests a HEAD just reported missing: the put_blob that typically follows (copy checks
        # first, to count skips) need not ask again. Stale at worst means one redundant upload.
        self._absent: set[Digest] = set()

    def __repr__(self) -> str:
        return f"RegistryStore({self.name!r})"

    @property
    def registry(self) -> str:
        return self._ref.registry

    @property
    def repository(self) -> str:
        return self._ref.repository

    @property
    def client(self) -> RegistryClient:
        return self._client

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def _pull(self) -> tuple[str, ...]:
        return (repository_scope(self.repository, "pull"),)

    @property
    def _push(self) -> tuple[str, ...]:
        return (repository_scope(self.repository, "pull", "push"),)

    def _fail(self, resp: requests.Response, what: str) -> Exception:
        text, code = error_message(resp)
        resp.close()
        if resp.status_code in (401, 403):
            return AuthError(f"{self.name}: {what}: not authorized ({text}); check `ocibuild login {self.registry}`")
        if resp.status_code == 404:
            return NotFound(f"{self.name}: {what}: not found")
        return RegistryError(f"{self.name}: {what}: {text}", resp.status_code, code)

    def _warn(self, resp: requests.Response) -> None:
        for value in resp.headers.get("Warning", "").split(","):
            if value.strip().startswith("299"):
                log.warning("%s: registry warning: %s", self.registry, value.strip()[:300])

    # -- manifests ----------------------------------------------------------------------------------

    def _manifest_url(self, identifier: str) -> str:
        return f"/v2/{self.repository}/manifests/{identifier}"

    def resolve(self, identifier: str) -> Descriptor:
        digest = digest_arg(identifier)
        resp = self._client.request(
            "HEAD", self._manifest_url(identifier), scopes=self._pull, headers={"Accept": MANIFEST_ACCEPT}
        )
        if resp.status_code != 200:
            raise self._fail(resp, f"manifest {identifier}")
        header, ctype = resp.headers.get("Docker-Content-Digest"), _content_type(resp)
        length = resp.headers.get("Content-Length")
        resp.close()
        if header and length and length.isdigit() and mt.is_manifest_like(ctype):
            got = Digest.parse(header)
            if digest is not None and got != digest:
                raise DigestMismatch(f"{self.name}: asked for {digest}, registry answered {got}")
            return Descriptor(ctype, got, int(length))  # type: ignore[arg-type]
        desc, _ = self.get_manifest(identifier)
        return desc

    def get_manifest(self, identifier: str) -> tuple[Descriptor, bytes]:
        digest = digest_arg(identifier)
        resp = self._client.request(
            "GET", self._manifest_url(identifier), scopes=self._pull, headers={"Accept": MANIFEST_ACCEPT}, stream=True
        )
        if resp.status_code != 200:
            raise self._fail(resp, f"manifest {identifier}")
        self._warn(resp)
        raw = _read_capped(resp, f"{self.name}: manifest {identifier}")
        header = resp.headers.get("Docker-Content-Digest")
        expected = digest
        if header:
            try:
                announced = Digest.parse(header)
            except Exception:
                raise ManifestError(f"{self.name}: registry sent an invalid Docker-Content-Digest") from None
            if digest is not None and announced != digest:
                raise DigestMismatch(f"{self.name}: asked for {digest}, registry answered {announced}")
            expected = expected or announced
        actual = Digest.of(raw, expected.algorithm if expected is not None and expected.supported else "sha256")
        if expected is not None and actual != expected:
            raise DigestMismatch(f"{self.name}: manifest {identifier} hashes to {actual}, expected {expected}")
        ctype = _content_type(resp)
        parsed = parse_manifest(raw, ctype)  # refuses a mediaType that contradicts Content-Type
        return Descriptor(parsed.media_type, actual, len(raw)), raw

    def put_manifest(
        self, desc: Descriptor, raw: bytes, tag: str | None = None,
        on_fallback: Callable[[Descriptor], None] | None = None,
    ) -> Descriptor:
        """Push a manifest. One with a ``subject`` the registry does not link itself (no ``OCI-Subject``
        in the answer: no referrers API) is added to the ``sha256-<hex>`` fallback index, which
        ``on_fallback`` is told before it is pushed."""
        verify_bytes(desc, raw)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest {desc.digest} is over the {MAX_MANIFEST_BYTES} byte limit")
        parsed = parse_manifest(raw, desc.media_type) if mt.is_manifest_like(desc.media_type) else None
        resp = self._client.request(
            "PUT",
            self._manifest_url(tag or str(desc.digest)),
            scopes=self._push,
            headers={"Content-Type": desc.media_type},
            body=raw,
        )
        if resp.status_code not in (200, 201, 202):
            raise self._fail(resp, f"push manifest {desc.digest.short()}")
        self._warn(resp)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != str(desc.digest):
            raise DigestMismatch(f"{self.name}: registry stored manifest as {got}, expected {desc.digest}")
        has_subject_api = "OCI-Subject" in resp.headers
        resp.close()
        subject = getattr(parsed, "subject", None)
        if subject is not None and not has_subject_api:
            self._add_to_fallback(subject, desc, parsed, on_fallback)  # type: ignore[arg-type]
        return Descriptor(desc.media_type, desc.digest, desc.size)

    def tag(self, desc: Descriptor, tag: str) -> None:
        got, raw = self.get_manifest(str(desc.digest))
        self.put_manifest(got, raw, tag=tag)

    def delete(self, identifier: str) -> None:
        digest = digest_arg(identifier)
        resp = self._client.request(
            "DELETE", self._manifest_url(identifier), scopes=(repository_scope(self.repository, "*"),)
        )
        if resp.status_code in (200, 202, 204):
            resp.close()
            return
        if digest is None and resp.status_code in (400, 405):
            resp.close()
            raise RegistryError(
                f"{self.name}: this registry cannot delete tags; deleting by digest removes the manifest "
                f"and every tag pointing at it",
                resp.status_code,
            )
        if resp.status_code == 405:
            resp.close()
            raise RegistryError(f"{self.name}: deletes are disabled on this registry", 405)
        raise self._fail(resp, f"delete {identifier}")

    def tags(self) -> list[str]:
        return paged_names(self._client, f"/v2/{self.repository}/tags/list", "tags", self._pull, self.name,
                           "list tags", self._fail, noun="tag list")

    # -- blobs --------------------------------------------------------------------------------------

    def _blob_url(self, digest: Digest) -> str:
        return f"/v2/{self.repository}/blobs/{digest}"

    def has_blob(self, desc: Descriptor) -> bool:
        resp = self._client.request("HEAD", self._blob_url(desc.digest), scopes=self._pull)
        resp.close()
        if resp.status_code == 200:
            self._absent.discard(desc.digest)
            return True
        if resp.status_code == 404:
            self._absent.add(desc.digest)
            return False
        raise self._fail(resp, f"blob {desc.digest.short()}")

    def stat_blob(self, digest: Digest) -> Descriptor:
        """The size of a blob known by digest only (``HEAD``'s Content-Length)."""
        resp = self._client.request("HEAD", self._blob_url(digest), scopes=self._pull)
        resp.close()
        if resp.status_code == 404:
            raise NotFound(f"blob {digest} not found in {self.name}")
        if resp.status_code != 200:
            raise self._fail(resp, f"blob {digest.short()}")
        try:
            size = int(resp.headers.get("Content-Length", ""))
        except ValueError:
            raise RegistryError(f"{self.name}: blob {digest.short()}: no Content-Length") from None
        return Descriptor("application/octet-stream", digest, size)

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """The blob, verified as it is read; a connection dropped mid-body is resumed (``Range``)."""
        what = f"{self.name}: blob {desc.digest.short()}"
        resp = self._client.request(
            "GET",
            self._blob_url(desc.digest),
            scopes=self._pull,
            headers={"Accept-Encoding": "identity"},
            stream=True,
        )
        if resp.status_code != 200:
            raise self._fail(resp, f"blob {desc.digest.short()}")
        length = resp.headers.get("Content-Length")
        encoded = _encoded(resp)
        if not encoded and length and length.isdigit() and int(length) != desc.size:
            resp.close()
            raise DigestMismatch(f"{self.name}: blob {desc.digest} is {length} bytes, expected {desc.size}")
        raw = _ResumingBody(
            _BodyReader(resp, what, encoded), lambda offset: self._resume_blob(desc, offset), not encoded, what,
            self._client.options.retries,
        )
        reader = io.BufferedReader(VerifyingReader(raw, desc), buffer_size=_READ_BUFFER)  # type: ignore[arg-type]
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def _resume_blob(self, desc: Descriptor, offset: int) -> _BodyReader:
        """The rest of a blob from ``offset``: a 206 that starts there, or a 200 read past ``offset``."""
        what = f"{self.name}: blob {desc.digest.short()}"
        resp = self._client.request(
            "GET",
            self._blob_url(desc.digest),
            scopes=self._pull,
            headers={"Accept-Encoding": "identity", "Range": f"bytes={offset}-"},
            stream=True,
        )
        if resp.status_code not in (200, 206):
            raise self._fail(resp, f"resume blob {desc.digest.short()} at byte {offset}")
        if _encoded(resp):
            resp.close()
            raise RegistryError(f"{what}: the resumed download came back encoded; cannot continue at byte {offset}")
        body = _BodyReader(resp, what, False)
        if resp.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                resp.close()
                raise RegistryError(f"{what}: resumed download does not start at byte {offset}")
            return body
        left = offset  # a 200: the registry ignored Range; skip what the hash already saw
        try:
            while left > 0:
                data = body.read(min(left, 1 << 20))
                if not data:
                    raise _ConnectionLost(f"{what}: resumed download ended before byte {offset}")
                left -= len(data)
        except BaseException:
            resp.close()
            raise
        return body

    def put_blob(self, desc: Descriptor, stream: BinaryIO, progress: Progress | None = None) -> None:
        """Upload ``desc`` from ``stream``; commit only what hashed right.

        A session spoiled mid-way (``SessionLost``) is cancelled and the blob is resent from the
        rewound stream in a new session, at most ``options.retries`` times.
        """
        if desc.digest in self._absent:
            self._absent.discard(desc.digest)
        elif self.has_blob(desc):
            return
        start = stream_position(stream)
        report = _HighWater(progress) if progress is not None else None
        sessions = 0
        while True:
            upload = BlobUpload(self._client, self.repository, desc, self._push)
            upload.start()
            try:
                self._send(upload, stream, report)
                return
            except SessionLost as lost:
                # the session is spoiled (a body dropped mid-way, or the registry forgot it):
                # resending into it only earns 404 BLOB_UPLOAD_INVALID; start over in a new one
                upload.cancel()
                sessions += 1
                if sessions > self._client.options.retries:
                    message = f"{lost} (gave up after {sessions} upload sessions)"
                    raise RegistryError(message, lost.status, lost.code) from None
                if self.has_blob(desc):  # the commit went through; only its answer was lost
                    return
                if start is None:
                    raise RegistryError(
                        f"{lost}; the blob must be sent again, but its source stream cannot be rewound"
                    ) from None
                log.info("%s: %s; resending in a new upload session (%d/%d)",
                         self.name, lost, sessions, self._client.options.retries)
                client_module._sleep(self._client._backoff(sessions - 1))
                try:
                    stream.seek(start)
                except (OSError, ValueError) as exc:
                    raise RegistryError(f"{lost}; rewinding the source stream failed ({type(exc).__name__})") from None
                if report is not None:
                    report.rewind()

    def _send(self, upload: BlobUpload, stream: BinaryIO, progress: Progress | None) -> None:
        desc = upload.desc
        try:
            if desc.size <= SMALL_BLOB:
                upload.send_small(stream, progress)
            elif desc.size > self._client.options.chunk_threshold:
                upload.send_chunked(stream, self._client.options.chunk_size, progress)
            else:
                upload.send_stream(stream, progress)
        except SessionLost:
            raise  # the caller cancels it and decides whether to start over
        except BaseException:
            upload.cancel()
            raise

    def mount_blob(self, desc: Descriptor, from_repository: str) -> bool:
        """Cross-repository mount. False (nothing mounted) means: upload it instead."""
        scopes = (repository_scope(from_repository, "pull"), *self._push)
        try:
            resp = self._client.request(
                "POST",
                f"/v2/{self.repository}/blobs/uploads/",
                scopes=scopes,
                params={"mount": str(desc.digest), "from": from_repository},
                headers={"Content-Length": "0"},
            )
        except AuthError:
            return False
        if resp.status_code == 201:
            resp.close()
            self._absent.discard(desc.digest)
            return True
        if resp.status_code == 202:
            upload = BlobUpload(self._client, self.repository, desc, self._push)
            try:
                upload.adopt(resp)
            except RegistryError:
                return False
            upload.cancel()
            return False
        resp.close()
        if resp.status_code in (400, 401, 403, 404, 405):
            return False
        raise self._fail(resp, f"mount {desc.digest.short()} from {from_repository}")

    # -- referrers ----------------------------------------------------------------------------------

    def referrers(self, subject: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """The referrers API (``GET /v2/<name>/referrers/<digest>``, ``artifactType`` filter, pages
        over ``Link``), or the ``sha256-<hex>`` tag scheme when the registry answers 404 (no API).
        The filter is applied here too: a registry may ignore it (no ``OCI-Filters-Applied``)."""
        params = {"artifactType": artifact_type} if artifact_type else None
        url: str | None = f"/v2/{self.repository}/referrers/{subject.digest}"
        found: dict[Digest, Descriptor] = {}
        first, seen_urls = True, set[str]()
        while url is not None:
            resp = self._client.request(
                "GET", url, scopes=self._pull, params=params, headers={"Accept": mt.OCI_INDEX}
            )
            if resp.status_code == 404 and first:
                resp.close()
                return self._fallback_referrers(subject, artifact_type)
            if resp.status_code != 200:
                raise self._fail(resp, f"referrers of {subject.digest.short()}")
            index = Index.parse(_read_capped(resp, f"{self.name}: referrers index"))
            for desc in index.manifests:
                found.setdefault(desc.digest, desc)
            nxt = resp.links.get("next", {}).get("url")
            resp.close()
            seen_urls.add(resp.url)
            url = urljoin(resp.url, nxt) if nxt else None
            if url in seen_urls:  # a server repeating a page: stop, as for tag lists
                break
            first, params = False, None
        return [d for d in found.values() if not artifact_type or d.artifact_type == artifact_type]

    def _fallback_index(self, subject: Digest) -> list[Descriptor]:
        try:
            desc, raw = self.get_manifest(fallback_tag(subject))
        except NotFound:
            return []
        parsed = parse_manifest(raw, desc.media_type)
        if not isinstance(parsed, Index):
            raise ManifestError(f"{self.name}: referrers fallback tag {fallback_tag(subject)} is not an index")
        return list(parsed.manifests)

    def _fallback_referrers(self, subject: Descriptor, artifact_type: str | None) -> list[Descriptor]:
        entries = self._fallback_index(subject.digest)
        return [d for d in entries if artifact_type is None or d.artifact_type == artifact_type]

    def _add_to_fallback(self, subject: Descriptor, desc: Descriptor, parsed: Manifest | Index,
                         on_fallback: Callable[[Descriptor], None] | None = None) -> None:
        """Read-modify-write of the ``sha256-<hex>`` fallback index (registries without referrers API)."""
        artifact = parsed.artifact_type or (parsed.config.media_type if isinstance(parsed, Manifest) else None)
        entry = Descriptor(
            desc.media_type, desc.digest, desc.size, annotations=dict(parsed.annotations), artifact_type=artifact
        )
        with self._fallback_lock:
            entries = [d for d in self._fallback_index(subject.digest) if d.digest != desc.digest]
            entries.append(entry)
            index = Index.build(entries)
            if on_fallback is not None:
                on_fallback(index.descriptor())
            self.put_manifest(index.descriptor(), index.raw, tag=fallback_tag(subject.digest))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


_clients: dict[tuple[str, RegistryOptions], RegistryClient] = {}
_clients_lock = threading.Lock()


def paged_names(client: RegistryClient, path: str, key: str, scopes: tuple[str, ...], name: str, what: str,
                fail: Callable[[requests.Response, str], Exception] | None = None, noun: str = "list") -> list[str]:
    """A list the registry serves in pages (``tags/list``, ``_catalog``): ``n`` per page, following
    ``Link: <...>; rel="next"`` until it ends or repeats. Sorted and without duplicates."""
    found: list[str] = []
    url: str | None = path
    params: dict[str, str] | None = {"n": str(_TAGS_PAGE)}
    seen_urls: set[str] = set()
    while url is not None:
        resp = client.request("GET", url, scopes=scopes, params=params)
        if resp.status_code != 200:
            if fail is not None:
                raise fail(resp, what)
            message, code = error_message(resp)
            resp.close()
            if resp.status_code == 404:
                raise NotFound(f"{name}: {what}: not supported by this registry (404)")
            if resp.status_code in (401, 403):
                raise AuthError(f"{name}: {what}: access denied ({resp.status_code})")
            raise RegistryError(f"{name}: {what}: {message}", resp.status_code, code)
        try:
            doc = load_json(resp.content, what)
        except ManifestError:
            raise RegistryError(f"{name}: {noun} is not valid JSON") from None
        page = doc.get(key) if isinstance(doc, dict) else None
        found.extend(t for t in page or [] if isinstance(t, str))
        nxt = resp.links.get("next", {}).get("url")
        resp.close()
        if not nxt:
            break
        url = urljoin(resp.url, nxt)
        if url in seen_urls:
            break
        seen_urls.add(url)
        params = None
    return sorted(set(found))


def catalog(registry: str, options: RegistryOptions | None = None) -> list[str]:
    """The repositories of a registry (``GET /v2/_catalog``, paginated), sorted."""
    options = options or RegistryOptions()
    probe = get_registry_store(Reference(registry, "catalog"), options)
    return paged_names(probe.client, "/v2/_catalog", "repositories", ("registry:catalog:*",), registry, "catalog",
                       noun="catalog")


def get_registry_store(ref: Reference, options: RegistryOptions | None = None) -> RegistryStore:
    """A store for ``ref``'s repository sharing one client (pool, tokens) per (host, options)."""
    options = options or RegistryOptions()
    key = (ref.api_host, options)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = RegistryClient(ref.registry, options)
    return RegistryStore(ref, options, client=client)
