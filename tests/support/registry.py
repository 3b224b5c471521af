"""Debian's real registry (distribution 2.8.2) as a throw-away test peer.

Each ``RegistryServer`` is one ``docker-registry serve`` process with its own config, storage root and
combined log (application log and access log in one file) under a private directory, listening on a
free loopback port. Three flavours: plain HTTP, htpasswd Basic auth, and TLS with a private CA.
Tests read the access log through ``log_mark()``/``access_since(mark)`` to assert what a client
really sent, and overwrite ``blob_data_path(digest)`` to test digest verification (this registry
does not re-verify blobs it serves).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import requests

from .tools import require_tool

REGISTRY_BINARY = "/usr/bin/docker-registry"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

#: The password of every Basic-auth registry of this test run. Unusual on purpose: hardening tests
#: grep command output, logs and files for it to prove credentials never leak.
SENTINEL_PASSWORD = f"s3ntinel-Pa55-{secrets.token_hex(6)}"
BASIC_USERNAME = "ocibuild-tester"

Kind = Literal["plain", "basic", "tls"]

_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)
_SETTLE_PATH = "/v2/?ocibuild-test-settle="


@dataclass(frozen=True)
class AccessEntry:
    """One access-log line: what a client asked and what the registry answered."""

    method: str
    uri: str
    status: int
    user: str

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]


@dataclass
class RegistryServer:
    """A running ``docker-registry serve`` process and everything a test needs to know about it."""

    kind: Kind
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    # -- addresses -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.kind == "tls" else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def ref(self, repository: str, tag: str | None = None) -> str:
        """``HOST:PORT/REPO[:TAG]``, the Docker-style reference of a repository here."""
        return f"{self.host}/{repository}" + (f":{tag}" if tag else "")

    def skopeo_ref(self, repository: str, tag: str | None = None) -> str:
        return "docker://" + self.ref(repository, tag)

    # -- files -----------------------------------------------------------------------------
    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    @property
    def config(self) -> Path:
        return self.root / "config.yml"

    @property
    def cert_dir(self) -> Path:
        """A directory holding ``ca.crt`` (the TLS registry's CA), as skopeo/podman ``--cert-dir`` want."""
        return self.root / "certs.d"

    def blob_data_path(self, digest: object) -> Path:
        """Where the registry keeps a blob's bytes (``digest`` is a ``Digest`` or its string)."""
        algorithm, _, hexpart = str(digest).partition(":")
        if algorithm != "sha256" or len(hexpart) != 64:
            raise ValueError(f"not a sha256 digest: {digest}")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def auth_config(self) -> dict[str, object]:
        """A Docker ``config.json`` document holding this registry's credentials."""
        if self.username is None or self.password is None:
            return {"auths": {}}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"auths": {self.host: {"auth": token}}}

    def write_auth_file(self, path: Path) -> Path:
        """Write ``auth_config()`` to ``path`` (mode 0600) and return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.auth_config(), f)
        return path

    def ocibuild_args(self) -> list[str]:
        """Global ``ocibuild`` options that reach this registry (put them before the command).

        Credentials are not options: pass ``REGISTRY_AUTH_FILE=write_auth_file(...)`` in the environment.
        """
        if self.kind == "tls":
            return ["--ca-cert", str(self.ca_cert)]
        return ["--insecure-registry", self.host]

    # -- talking to it directly (for setup and assertions, not as the client under test) ------
    def session(self) -> requests.Session:
        """A ``requests`` session that trusts this registry's CA and carries its credentials."""
        s = requests.Session()
        s.trust_env = False  # no proxy or netrc from the environment between us and loopback
        if self.ca_cert is not None:
            s.verify = str(self.ca_cert)
        if self.username is not None and self.password is not None:
            s.auth = (self.username, self.password)
        return s

    def get(self, path: str, **kwargs: object) -> requests.Response:
        with self.session() as s:
            return s.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    # -- logs ------------------------------------------------------------------------------
    def log_mark(self) -> int:
        """A point in the log (its current size); pass it to ``log_since``/``access_since``."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int, settle: bool = True) -> str:
        """The log text written since ``mark``.

        The access line of a request is written just after its response is sent, so by default
        this first makes a marker request and waits for its line: every request a test completed
        before calling this is then in the log.
        """
        if settle:
            self.settle()
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def access_since(self, mark: int, settle: bool = True) -> list[AccessEntry]:
        """The access-log entries since ``mark``, without the marker requests of ``settle``."""
        entries = []
        for line in self.log_since(mark, settle=settle).splitlines():
            m = _ACCESS_LINE.match(line)
            if m is None or m["uri"].startswith(_SETTLE_PATH):
                continue
            entries.append(AccessEntry(m["method"], m["uri"], int(m["status"]), m["user"]))
        return entries

    def settle(self, timeout: float = 5.0) -> None:
        token = uuid.uuid4().hex
        mark = self.log_mark()
        try:
            with self.session() as s:
                s.get(self.url + _SETTLE_PATH + token, timeout=timeout)
        except requests.RequestException as exc:
            pytest.fail(f"registry {self.host} did not answer: {exc}\n{self.log_tail()}", pytrace=False)
        needle = (_SETTLE_PATH + token).encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(mark)
                if needle + b" HTTP/" in f.read():
                    return
            time.sleep(0.005)
        pytest.fail(f"registry {self.host} did not log a marker request within {timeout:g}s", pytrace=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------------
    def alive(self) -> bool:
        return _alive(self.process)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; always reaps the process."""
        if self._stopped:
            return
        self._stopped = True
        _terminate(self.process)
        if self in _LIVE:
            _LIVE.remove(self)


