"""The suite's sentinel password never leaks: login, copy both ways, build to the Basic-auth registry,
failing auth and ``--debug`` tracebacks through the real CLI; then stdout, stderr, every file of the
scratch directory (the ledger database included), the registry's own log and in-process log records
(DEBUG, urllib3 included) and exception texts are searched for it, plain and as Basic base64.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocibuild import api
from ocibuild.errors import OCIBuildError
from ocibuild.store.registry import RegistryOptions

from support.images import write_image
from support.registry import BASIC_USERNAME, RegistryServer


def _forms(password: str) -> tuple[str, ...]:
    return (password, base64.b64encode(f"{BASIC_USERNAME}:{password}".encode()).decode(),
            base64.b64encode(password.encode()).decode().rstrip("="))


class Runner:
    def __init__(self, tmp: Path, registry: RegistryServer):
        self.tmp, self.registry = tmp, registry
        self.outputs: list[str] = []
        self.env = dict(os.environ, HOME=str(tmp / "home"), DOCKER_CONFIG=str(tmp / "docker"),
                        OCIBUILD_SCRATCH=str(tmp / "scratch"), XDG_CACHE_HOME=str(tmp / "cache"))
        for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
            self.env.pop(var, None)

    def __call__(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
                 ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *self.registry.ocibuild_args(), *args],
                              capture_output=True, text=True, input=stdin, env={**self.env, **(env or {})}, timeout=180)
        self.outputs += [proc.stdout, proc.stderr]
        assert (proc.returncode == 0) == ok, f"{args}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        return proc


def test_sentinel_never_leaks_through_the_cli(tmp_path: Path, basic_registry: RegistryServer,
                                              sentinel_password: str, fresh_repo: str) -> None:
    wrong = "WRONG-" + sentinel_password[::-1]
    run = Runner(tmp_path, basic_registry)
    host = basic_registry.host
    image = write_image(tmp_path / "src", [{"hello.txt": b"hi\n"}])
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    mark = basic_registry.log_mark()

    # failing logins first (nothing stored), then the real one
    run("login", host, "-u", BASIC_USERNAME, "--password-stdin", stdin=wrong + "\n", ok=False)
    run("--debug", "login", host, "-u", BASIC_USERNAME, "-p", wrong, ok=False)
    run("login", host, "-u", BASIC_USERNAME, "--password-stdin", stdin=sentinel_password + "\n")
    target = basic_registry.ref(fresh_repo, "v1")
    run("copy", image.ref, target)
    run("--debug", "copy", target, f"oci:{tmp_path}/back:v1")
    run("inspect", target)
    run("tags", basic_registry.ref(fresh_repo))
    run("build", basic_registry.ref(fresh_repo, "built"), "--path", str(app))
    # --debug tracebacks: a missing tag, then a wrong stored password, then no credentials at all
    run("--debug", "copy", basic_registry.ref(fresh_repo, "missing"), f"oci:{tmp_path}/none:x", ok=False)
    bad_config = tmp_path / "bad-docker"
    bad_config.mkdir()
    (bad_config / "config.json").write_text(
        '{"auths":{"%s":{"auth":"%s"}}}' % (host, base64.b64encode(f"{BASIC_USERNAME}:{wrong}".encode()).decode()))
    run("--debug", "copy", image.ref, basic_registry.ref(fresh_repo, "v2"), env={"DOCKER_CONFIG": str(bad_config)}, ok=False)
    run("--debug", "build", basic_registry.ref(fresh_repo, "b2"), "--path", str(app),
        env={"DOCKER_CONFIG": str(bad_config)}, ok=False)
    run("--debug", "inspect", target, env={"DOCKER_CONFIG": str(tmp_path / "empty")}, ok=False)
    run("logout", host)

    secrets = _forms(sentinel_password) + _forms(wrong)
    for out in run.outputs:
        for s in secrets:
            assert s not in out, f"credential in command output:\n{out[-1500:]}"
    assert any("Traceback" in out for out in run.outputs), "--debug printed no traceback to search"
    files = [p for root in (tmp_path / "scratch", tmp_path / "cache", tmp_path / "back", tmp_path / "home")
             if root.exists() for p in root.rglob("*") if p.is_file()]
    assert any(p.name.endswith((".db", ".sqlite", ".sqlite3")) or "ledger" in p.name for p in files), \
        f"no ledger database among {sorted(str(p.relative_to(tmp_path)) for p in files)[:20]}"
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"credential in {p}"
    log = basic_registry.log_since(mark)
    for s in secrets:
        assert s not in log, "credential in the registry's log"


def test_sentinel_never_in_log_records_or_exceptions(tmp_path: Path, basic_registry: RegistryServer,
                                                     sentinel_password: str, fresh_repo: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    image = write_image(tmp_path / "src")
    good = basic_registry.write_auth_file(tmp_path / "auth.json")
    bad = tmp_path / "bad.json"
    bad.write_text(good.read_text().replace(
        base64.b64encode(f"{BASIC_USERNAME}:{sentinel_password}".encode()).decode(),
        base64.b64encode(f"{BASIC_USERNAME}:x{sentinel_password}x".encode()).decode()))
    caplog.set_level(logging.DEBUG)
    target = basic_registry.ref(fresh_repo, "v1")
    api.copy(image.ref, target, options=RegistryOptions(auth_file=str(good)))
    errors: list[BaseException] = []
    for auth_file, ref in ((bad, target), (good, basic_registry.ref(fresh_repo, "nope"))):
        try:
            api.copy(ref, f"oci:{tmp_path}/back:x", options=RegistryOptions(auth_file=str(auth_file)))
        except OCIBuildError as exc:
            errors.append(exc)
    assert len(errors) == 2
    text = "\n".join(r.getMessage() for r in caplog.records) + "".join(
        f"{e}{e!r}{e.__cause__!r}{e.__context__!r}{e.args!r}" for e in errors)
    assert caplog.records, "no log records to search"
    for s in _forms(sentinel_password):
        assert s not in text
