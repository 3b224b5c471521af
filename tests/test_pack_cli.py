"""pack's command line as pack users type it: global options after the command, build's pack flags,
project.toml as pack reads it, refusals of what ocibuild cannot honour, and rebase's --tag.

Every command runs the real CLI in a subprocess (``test_build.ocibuild``) against the real registry
fixtures; images are judged with skopeo where that says more than ocibuild's own view.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ocibuild.cli.main import app as typer_app
from support.images import write_image
from support.tools import require_tool
from test_build import HELLO, ocibuild

GLOBALS = ("--registry", "--insecure-registry", "--ca-cert", "--debug", "--quiet")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(HELLO, dest)
    return dest


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ocibuild: error:"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def skopeo_digest(ref: str, *tls: str) -> str:
    require_tool("skopeo")
    out = subprocess.run(["skopeo", "inspect", *tls, "--format", "{{.Digest}}", ref], capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip()


# -- B. global options after the command ------------------------------------------------------------
def _leaf_commands(command, path=()):  # noqa: ANN001, ANN202
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for name, sub in subcommands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path


def test_every_commands_help_lists_the_global_options(tmp_path: Path) -> None:
    from typer.main import get_command

    commands = list(_leaf_commands(get_command(typer_app)))
    assert ("build",) in commands and ("builder", "create") in commands and ("copy",) in commands
    for path in commands:
        proc = ocibuild(*path, "--help", scratch=tmp_path / "scratch")
        for option in GLOBALS:
            assert option in proc.stdout, (path, option, proc.stdout)


def test_build_takes_registry_after_the_command_for_image_and_builder(tmp_path: Path, app: Path, registry,
                                                                     fresh_repo: str) -> None:
    from ocibuild.cnb.defaults import BUILDER_TAG

    scratch = tmp_path / "scratch"
    # A first build makes the embedded builder; it is then pushed to the registry as a short name.
    ocibuild("build", f"oci:{tmp_path}/warm:app", "--path", str(app), scratch=scratch)
    ocibuild("copy", f"oci:{scratch}/layout:{BUILDER_TAG}", f"{fresh_repo}-builder:1", "--registry", registry.host,
             scratch=scratch)
    proc = ocibuild("build", f"{registry.host}/{fresh_repo}:1", "--builder", f"{fresh_repo}-builder:1",
                    "--registry", registry.host, "--path", str(app), scratch=scratch)
    digest = proc.stdout.strip().splitlines()[-1]
    assert skopeo_digest(f"docker://{registry.host}/{fresh_repo}:1", "--tls-verify=false") == digest
    # A short IMAGE uses the same --registry.
    short = ocibuild("build", f"{fresh_repo}:2", "--registry", registry.host, "--path", str(app), "-q",
                     scratch=scratch)
    assert skopeo_digest(f"docker://{registry.host}/{fresh_repo}:2", "--tls-verify=false") \
        == short.stdout.strip().splitlines()[-1]


def test_the_commands_registry_wins_over_the_one_before_it(tmp_path: Path, registry, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    built = write_image(tmp_path / "src", ({"a.txt": b"a"},), tag="v1")
    ocibuild("copy", f"oci:{tmp_path}/src:v1", f"{fresh_repo}:1", "--registry", registry.host, scratch=scratch)
    # 192.0.2.1 (TEST-NET-1) is never contacted: the command's --registry replaces it.
    proc = ocibuild("--registry", "192.0.2.1:9", "digest", f"{fresh_repo}:1", "--registry", registry.host,
                    scratch=scratch)
    assert proc.stdout.strip() == built.manifest.digest


def test_copy_takes_insecure_registry_and_quiet_after_the_command(tmp_path: Path, tls_registry,
                                                                  fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    built = write_image(tmp_path / "src", ({"a.txt": b"tls"},), tag="v1")
    dest = f"docker://{tls_registry.host}/{fresh_repo}:1"
    refused = ocibuild("copy", f"oci:{tmp_path}/src:v1", dest, scratch=scratch, check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
    proc = ocibuild("copy", f"oci:{tmp_path}/src:v1", dest, "--insecure-registry", tls_registry.host, "-q",
                    scratch=scratch)
    assert proc.stdout.strip() == built.manifest.digest
    assert proc.stderr == ""  # -q after the command: no notes, no progress
    assert skopeo_digest(dest, "--cert-dir", str(tls_registry.cert_dir)) == built.manifest.digest
    # --ca-cert after the command trusts the private CA (TLS checked, not turned off).
    again = ocibuild("digest", dest, "--ca-cert", str(tls_registry.ca_cert), scratch=scratch)
    assert again.stdout.strip() == built.manifest.digest


def test_ca_cert_and_debug_after_the_command(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    missing = ocibuild("digest", "localhost:5000/x:1", "--ca-cert", str(tmp_path / "nope.pem"), scratch=scratch,
                       check=False)
    assert missing.returncode == 2 and "nope.pem: no such file" in missing.stderr
    plain = ocibuild("digest", f"oci:{tmp_path}/absent:v1", scratch=scratch, check=False)
    assert plain.returncode != 0 and "Traceback" not in plain.stderr
    debug = ocibuild("digest", f"oci:{tmp_path}/absent:v1", "--debug", scratch=scratch, check=False)
    assert debug.returncode == plain.returncode and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]
