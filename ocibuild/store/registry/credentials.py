"""Where registry credentials come from, and ``login``/``logout`` that write them as docker does.

Lookup order (first file with an entry for the host wins), as skopeo and crane read them:
explicit ``auth_file``, ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``. Within a file: ``credHelpers[host]``,
then ``auths``, then ``credsStore``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ocibuild.errors import AuthError, UsageError
from ocibuild.oci.reference import DOCKER_HUB, normalize_registry
from ocibuild.store.registry.auth import Credential

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_KEYS = (DOCKER_HUB_KEY, "docker.io", "index.docker.io", "registry-1.docker.io")
_HELPER_TIMEOUT = 60


def registry_key(key: str) -> str | None:
    """Normalise a config key (``https://host/v1/``, ``host/ns/repo``) to a registry host, or None."""
    text = key.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host = text.split("/", 1)[0]
    try:
        return normalize_registry(host)
    except UsageError:
        return None


def server_url(registry: str) -> str:
    """The server URL docker uses for a registry in config keys and credential helpers."""
    registry = normalize_registry(registry)
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def candidate_files(auth_file: str | None = None) -> list[Path]:
    out: list[Path] = []
    if auth_file:
        out.append(Path(auth_file))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if os.environ.get("DOCKER_CONFIG"):
        out.append(Path(os.environ["DOCKER_CONFIG"]) / "config.json")
    out.append(Path.home() / ".docker" / "config.json")
    return out


def default_config_path() -> Path:
    """The docker config file ``login`` writes."""
    if os.environ.get("DOCKER_CONFIG"):
        return Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read credentials file %s: %s", path, exc.strerror)
        return None
    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        raise AuthError(f"credentials file {path} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise AuthError(f"credentials file {path} is not a JSON object")
    return doc


def _decode_entry(entry: Any, path: Path) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    identity = entry.get("identitytoken") or None
    username, password = entry.get("username") or "", entry.get("password") or ""
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise AuthError(f"credentials file {path}: an 'auth' entry is not base64 user:password") from None
        if ":" not in decoded:
            raise AuthError(f"credentials file {path}: an 'auth' entry is not base64 user:password")
        username, password = decoded.split(":", 1)
    if not (username or password or identity):
        return None
    return Credential(str(username), str(password), str(identity) if identity else None)


def _auths_entry(auths: Any, registry: str, path: Path) -> Credential | None:
    if not isinstance(auths, dict):
        return None
    exact: list[Any] = []
    scoped: list[Any] = []
    for key, entry in auths.items():
        if not isinstance(key, str) or registry_key(key) != registry:
            continue
        stripped = key.split("://", 1)[-1].rstrip("/")
        (scoped if "/" in stripped and not stripped.endswith(("/v1", "/v2")) else exact).append(entry)
    for entry in exact + scoped:
        cred = _decode_entry(entry, path)
        if cred is not None:
            return cred
    return None


def _helper_for(doc: dict[str, Any], registry: str) -> str | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(key, str) and registry_key(key) == registry and isinstance(helper, str) and helper:
                return helper
    return None


def _run_helper(helper: str, action: str, payload: str) -> str | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise AuthError(f"credential helper docker-credential-{helper} is not on PATH")
    try:
        proc = subprocess.run(
            [exe, action], input=payload.encode("utf-8"), capture_output=True, timeout=_HELPER_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"credential helper docker-credential-{helper} {action} failed: {type(exc).__name__}") from None
    if proc.returncode != 0:
        out = proc.stdout.decode("utf-8", "replace").strip()
        if action in ("get", "erase") and "credentials not found" in out.lower():
            return None
        # helper output may echo secrets: report only the exit code
        raise AuthError(f"credential helper docker-credential-{helper} {action} exited {proc.returncode}")
    return proc.stdout.decode("utf-8", "replace")


def helper_get(helper: str, registry: str) -> Credential | None:
    out = _run_helper(helper, "get", server_url(registry))
    if not out:
        return None
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise AuthError(f"credential helper docker-credential-{helper} printed something that is not JSON") from None
    if not isinstance(doc, dict):
        return None
    username, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    if not secret and not username:
        return None
    if username == "<token>":
        return Credential("", "", secret)
    return Credential(username, secret)


def lookup(registry: str, auth_file: str | None = None) -> Credential | None:
    """The credential for ``registry`` (HOST[:PORT]; Docker Hub aliases accepted), or None (anonymous)."""
    registry = normalize_registry(registry)
    for path in candidate_files(auth_file):
        doc = _read_config(path)
        if doc is None:
            continue
        helper = _helper_for(doc, registry)
        if helper:
            cred = helper_get(helper, registry)
            if cred is not None:
                return cred
            continue
        cred = _auths_entry(doc.get("auths"), registry, path)
        if cred is not None:
            return cred
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            cred = helper_get(store, registry)
            if cred is not None:
                return cred
    return None


def _write_config(path: Path, doc: dict[str, Any]) -> None:
    """Atomic write with mode 0600: temp file in the same directory, fsync, rename.

    A symlinked config.json (dotfile managers) is written through, as docker does: the rename
    replaces the file the link points to (even a dangling link's target), never the link itself.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(doc, indent="\t").encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _drop_keys(auths: dict[str, Any], registry: str) -> bool:
    removed = False
    for key in list(auths):
        if registry_key(key) == registry:
            del auths[key]
            removed = True
    return removed


def save(registry: str, credential: Credential, config_path: str | os.PathLike[str] | None = None) -> Path:
    """Store a (verified) credential in the docker config, keeping every other entry."""
    registry = normalize_registry(registry)
    path = Path(config_path) if config_path else default_config_path()
    doc = _read_config(path) or {}
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    helper = _helper_for(doc, registry) or (doc.get("credsStore") if isinstance(doc.get("credsStore"), str) else None)
    _drop_keys(auths, registry)
    if helper:
        username = "<token>" if credential.identity_token else credential.username
        secret = credential.identity_token or credential.password
        payload = json.dumps({"ServerURL": server_url(registry), "Username": username, "Secret": secret})
        _run_helper(helper, "store", payload)
    else:
        entry: dict[str, str] = {}
        if credential.username or credential.password:
            raw = f"{credential.username}:{credential.password}".encode("utf-8")
            entry["auth"] = base64.b64encode(raw).decode("ascii")
        if credential.identity_token:
            entry["identitytoken"] = credential.identity_token
        auths[server_url(registry)] = entry
    doc["auths"] = auths
    _write_config(path, doc)
    return path


def login(
    registry: str,
    username: str,
    password: str,
    config_path: str | os.PathLike[str] | None = None,
    options: Any = None,
) -> Path:
    """Verify ``username``/``password`` against the registry, then store them. Returns the file written.

    Raises ``AuthError`` (nothing written) when the registry refuses them.
    """
    from ocibuild.store.registry.client import RegistryClient, RegistryOptions

    registry = normalize_registry(registry)
    if not username or not password:
        raise UsageError("login needs a username and a password")
    credential = Credential(username, password)
    client = RegistryClient(registry, options or RegistryOptions(), credential=credential)
    try:
        client.verify_login()
    finally:
        client.close()
    return save(registry, credential, config_path)


def logout(registry: str, config_path: str | os.PathLike[str] | None = None) -> bool:
    """Forget the credential for ``registry``. Returns False when there was nothing to forget."""
    registry = normalize_registry(registry)
    path = Path(config_path) if config_path else default_config_path()
    doc = _read_config(path)
    if doc is None:
        return False
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    removed = _drop_keys(auths, registry)
    helper = _helper_for(doc, registry) or (doc.get("credsStore") if isinstance(doc.get("credsStore"), str) else None)
    if helper:
        if _run_helper(helper, "erase", server_url(registry)) is not None:
            removed = True
    if removed:
        doc["auths"] = auths
        _write_config(path, doc)
    return removed
