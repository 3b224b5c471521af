"""One HTTP client per registry host: scheme/TLS choice, retries with backoff, auth, safe redirects.

Every request goes through ``RegistryClient.request``: it attaches the right ``Authorization`` for
the scopes asked, answers 401 challenges (once), retries connection errors, 429 and 5xx with
bounded backoff, and follows redirects itself so credentials never leave the registry host.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ocibuild.errors import AuthError, RegistryError
from ocibuild.store.options import RegistryOptions  # noqa: F401  (re-exported: callers import it from here)
from ocibuild.oci.reference import DOCKER_HUB, DOCKER_HUB_API, is_loopback_host, normalize_registry
from ocibuild.store.registry import credentials as creds
from ocibuild.store.registry.auth import (
    Challenge,
    Credential,
    TokenCache,
    merge_scopes,
    parse_www_authenticate,
    pick_challenge,
    token_from_response,
)

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 10.0
MAX_REDIRECTS = 10
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024

Body = bytes | Callable[[], Any] | None
"""A request body: bytes, or a factory called once per attempt (returns bytes or a readable stream).

A factory lets retries and auth round trips resend a stream (it rewinds, or refuses to)."""


# Requests read an upload body in blocks of this size (urllib3's default is 16 KiB: a Python
# round trip through the body reader per 16 KiB); connections kept per host for parallel blobs.
_SEND_BLOCK = 1 << 20
_POOL_SIZE = 32


class _Adapter(requests.adapters.HTTPAdapter):
    """The default adapter with large send blocks."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", _SEND_BLOCK)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


class TransportError(RegistryError):
    """The connection failed (refused, dropped mid-body, timed out): no usable HTTP answer came back."""


