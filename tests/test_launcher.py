"""ocibuild's sh launcher run directly (dash and busybox sh): env suffix rules, process choice, errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ocibuild.cnb.launcher import LaunchProcess, launcher_bytes, render_process_table


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    layers, app = tmp_path / "layers", tmp_path / "app"
    app.mkdir()
    procs = [
        LaunchProcess("web", ("printenv",), direct=True),
        LaunchProcess("script", ("echo \"V=$V\" \"$(echo sub)\"",)),
        LaunchProcess("it's", ("echo", "quoted $V"), args=("a b",)),
    ]
    (layers / "config").mkdir(parents=True)
    (layers / "config" / "launch.sh").write_bytes(
        render_process_table([("new_bp", "0.10"), ("old_bp", "0.4")], procs, "web"))
    def put(rel: str, text: str) -> None:
        p = layers / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    put("new_bp/l1/env/OVR", "over")  # no suffix, API >= 0.5: override
    put("new_bp/l1/env/DEF.default", "default")
    put("new_bp/l1/env/KEEP.default", "not used")
    put("new_bp/l1/env/APP.append", "tail")
    put("new_bp/l1/env/APP.delim", "|")
    put("new_bp/l1/env/PRE.prepend", "head")  # no delim file: concatenated
    put("new_bp/l1/env.launch/web/WEB_ONLY", "w")
    put("new_bp/l1/env.build/BUILD_ONLY", "never at launch")
    put("new_bp/l1/env/NL.override", "line\n")  # exact bytes, trailing newline kept
    put("old_bp/l2/env/OLDPATH", "/old")  # API < 0.5: prepended with ':'
    (layers / "new_bp" / "l1" / "bin").mkdir()
    put("new_bp/l1/profile.d/p.sh", "export V=from-profile\n")
    launcher = tmp_path / "launcher"
    launcher.write_bytes(launcher_bytes())
    launcher.chmod(0o755)
    return layers, launcher


@pytest.fixture(params=["dash", "busybox"])
def shell(request, tmp_path: Path) -> list[str]:
    if request.param == "busybox":
        # busybox runs the applet named by argv[0]: call it as "sh".
        link = tmp_path / "sh"
        link.symlink_to(shutil.which("busybox") or "/bin/busybox")
        return str(link)
    return shutil.which("dash") or "/bin/sh"


def _exec(shell: str, tmp_path: Path, name: str, *args: str, env: dict | None = None):
    layers, launcher = (tmp_path / "layers", tmp_path / "launcher") if (tmp_path / "app").exists() else _setup(tmp_path)
    link_dir = tmp_path / "cnb" / "process"
    link_dir.mkdir(parents=True, exist_ok=True)
    (link_dir / name).unlink(missing_ok=True)
    (link_dir / name).symlink_to(launcher)
    full = {"PATH": "/cnb/process:/cnb/lifecycle:/usr/bin:/bin", "CNB_LAYERS_DIR": str(layers),
            "CNB_APP_DIR": str(tmp_path / "app"), "KEEP": "mine", "APP": "start", "PRE": "rest",
            "OLDPATH": "/base", "CNB_PLATFORM_API": "0.12", **(env or {})}
    return subprocess.run([shell, str(link_dir / name), *args], env=full, capture_output=True, text=True, timeout=20)


def test_env_rules_direct_process(shell: str, tmp_path: Path) -> None:
    proc = _exec(shell, tmp_path, "web")
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert env["OVR"] == "over" and env["DEF"] == "default" and env["KEEP"] == "mine"
    assert env["APP"] == "start|tail" and env["PRE"] == "headrest"
    assert env["WEB_ONLY"] == "w" and "BUILD_ONLY" not in env
    assert env["OLDPATH"] == "/old:/base"
    assert env["PATH"].split(":")[0] == str(tmp_path / "layers" / "new_bp" / "l1" / "bin")
    assert "/cnb/process" not in env["PATH"].split(":") and "/cnb/lifecycle" not in env["PATH"].split(":")
    assert not any(k in env for k in ("CNB_LAYERS_DIR", "CNB_APP_DIR", "CNB_PLATFORM_API"))
    assert "V" not in env  # direct processes get no profile.d
    assert "NL=line" in proc.stdout and "NL=line\n\n" in proc.stdout + "\n"


def test_shell_process_sources_profiles(shell: str, tmp_path: Path) -> None:
    proc = _exec(shell, tmp_path, "script")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "V=from-profile sub\n"
    # Token mode (args present): each word expanded, then executed; extra args appended.
    proc = _exec(shell, tmp_path, "it's", "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "quoted from-profile a b x\n"


def test_process_choice_and_errors(shell: str, tmp_path: Path) -> None:
    proc = _exec(shell, tmp_path, "missing")
    assert proc.returncode != 0 and "process type missing was not found" in proc.stderr
    # Invoked as "launcher": CNB_PROCESS_TYPE picks the process; else the default.
    proc = _exec(shell, tmp_path, "launcher", env={"CNB_PROCESS_TYPE": "script"})
    assert proc.stdout == "V=from-profile sub\n", proc.stderr
    proc = _exec(shell, tmp_path, "launcher")
    assert "WEB_ONLY=w" in proc.stdout
