"""ocibuild's sh launcher run directly (dash and busybox sh): env suffix rules, process choice, user
arguments, exec.d and errors, each as the lifecycle's launcher (launch/process.go, launcher.go) does."""

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
        LaunchProcess("web", ("printenv",), direct=True, buildpack_id="new/bp"),
        LaunchProcess("script", ("echo \"V=$V\" \"$(echo sub)\"",), buildpack_id="old_bp"),
        LaunchProcess("it's", ("echo",), args=("quoted $V", "a b"), buildpack_id="old_bp"),
        # User arguments (Platform API >= 0.10): a command with arguments keeps them and the user's
        # replace `args`; a one-word command's `args` are replaced (buildpack API >= 0.9) or
        # appended to (older buildpacks); a process whose buildpack is unknown cannot take any.
        LaunchProcess("always", ("echo", "always 1"), args=("dflt",), direct=True, buildpack_id="new/bp"),
        LaunchProcess("new", ("echo",), args=("dflt",), direct=True, buildpack_id="new/bp"),
        LaunchProcess("old", ("echo",), args=("dflt",), direct=True, buildpack_id="old_bp"),
        LaunchProcess("orphan", ("echo",), args=("dflt",), direct=True, buildpack_id="gone"),
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
    # Platform API >= 0.4: the process is the one argv[0] names; any other name (an unknown type,
    # or "launcher") means no default process, so a command is required.
    proc = _exec(shell, tmp_path, "missing")
    assert proc.returncode != 0
    assert proc.stderr == "ERROR: launcher: when there is no default process a command is required\n"
    proc = _exec(shell, tmp_path, "launcher")
    assert proc.returncode != 0 and "when there is no default process a command is required" in proc.stderr
    # CNB_PROCESS_TYPE is only warned about: it neither picks a process nor its env.launch/<type>.
    proc = _exec(shell, tmp_path, "launcher", env={"CNB_PROCESS_TYPE": "script"})
    assert proc.returncode != 0 and proc.stdout == ""
    assert "CNB_PROCESS_TYPE is not supported in Platform API 0.12" in proc.stderr
    proc = _exec(shell, tmp_path, "launcher", "printenv", env={"CNB_PROCESS_TYPE": "web"})
    assert proc.returncode == 0, proc.stderr
    assert "Run with ENTRYPOINT 'web' to invoke the 'web' process type" in proc.stderr
    assert "WEB_ONLY=w" not in proc.stdout and "OVR=over" in proc.stdout


def test_launcher_runs_the_user_command(shell: str, tmp_path: Path) -> None:
    # No default process: the arguments are a shell process (profiles sourced, each token expanded)
    # in the launch env of every layer, but no env.launch/<type>.
    proc = _exec(shell, tmp_path, "launcher", "echo", "$V", "$OVR", "$(echo sub)")
    assert (proc.returncode, proc.stdout) == (0, "from-profile over sub\n"), proc.stderr
    proc = _exec(shell, tmp_path, "launcher", 'echo "script $V"')
    assert (proc.returncode, proc.stdout) == (0, "script from-profile\n"), proc.stderr
    # "--" first: a direct process, arguments passed verbatim and no profiles.
    proc = _exec(shell, tmp_path, "launcher", "--", "echo", "$V", "it's")
    assert (proc.returncode, proc.stdout) == (0, "$V it's\n"), proc.stderr
    proc = _exec(shell, tmp_path, "launcher", "--", "printenv")
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert env["OVR"] == "over" and "V" not in env and "WEB_ONLY" not in env
    # A lone "--" is the command itself (the lifecycle needs a second word to go direct).
    proc = _exec(shell, tmp_path, "launcher", "--")
    assert proc.returncode != 0 and proc.stdout == ""
    # Via /cnb/process/<type> the type is the process and user arguments go to it.
    proc = _exec(shell, tmp_path, "new", "u1")
    assert (proc.returncode, proc.stdout) == (0, "u1\n"), proc.stderr


def test_legacy_platform_picks_the_process_by_env_or_argument(shell: str, tmp_path: Path) -> None:
    legacy = {"CNB_PLATFORM_API": "0.3"}
    proc = _exec(shell, tmp_path, "launcher", env={**legacy, "CNB_PROCESS_TYPE": "script"})
    assert (proc.returncode, proc.stdout) == (0, "V=from-profile sub\n"), proc.stderr
    proc = _exec(shell, tmp_path, "launcher", "old", env=legacy)  # one argument naming a type
    assert (proc.returncode, proc.stdout) == (0, "dflt\n"), proc.stderr
    proc = _exec(shell, tmp_path, "launcher", "echo", "x", env=legacy)
    assert (proc.returncode, proc.stdout) == (0, "x\n"), proc.stderr
    proc = _exec(shell, tmp_path, "launcher", env=legacy)  # default: web
    assert proc.returncode == 0 and "WEB_ONLY=w" in proc.stdout, proc.stderr
    proc = _exec(shell, tmp_path, "web", env={"CNB_PLATFORM_API": "0.12x"})
    assert proc.stderr == "ERROR: launcher: platform API 0.12x is not <major>.<minor>\n"


