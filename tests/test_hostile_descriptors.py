"""Hostile buildpack descriptors and project files through ``ocibuild build``: one error line, non-zero
exit, no image written, the app directory untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

GOOD_BIN = {"bin/detect": "#!/bin/sh\nexit 0\n", "bin/build": "#!/bin/sh\nexit 0\n"}
BAD_BUILDPACK_TOML = {
    "malformed-toml": 'api = "0.10"\n[buildpack\nid = "x/y"',
    "missing-id": 'api = "0.10"\n[buildpack]\nversion = "1.0.0"\n',
    "missing-version": 'api = "0.10"\n[buildpack]\nid = "x/y"\n',
    "id-with-space": 'api = "0.10"\n[buildpack]\nid = "bad id"\nversion = "1.0.0"\n',
    "id-reserved-config": 'api = "0.10"\n[buildpack]\nid = "config"\nversion = "1.0.0"\n',
    "version-with-slash": 'api = "0.10"\n[buildpack]\nid = "x/y"\nversion = "../1"\n',
    "api-too-old": 'api = "0.1"\n[buildpack]\nid = "x/y"\nversion = "1.0.0"\n',
    "api-too-new": 'api = "9.99"\n[buildpack]\nid = "x/y"\nversion = "1.0.0"\n',
    "api-not-string": 'api = 0.10\n[buildpack]\nid = "x/y"\nversion = "1.0.0"\n',
    "id-wrong-type": 'api = "0.10"\n[buildpack]\nid = ["x"]\nversion = "1.0.0"\n',
    "order-wrong-type": 'api = "0.10"\n[buildpack]\nid = "x/y"\nversion = "1.0.0"\n[[order]]\ngroup = "nope"\n',
}
BAD_PROJECT_TOML = {
    "malformed": "[_\nschema-version = ",
    "env-wrong-type": '[_]\nschema-version = "0.2"\n[io.buildpacks]\nbuild.env = "x"\n',
    "group-bad-id": '[_]\nschema-version = "0.2"\n[[io.buildpacks.group]]\nid = "../x"\n',
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch directory for the module: the builder is composed once."""
    return tmp_path_factory.mktemp("descriptor-scratch")


def _run(tmp_path: Path, *args: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OCIBUILD_SCRATCH=str(scratch))
    return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "build", f"oci:{tmp_path}/out:app",
                           "--path", str(tmp_path / "app"), *args], capture_output=True, text=True, env=env, timeout=120)


def _app(tmp_path: Path, project: str | None = None) -> dict[str, bytes]:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    if project is not None:
        (app / "project.toml").write_text(project)
    return {p.name: p.read_bytes() for p in app.iterdir()}


def _refused(tmp_path: Path, proc: subprocess.CompletedProcess[str], before: dict[str, bytes]) -> None:
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert not out.exists() or json.loads((out / "index.json").read_bytes())["manifests"] == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "app").iterdir()} == before


@pytest.mark.parametrize("case", sorted(BAD_BUILDPACK_TOML))
def test_bad_buildpack_toml(tmp_path: Path, scratch: Path, case: str) -> None:
    bp = tmp_path / "bp"
    (bp / "bin").mkdir(parents=True)
    text = BAD_BUILDPACK_TOML[case]
    (bp / "buildpack.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, body in GOOD_BIN.items():
        (bp / name).write_text(body)
        (bp / name).chmod(0o755)
    before = _app(tmp_path)
    _refused(tmp_path, _run(tmp_path, "--buildpack", str(bp), scratch=scratch), before)


@pytest.mark.parametrize("case", sorted(BAD_PROJECT_TOML))
def test_bad_project_toml(tmp_path: Path, scratch: Path, case: str) -> None:
    before = _app(tmp_path, BAD_PROJECT_TOML[case])
    _refused(tmp_path, _run(tmp_path, scratch=scratch), before)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print what this module tried (run with ``-s``), for the hardening table."""
    yield
    print(f"\nhostile descriptors tried: buildpack.toml={len(BAD_BUILDPACK_TOML)} project.toml={len(BAD_PROJECT_TOML)}")