def host_of(url: str) -> str:
    """``hostname[:port]`` of ``url`` for messages and logs: never the ``user:password@`` of a netloc."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "an invalid URL"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host or "an invalid URL"


def _sleep(seconds: float) -> None:
    """Indirection so tests can record waits instead of sleeping."""
    time.sleep(seconds)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def error_message(resp: requests.Response) -> tuple[str, str | None]:
    """(one-line text, first error code) from a distribution error body, never echoing headers."""
    code: str | None = None
    text = ""
    try:
        body = resp.content[:_ERROR_BODY_LIMIT]
        doc = json.loads(body) if body else None
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            text = str(errors[0].get("message") or "")
    except (ValueError, requests.RequestException):
        pass
    parts = [p for p in (code, text) if p]
    detail = ": ".join(parts) if parts else (resp.reason or "error")
    return " ".join(f"HTTP {resp.status_code} {detail}".split())[:300], code


class RegistryClient:
    """HTTP to one registry host. Thread-safe: share it between the threads of one transfer."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        *,
        credential: Credential | None = None,
        scheme: str | None = None,
    ):
        self.registry = normalize_registry(registry)
        self.host = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        self.options = options or RegistryOptions()
        self._session = requests.Session()
        self._session.headers["User-Agent"] = self.options.user_agent
        adapter = _Adapter(pool_maxsize=_POOL_SIZE)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        # passed on every request: with trust_env, REQUESTS_CA_BUNDLE would override Session.verify
        self._verify = self.options.verify_for(self.registry)
        if self._verify is False:
            # the user asked for this host to be unverified; one warning per request is noise
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._lock = threading.RLock()
        self._token_lock = threading.Lock()
        self._tokens = TokenCache()
        self._credential = credential
        self._credential_loaded = credential is not None
        self._challenge: Challenge | None = None
        self._refresh_token: str | None = None
        self._scheme = scheme

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    # -- connection --------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """``https``, or ``http`` for loopback and ``insecure`` hosts that do not speak TLS."""
        with self._lock:
            if self._scheme is None:
                self._scheme = self._probe_scheme()
            return self._scheme

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def _probe_scheme(self) -> str:
        """Non-loopback hosts: ``https`` (an ``insecure`` one falls back to ``http`` if TLS fails).

        A loopback host is asked in plain HTTP first (one cheap ``GET /v2/`` on a connection the
        transfer reuses, no TLS context built): a registry that speaks TLS answers that with 400
        or drops the connection, and is then spoken to over ``https``.
        """
        loopback = is_loopback_host(self.host)
        if not (loopback or self.options.is_insecure(self.registry)):
            return "https"
        if loopback and self._speaks_plain_http():
            return "http"
        try:
            self._session.get(
                f"https://{self.host}/v2/",
                timeout=min(self.options.timeout, 10),
                allow_redirects=False,
                verify=self._verify,
            ).close()
            return "https"
        except requests.exceptions.SSLError as exc:
            if _is_cert_error(exc):
                raise RegistryError(
                    f"TLS certificate of {self.registry} is not trusted; pass its CA (--ca-cert) or mark it insecure"
                ) from None
            return "http"
        except requests.RequestException:
            return "http"

    def _speaks_plain_http(self) -> bool:
        try:
            resp = self._session.get(
                f"http://{self.host}/v2/", timeout=min(self.options.timeout, 10), allow_redirects=False
            )
        except requests.RequestException:
            return False
        status, location = resp.status_code, resp.headers.get("Location", "")
        resp.close()
        if 300 <= status < 400 and location.lower().startswith("https://"):
            return False  # a plain port that only redirects to TLS
        return status != 400

    def close(self) -> None:
        self._session.close()

    # -- credentials and tokens --------------------------------------------------------------------

    @property
    def credential(self) -> Credential | None:
        with self._lock:
            if not self._credential_loaded:
                self._credential = creds.lookup(self.registry, self.options.auth_file)
                self._credential_loaded = True
            return self._credential

    def _same_host(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.netloc.lower() == self.host.lower() and parts.scheme == self.scheme

    def _check_cleartext(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" and not is_loopback_host(host_of(url)):
            raise AuthError(
                f"refusing to send credentials for {self.registry} over plain HTTP to {parts.hostname}; use TLS"
            )

    def _auth_header(self, url: str, scopes: tuple[str, ...]) -> str | None:
        """The Authorization to send preemptively, from what the last challenge taught us."""
        challenge = self._challenge
        if challenge is None or not self._same_host(url):
            return None
        if challenge.scheme == "bearer":
            token = self._tokens.get(self.registry, scopes)
            if token is None:
                token = self._fetch_token(challenge, scopes)
            return f"Bearer {token}"
        if challenge.scheme == "basic":
            cred = self.credential
            if cred is None or cred.empty or cred.identity_token:
                return None
            self._check_cleartext(url)
            return cred.basic_header()
        return None

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        """Ask the token service named by ``challenge`` for ``scopes``; cache it."""
        with self._token_lock:
            cached = self._tokens.get(self.registry, scopes)
            if cached is not None:
                return cached
            realm = challenge.realm
            if not realm or urlsplit(realm).scheme not in ("http", "https"):
                raise AuthError(f"{self.registry} asked for a bearer token without a usable realm")
            all_scopes = merge_scopes([*scopes, *challenge.scopes])
            cred = self.credential
            refresh = self._refresh_token or (cred.identity_token if cred else None)
            payload: Any = None
            if refresh:
                payload = self._token_oauth(realm, challenge.service, all_scopes, refresh)
            if payload is None:
                payload = self._token_get(realm, challenge.service, all_scopes, cred)
            token, expires_in, new_refresh = token_from_response(payload, self.registry)
            if new_refresh:
                self._refresh_token = new_refresh
            self._tokens.put(self.registry, scopes, token, expires_in)
            return token

    def _token_oauth(self, realm: str, service: str | None, scopes: tuple[str, ...], refresh: str) -> Any:
        """OAuth2 refresh-token grant; None when the service has no POST endpoint (404: use GET)."""
        self._check_cleartext(realm)
        form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "ocibuild"}
        if service:
            form["service"] = service
        if scopes:
            form["scope"] = " ".join(scopes)
        resp = self._send_plain("POST", realm, data=form)
        if resp.status_code in (404, 405):
            return None
        return self._token_payload(resp)

    def _token_get(self, realm: str, service: str | None, scopes: tuple[str, ...], cred: Credential | None) -> Any:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {}
        if cred is not None and not cred.empty and not cred.identity_token:
            self._check_cleartext(realm)
            headers["Authorization"] = cred.basic_header()
        if cred is not None and cred.identity_token and not headers:
            params.append(("offline_token", "true"))
        resp = self._send_plain("GET", realm, params=params, headers=headers)
        return self._token_payload(resp)

    def _token_payload(self, resp: requests.Response) -> Any:
        if resp.status_code in (401, 403):
            raise AuthError(f"{self.registry}: credentials rejected by the token service (HTTP {resp.status_code})")
        if resp.status_code != 200:
            raise AuthError(f"{self.registry}: token service answered {error_message(resp)[0]}")
        try:
            return resp.json()
        except ValueError:
            raise AuthError(f"{self.registry}: token service answered something that is not JSON") from None

    def _send_plain(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """A request outside the registry API (token service): retried, redirects followed by requests."""
        return self._with_retries(
            lambda: self._session.request(method, url, timeout=self.options.timeout, verify=self._verify, **kwargs),
            method,
            url,
        )

    # -- the request loop --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        body: Body = None,
        stream: bool = False,
        retry_transport: bool = True,
    ) -> requests.Response:
        """Send one API request, handling auth, retries and redirects. Returns the final response.

        Status codes are the caller's to judge, except that a request still unauthorized after a
        fresh token comes back as its 401/403 response. Connection errors raise ``TransportError``
        (after the retries, or at once with ``retry_transport=False``).
        """
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        scope_key = merge_scopes(scopes)
        retried_auth = False
        while True:
            resp = self._send_following(method, url, scope_key, headers, params, body, stream, retry_transport)
            if resp.status_code != 401 or retried_auth:
                return resp
            challenge = pick_challenge(parse_www_authenticate(resp.headers.get("WWW-Authenticate", "")))
            if challenge is None:
                return resp
            sent = resp.request.headers.get("Authorization") if resp.request is not None else None
            with self._lock:
                self._challenge = challenge
            if challenge.scheme == "bearer":
                if sent and sent.startswith("Bearer "):
                    self._tokens.invalidate(self.registry, scope_key, sent[len("Bearer "):])
            elif challenge.scheme == "basic":
                cred = self.credential
                if cred is None or cred.empty:
                    raise AuthError(f"{self.registry} requires authentication; run `ocibuild login {self.registry}`")
                if cred.identity_token:
                    raise AuthError(f"{self.registry} wants a password, but the stored credential is a token")
                if sent:
                    raise AuthError(f"{self.registry}: username or password rejected")
            resp.close()
            retried_auth = True

    def _send_following(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None,
        params: Any,
        body: Body,
        stream: bool,
        retry_transport: bool = True,
    ) -> requests.Response:
        """One logical request: follows redirects by hand, dropping Authorization off the registry host."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._with_retries(
                lambda: self._send_once(method, url, scopes, headers, params, body, stream),
                method,
                url,
                retry_transport,
            )
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            target = urljoin(resp.url or url, resp.headers["Location"])
            resp.close()
            if resp.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
                method, body = "GET", None
            url, params = target, None
        raise RegistryError(f"{self.registry}: too many redirects")

    def _send_once(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None,
        params: Any,
        body: Body,
        stream: bool,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        auth = self._auth_header(url, scopes)
        if auth:
            all_headers["Authorization"] = auth
        data = body() if callable(body) else body
        return self._session.request(
            method,
            url,
            headers=all_headers,
            params=params,
            data=data,
            stream=stream,
            allow_redirects=False,
            timeout=self.options.timeout,
            verify=self._verify,
        )

    def _with_retries(
        self, send: Callable[[], requests.Response], method: str, url: str, retry_transport: bool = True
    ) -> requests.Response:
        """Retry connection errors, 429 and 5xx with bounded, jittered backoff (honours Retry-After).

        ``retry_transport=False``: a connection error raises ``TransportError`` at once (an upload
        session a dropped body may have spoiled is the caller's to replace, not to resend into).
        """
        deadline = time.monotonic() + self.options.max_retry_time
        attempt = 0
        while True:
            try:
                resp = send()
            except requests.exceptions.SSLError as exc:
                if _is_cert_error(exc):
                    raise RegistryError(
                        f"TLS certificate of {host_of(url)} is not trusted; pass its CA (--ca-cert)"
                    ) from None
                raise RegistryError(f"TLS error talking to {host_of(url)}") from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                if not retry_transport or attempt >= self.options.retries or time.monotonic() >= deadline:
                    raise TransportError(
                        f"cannot reach {host_of(url)} ({type(exc).__name__}) after {attempt + 1} attempts"
                    ) from None
                delay = self._backoff(attempt)
            except requests.RequestException as exc:
                raise RegistryError(f"request to {host_of(url)} failed ({type(exc).__name__})") from None
            else:
                if resp.status_code not in RETRY_STATUSES or attempt >= self.options.retries:
                    return resp
                delay = parse_retry_after(resp.headers.get("Retry-After"))
                if delay is None:
                    delay = self._backoff(attempt)
                if time.monotonic() + delay >= deadline:
                    return resp
                resp.close()
                log.info("%s %s: HTTP %s, retrying in %.1fs", method, host_of(url), resp.status_code, delay)
            attempt += 1
            _sleep(delay)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(MAX_BACKOFF, 0.5 * (2**attempt)) * (0.5 + random.random() / 2)

    # -- API-level helpers -------------------------------------------------------------------------

    def ping(self) -> requests.Response:
        """``GET /v2/`` (no challenge answered): tells whether this is a registry and how it authenticates."""
        resp = self._with_retries(
            lambda: self._session.get(
                self.base_url + "/v2/", timeout=self.options.timeout, allow_redirects=False, verify=self._verify
            ),
            "GET",
            self.base_url,
        )
        if resp.status_code == 401:
            challenge = pick_challenge(parse_www_authenticate(resp.headers.get("WWW-Authenticate", "")))
            if challenge is not None:
                with self._lock:
                    self._challenge = challenge
        return resp

    def verify_login(self) -> None:
        """Prove the credential works: Basic on ``/v2/``, or obtain a token with it."""
        resp = self.ping()
        if resp.status_code == 200:
            return
        challenge = self._challenge
        if resp.status_code != 401 or challenge is None:
            raise RegistryError(f"{self.registry} is not a registry: GET /v2/ answered {error_message(resp)[0]}")
        if challenge.scheme == "bearer":
            self._fetch_token(challenge, ())
            return
        resp = self.request("GET", "/v2/")
        if resp.status_code != 200:
            raise AuthError(f"{self.registry}: login failed (HTTP {resp.status_code})")


def _is_cert_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "certificate" in text or "hostname" in text and "match" in text