@pytest.mark.parametrize(("name", "args", "platform", "out"), [
    ("always", ["u 1", "u2"], "0.12", "always 1 u 1 u2"),
    ("always", [], "0.12", "always 1 dflt"),
    ("new", ["u 1", "u2"], "0.12", "u 1 u2"),
    ("new", [], "0.12", "dflt"),
    ("old", ["u 1"], "0.12", "dflt u 1"),
    ("new", ["u 1"], "0.9", "dflt u 1"),  # Platform API < 0.10: always appended
    ("always", ["u 1"], "0.9", "always 1 dflt u 1"),
    ("orphan", [], "0.12", "dflt"),
    ("new", ["it's", "$V", ""], "0.12", "it's $V "),  # passed verbatim, empty ones kept
])
def test_user_args_follow_the_buildpack_api(shell: str, tmp_path: Path, name: str, args: list[str],
                                            platform: str, out: str) -> None:
    proc = _exec(shell, tmp_path, name, *args, env={"CNB_PLATFORM_API": platform})
    assert (proc.returncode, proc.stdout) == (0, out + "\n"), proc.stderr


def test_user_args_need_the_process_buildpack(shell: str, tmp_path: Path) -> None:
    proc = _exec(shell, tmp_path, "orphan", "u1")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr == ("ERROR: launcher: failed to find buildpack for process orphan with buildpack ID gone\n")


def _put_exec(layers: Path, rel: str, body: str) -> None:
    path = layers / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_exec_d_output_is_exported_before_profiles(shell: str, tmp_path: Path) -> None:
    layers, _ = _setup(tmp_path)
    # In order: exec.d/ then exec.d/<type>/ of each layer, buildpacks in group order; each sees the
    # env so far (env dirs, then earlier exec.d output) and its keys override.
    _put_exec(layers, "new_bp/l1/exec.d/10-first", r"""echo first-stdout
printf '%s\n' '# a comment' '' 'OVR = "execd"  # trailing comment' >&3
printf '  ESC\t=\t"q\\"b\\\\s\\nnext\\tt" \n' >&3
printf 'SAW_APP = "%s"\n' "$APP" >&3
printf '%s\n' 'RAW = "$(echo no) `echo no` $HOME ${X:-y} * ~"' >&3
printf 'LAST = "no newline"' >&3
""")
    _put_exec(layers, "new_bp/l1/exec.d/20-second", 'printf \'CHAIN = "%s+%s"\\n\' "$OVR" "$PWD" >&3\n')
    _put_exec(layers, "new_bp/l1/exec.d/web/30-typed", "echo 'TYPED = \"web\"' >&3\n")
    _put_exec(layers, "new_bp/l1/exec.d/script/30-typed", "echo 'TYPED = \"script\"' >&3\n")
    _put_exec(layers, "old_bp/l2/exec.d/10-old", "echo 'OLD = \"ran\"' >&3\n")  # API 0.4: no exec.d
    _put_exec(layers, "new_bp/l1/profile.d/q.sh", 'export PROF_SAW="$OVR"\n')
    proc = _exec(shell, tmp_path, "web")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("first-stdout\n")  # an exec.d's stdout is the launcher's
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert env["OVR"] == "execd" and env["SAW_APP"] == "start|tail" and env["LAST"] == "no newline"
    assert env["CHAIN"] == f"execd+{tmp_path / 'app'}" and env["TYPED"] == "web" and "OLD" not in env
    assert 'ESC=q"b\\s\nnext\tt\n' in proc.stdout
    assert env["RAW"] == "$(echo no) `echo no` $HOME ${X:-y} * ~"  # data, never evaluated
    # Shell processes source profile.d after exec.d; a user command gets no exec.d/<type>/.
    proc = _exec(shell, tmp_path, "launcher", "echo", "$PROF_SAW", "${TYPED:-none}")
    assert (proc.returncode, proc.stdout) == (0, "first-stdout\nexecd none\n"), proc.stderr


@pytest.mark.parametrize(("body", "message"), [
    ("exit 3\n", "failed (exit status 3)"),
    ("echo '[table]' >&3\n", "line 1: unsupported TOML (only KEY = \"string\" lines): [table]"),
    ("printf 'A = \"1\"\\nB = 2\\n' >&3\n", "line 2: unsupported TOML"),
    ("echo \"C = 'lit'\" >&3\n", "unsupported TOML"),
    ("echo 'D-E = \"x\"' >&3\n", "unsupported TOML"),
    ("echo 'F = \"\\u0041\"' >&3\n", "unsupported TOML"),
    ("echo 'G = \"open' >&3\n", "unsupported TOML"),
    ("echo 'H = \"x\" y' >&3\n", "unsupported TOML"),
    ("echo 'I = \"\"\"x\"\"\"' >&3\n", "unsupported TOML"),
])
def test_exec_d_failures_stop_the_launch(shell: str, tmp_path: Path, body: str, message: str) -> None:
    layers, _ = _setup(tmp_path)
    _put_exec(layers, "new_bp/l1/exec.d/bad", body)
    proc = _exec(shell, tmp_path, "web")
    assert proc.returncode != 0 and "OVR=" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: launcher: exec.d ")
    assert message in lines[0] and lines[0].startswith(f"ERROR: launcher: exec.d {layers}/new_bp/l1/exec.d/bad")
