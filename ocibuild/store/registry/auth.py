"""Registry authentication: challenges, scopes, credentials and the bearer token cache.

Tokens are cached per (registry, scope set) because a token's grant is the intersection of what
was asked and what is allowed: a token asked for ``pull`` never grows into ``push``, and a mount
needs one token covering both repositories. Nothing here ever puts a secret in a message or repr.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ocibuild.errors import AuthError

DEFAULT_TOKEN_TTL = 60.0
# Refresh a little early so a token does not expire between the check and the request.
_EXPIRY_MARGIN = 5.0


@dataclass(frozen=True)
class Credential:
    """Username/password, or an identity (refresh) token. Masked in every repr."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        kind = "identity-token" if self.identity_token else "password"
        return f"Credential(username={self.username!r}, {kind}=***)"

    __str__ = __repr__

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope")
        return tuple(scope.split()) if scope else ()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges, tolerating quoted commas and several challenges in one header.

    ``Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push", Basic realm="r"``
    gives two challenges. Parameter names are lower-cased; malformed trailing junk is ignored.
    """
    challenges: list[Challenge] = []
    pos, n = 0, len(header)
    current: dict[str, str] | None = None
    scheme = ""

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and header[pos] in chars:
            pos += 1

    while pos < n:
        skip(" \t,")
        if pos >= n:
            break
        m = _TOKEN.match(header, pos)
        if not m:
            pos += 1  # junk: skip one character and resynchronise
            continue
        word = m.group(0)
        after = m.end()
        probe = after
        while probe < n and header[probe] in " \t":
            probe += 1
        if probe < n and header[probe] == "=" and current is not None and not header.startswith("==", probe):
            # a parameter of the current challenge
            pos = probe + 1
            skip(" \t")
            if pos < n and header[pos] == '"':
                pos += 1
                value_chars: list[str] = []
                while pos < n and header[pos] != '"':
                    if header[pos] == "\\" and pos + 1 < n:
                        pos += 1
                    value_chars.append(header[pos])
                    pos += 1
                pos += 1  # closing quote
                value = "".join(value_chars)
            else:
                vm = re.compile(r"[^,\s]*").match(header, pos)
                value = vm.group(0) if vm else ""
                pos = vm.end() if vm else pos
            current[word.lower()] = value
            continue
        # a new challenge: scheme, maybe followed by a token68 we ignore
        if current is not None:
            challenges.append(Challenge(scheme, current))
        scheme, current = word.lower(), {}
        pos = after
        skip(" \t")
        t68 = re.compile(r"[A-Za-z0-9._~+/-]+=*(?=\s*(,|$))").match(header, pos)
        if t68 and "=" not in header[pos:t68.end()].rstrip("="):
            pos = t68.end()
    if current is not None:
        challenges.append(Challenge(scheme, current))
    return challenges


def pick_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """Bearer if offered (scoped, short-lived), else Basic; other schemes are not supported."""
    by_scheme = {c.scheme: c for c in challenges}
    return by_scheme.get("bearer") or by_scheme.get("basic")


def _split_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``type:name:actions`` where name may contain ``host:port``: split on the first and last colon."""
    kind, sep, rest = scope.partition(":")
    if not sep:
        return None
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Union of scopes: actions merged per resource, everything sorted (a stable cache key)."""
    merged: dict[tuple[str, str], set[str]] = {}
    odd: set[str] = set()
    for scope in scopes:
        for item in scope.split():
            parts = _split_scope(item)
            if parts is None:
                odd.add(item)
                continue
            kind, name, actions = parts
            merged.setdefault((kind, name), set()).update(actions)
    out = [f"{kind}:{name}:{','.join(sorted(actions))}" for (kind, name), actions in merged.items()]
    return tuple(sorted(out + sorted(odd)))


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float

    def __repr__(self) -> str:
        return f"_Token(***, expires_at={self.expires_at})"


class TokenCache:
    """Bearer tokens per (registry, scope set), with expiry. Thread-safe."""

    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._clock = clock

    def get(self, registry: str, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            token = self._tokens.get((registry, scopes))
            if token is None:
                return None
            if token.expires_at <= self._clock():
                del self._tokens[(registry, scopes)]
                return None
            return token.value

    def put(self, registry: str, scopes: tuple[str, ...], value: str, expires_in: float | None) -> None:
        ttl = DEFAULT_TOKEN_TTL if not expires_in or expires_in <= 0 else float(expires_in)
        with self._lock:
            self._tokens[(registry, scopes)] = _Token(value, self._clock() + max(ttl - _EXPIRY_MARGIN, 1.0))

    def invalidate(self, registry: str, scopes: tuple[str, ...], value: str | None = None) -> None:
        with self._lock:
            token = self._tokens.get((registry, scopes))
            if token is not None and (value is None or token.value == value):
                del self._tokens[(registry, scopes)]

    def __repr__(self) -> str:
        return f"TokenCache({len(self._tokens)} tokens)"


def token_from_response(payload: object, host: str) -> tuple[str, float | None, str | None]:
    """(token, expires_in, refresh_token) from a token endpoint's JSON reply."""
    if not isinstance(payload, dict):
        raise AuthError(f"token service for {host} answered something that is not a JSON object")
    token = payload.get("token") or payload.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError(f"token service for {host} answered without a token")
    expires_in = payload.get("expires_in")
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool):
        expires_in = None
    refresh = payload.get("refresh_token")
    return token, expires_in, refresh if isinstance(refresh, str) and refresh else None