# ---------------------------------------------------------------------------------------------
_LIVE: list[RegistryServer] = []


def start_registry(
    root: Path,
    kind: Kind = "plain",
    *,
    config_overrides: Mapping[str, Any] | None = None,
    attempts: int = 3,
) -> RegistryServer:
    """Start a registry of ``kind`` under ``root`` (created) and wait until it answers ``/v2/``.

    ``config_overrides`` is deep-merged into the generated configuration (e.g.
    ``{"storage": {"delete": {"enabled": False}}}``). A registry that does not come up fails the
    test with the reason and the tail of its log.
    """
    binary = require_tool(REGISTRY_BINARY)
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage").mkdir(exist_ok=True)
    extra: dict[str, Any] = {}
    http: dict[str, Any] = {"secret": "ocibuild-test-secret"}
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if kind == "basic":
        htpasswd = _write_htpasswd(root / "htpasswd", BASIC_USERNAME, SENTINEL_PASSWORD)
        extra.update(username=BASIC_USERNAME, password=SENTINEL_PASSWORD)
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}
    elif kind == "tls":
        ca, cert, key = make_tls_files(root / "tls")
        (root / "certs.d").mkdir(exist_ok=True)
        (root / "certs.d" / "ca.crt").write_bytes(ca.read_bytes())
        extra.update(ca_cert=ca, cert=cert, key=key)
        http["tls"] = {"certificate": str(cert), "key": str(key)}
    elif kind != "plain":
        raise ValueError(f"unknown registry kind {kind!r}")

    last_error = ""
    for _ in range(attempts):
        port = free_port()
        http["addr"] = f"127.0.0.1:{port}"
        document = _merge(config, config_overrides or {})
        # JSON is valid YAML: no quoting surprises whatever the paths hold.
        (root / "config.yml").write_text(json.dumps(document, indent=2))
        with open(root / "registry.log", "ab") as log:
            process = subprocess.Popen(
                [binary, "serve", str(root / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        server = RegistryServer(kind=kind, root=root, port=port, process=process, **extra)
        _LIVE.append(server)
        ready, last_error = _wait_ready(server)
        if ready:
            return server
        server.stop()
        if "address already in use" not in server.log_tail(10):
            break  # not a port race: retrying will not help
    pytest.fail(
        f"docker-registry ({kind}) did not become ready within {READY_TIMEOUT:g}s: {last_error}\n"
        f"--- log tail ({root / 'registry.log'}) ---\n{_tail_text(root / 'registry.log')}",
        pytrace=False,
    )
    raise AssertionError("unreachable")


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no registry outlives a killed run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@atexit.register
def _stop_all() -> None:
    for server in _LIVE:
        server.stop()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(server: RegistryServer) -> tuple[bool, str]:
    expected = 401 if server.kind == "basic" else 200
    verify: str | bool = str(server.ca_cert) if server.ca_cert else True
    deadline = time.monotonic() + READY_TIMEOUT
    error = "no answer"
    with requests.Session() as s:
        s.trust_env = False  # a proxy from the environment must not stand between us and loopback
        while time.monotonic() < deadline:
            if not server.alive():
                return False, f"process exited with {server.process.poll()}"
            try:
                r = s.get(server.url + "/v2/", verify=verify, timeout=1)
                if r.status_code == expected:
                    return True, ""
                error = f"GET /v2/ answered {r.status_code}, expected {expected}"
            except requests.RequestException as exc:
                error = type(exc).__name__
            time.sleep(0.02)
    return False, error


def _alive(process: subprocess.Popen[bytes]) -> bool:
    """True while the process runs; a zombie (state Z/X in /proc/PID/stat) counts as dead."""
    if process.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if not _alive(process):
            break
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(process):
            time.sleep(0.01)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state): leave it to init rather than hang the session


def _write_htpasswd(path: Path, username: str, password: str) -> Path:
    import bcrypt  # test extra; imported here so plain registries do not need it

    # Cost 4 (the minimum): the registry checks the hash on every request, and cost 12 costs ~0.2 s each.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
    path.write_text(f"{username}:{hashed}\n")
    path.chmod(0o600)
    return path


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost: ``(ca.pem, cert.pem, key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocibuild test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def _tail_text(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log file)"


RegistryFactory = Callable[..., RegistryServer]
