"""How ``ocibuild build`` ends when it is stopped or its output goes nowhere, and what it shows.

SIGTERM/SIGHUP (a cancelled CI job, a closed terminal) clean up as Ctrl-C does: the lease is
released, its ephemeral builder collected, the work directory removed and the buildpack's whole
process group stopped. Detection failures show the buildpacks' output; ``build -q`` prints only the
digest; a closed stdout pipe ends a command silently (141). Buildpacks are written per test into
``tmp_path``: real scripts run by the real sandbox.
"""

from __future__ import annotations

import json
import secrets
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "examples" / "hello"
PROCFILE = "ocibuild/procfile@0.1.0"


def _env(scratch: Path) -> dict[str, str]:
    return dict(os.environ, OCIBUILD_SCRATCH=str(scratch))


def ocibuild(*args: str, scratch: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                          env=_env(scratch), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"ocibuild {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def write_buildpack(root: Path, name: str, detect: str, build: str = "exit 0") -> Path:
    """A buildpack directory with shell bin/detect and bin/build (API 0.10)."""
    bp = root / name
    (bp / "bin").mkdir(parents=True)
    (bp / "buildpack.toml").write_text(
        f'api = "0.10"\n\n[buildpack]\nid = "test/{name}"\nversion = "1.0.0"\nname = "test {name}"\n'
    )
    for script, body in (("detect", detect), ("build", build)):
        path = bp / "bin" / script
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bp


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _process_running(*argv: str, wait: float = 10.0) -> int:
    """The host pid of the one process whose command line is ``argv`` (a backgrounded child may
    still be a copy of its shell for a moment after the shell went on)."""
    want = [a.encode() for a in argv]
    deadline = time.monotonic() + wait
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cmdline").read_bytes().split(b"\0")[:-1] == want:
                        found.append(int(entry.name))
                except OSError:
                    continue
        if len(found) == 1 or time.monotonic() > deadline:
            assert len(found) == 1, f"{argv}: {found}"
            return found[0]
        time.sleep(0.02)


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


def ephemeral_rows(scratch: Path) -> list:
    rows = json.loads(ocibuild("ledger", "--ephemeral", "--json", scratch=scratch).stdout)
    return rows if isinstance(rows, list) else rows.get("objects", rows)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(HELLO, dest)
    return dest


# -- 1. SIGTERM / SIGHUP ------------------------------------------------------------------------------

@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_stop_signal_mid_build_cleans_up_like_ctrl_c(tmp_path: Path, app: Path, signum: int, code: int) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    pids.chmod(0o777)  # the build user writes there through the volume
    seconds = str(3000 + secrets.randbelow(5000))  # finds the sleep among this machine's processes
    # bin/build backgrounds a sleep and waits: the shell dies of the signal, the sleep would not.
    sleepy = write_buildpack(tmp_path / "bps", "sleepy", "exit 0",
                             f"sleep {seconds} &\necho started > /pids/started.tmp\nmv /pids/started.tmp /pids/started\nwait")
    scratch = tmp_path / "scratch"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocibuild.cli.main", "build", f"oci:{tmp_path}/out:app", "--path", str(app),
         "--buildpack", str(sleepy), "--buildpack", PROCFILE, "--volume", f"{pids}:/pids:rw"],
        env=_env(scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Python keeps SIGINT ignored when it starts with it ignored (pytest run in the background).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (pids / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the buildpack never started"
            time.sleep(0.05)
        sleeper = _process_running("sleep", seconds)
        shell = _parent_of(sleeper)
        assert alive(sleeper) and alive(shell)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == code, err
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last == f"ocibuild: error: interrupted ({signal.Signals(signum).name})", err
    assert "Traceback" not in err
    assert not alive(shell) and not alive(sleeper), "a buildpack process outlived the build"
    assert ephemeral_rows(scratch) == []
    assert not any((scratch / "work").iterdir())
    fsck = ocibuild("fsck", "--json", scratch=scratch, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


# -- 2. Detection output ------------------------------------------------------------------------------

def test_errored_detect_shows_its_output_and_results_before_the_error(tmp_path: Path, app: Path) -> None:
    boom = write_buildpack(tmp_path / "bps", "boom", 'echo "boom: cannot read $PWD/nothing" >&2\nexit 3')
    proc = ocibuild("build", f"oci:{tmp_path}/out:app", "--path", str(app), "--buildpack", str(boom),
                    scratch=tmp_path / "scratch", check=False)
    assert proc.returncode == 21, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ocibuild: error: No buildpack groups passed detection."), proc.stderr
    start = lines.index("======== Output: test/boom@1.0.0 ========")
    assert lines[start + 1] == "boom: cannot read /workspace/nothing"
    assert lines[start + 2:start + 4] == ["======== Results ========", "err:  test/boom@1.0.0 (3)"]
    assert proc.stderr.count("======== Output: test/boom@1.0.0 ========") == 1
    assert proc.stdout == ""


def test_failed_detect_shows_everything_with_verbose_and_nothing_without(tmp_path: Path, app: Path) -> None:
    nope = write_buildpack(tmp_path / "bps", "nope", 'echo "nope: no Nopefile"\nexit 100')
    args = ("build", f"oci:{tmp_path}/out:app", "--path", str(app), "--buildpack", str(nope))
    plain = ocibuild(*args, scratch=tmp_path / "scratch", check=False)
    assert plain.returncode == 20, plain.stderr
    assert "======== " not in plain.stderr  # lifecycle: fail lines and outputs are debug-level
    verbose = ocibuild(*args, "-v", scratch=tmp_path / "scratch", check=False)
    assert verbose.returncode == 20, verbose.stderr
    lines = verbose.stderr.strip().splitlines()
    i = lines.index("======== Output: test/nope@1.0.0 ========")
    assert lines[i + 1:i + 4] == ["nope: no Nopefile", "======== Results ========", "fail: test/nope@1.0.0"]
    assert lines[-1] == "ocibuild: error: No buildpack groups passed detection."


# -- 3. build -q ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["command", "global"])
def test_quiet_build_prints_only_the_digest(tmp_path: Path, app: Path, where: str) -> None:
    loud = write_buildpack(tmp_path / "bps", "loud", 'echo "LOUD DETECT"; echo "LOUD DETECT ERR" >&2; exit 0',
                           'echo "LOUD BUILD"; echo "LOUD BUILD ERR" >&2')
    args = ["build", f"oci:{tmp_path}/out:app", "--path", str(app), "--buildpack", str(loud),
            "--buildpack", PROCFILE]
    args = [*args, "-q"] if where == "command" else ["-q", *args]
    proc = ocibuild(*args, scratch=tmp_path / "scratch")
    assert proc.stderr == ""
    assert proc.stdout.startswith("sha256:") and proc.stdout.count("\n") == 1, proc.stdout
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == proc.stdout.strip()


def test_quiet_build_still_prints_the_error_line(tmp_path: Path, app: Path) -> None:
    bad = write_buildpack(tmp_path / "bps", "bad", "exit 0", 'echo "BAD BUILD OUTPUT"\nexit 1')
    proc = ocibuild("build", f"oci:{tmp_path}/out:app", "--path", str(app), "--buildpack", str(bad), "-q",
                    scratch=tmp_path / "scratch", check=False)
    assert proc.returncode == 51
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["ocibuild: error: buildpack test/bad@1.0.0: bin/build failed (exit status 1)"]


# -- 4. A closed stdout pipe ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [3, 2000])  # flushed at exit / failing mid-command
def test_closed_stdout_pipe_ends_quietly_with_141(tmp_path: Path, count: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from support.images import write_image

    layout = tmp_path / "layout"
    info = write_image(layout, tag="t0000")
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    index["manifests"] = [
        {**entry, "annotations": {"org.opencontainers.image.ref.name": f"t{i:04d}-{'x' * 40}"}}
        for i in range(count)
    ]
    (layout / "index.json").write_text(json.dumps(index))
    assert info.manifest
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (``head -1``) is gone
    try:
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "tags", f"oci:{layout}"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=_env(tmp_path / "scratch"),
                              timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


# -- 5. Rebase syncs the base labels -------------------------------------------------------------------

def test_rebase_replaces_the_old_run_images_base_labels(tmp_path: Path) -> None:
    """lifecycle SyncLabels: io.buildpacks.stack.* / io.buildpacks.base.* of the old run image go."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cnb_export_support import make_layers_dir, make_run_image

    from ocibuild.cnb.export import ExportOptions, RunImageSource, export
    from ocibuild.cnb.rebase import rebase
    from ocibuild.oci.manifest import ImageConfig, Manifest
    from ocibuild.store.base import load_config, load_manifest, put_bytes
    from ocibuild.store.layout import LayoutStore

    def relabel(store: LayoutStore, tag: str, labels: dict[str, str]) -> None:
        _d, manifest = load_manifest(store, tag)
        doc = load_config(store, manifest.config).to_dict()
        doc.setdefault("config", {})["Labels"] = labels
        cfg = ImageConfig.build(doc)
        put_bytes(store, cfg.descriptor(), cfg.raw)
        changed = Manifest.build(cfg.descriptor(), manifest.layers)
        store.put_manifest(changed.descriptor(), changed.raw, tag=tag)

    make_layers_dir(tmp_path)
    runs = LayoutStore(tmp_path / "runs", create=True)
    make_run_image(runs, "v1", marker="run-1")
    make_run_image(runs, "v2", marker="run-2")
    relabel(runs, "v1", {"io.buildpacks.stack.id": "example.stack", "io.buildpacks.stack.mixins": '["curl"]',
                         "io.buildpacks.base.maintainer": "old maintainer", "org.example.team": "web"})
    relabel(runs, "v2", {"io.buildpacks.stack.id": "example.stack", "io.buildpacks.base.distro.name": "debian"})
    app = LayoutStore(tmp_path / "app", create=True)
    export(app, "app", RunImageSource(runs, "v1", "example.com/run:v1"),
           ExportOptions(layers_dir=tmp_path / "layers", app_dir=tmp_path / "workspace"))
    before = load_config(app, load_manifest(app, "app")[1].config).labels
    assert before["io.buildpacks.stack.mixins"] == '["curl"]'
    assert before["io.buildpacks.base.maintainer"] == "old maintainer"

    res = rebase(app, "app", runs, "v2", new_run_name="example.com/run:v2", dst_tag="rebased")
    labels = dict(res.config.labels)
    assert "io.buildpacks.stack.mixins" not in labels
    assert "io.buildpacks.base.maintainer" not in labels
    assert labels["io.buildpacks.base.distro.name"] == "debian"
    assert labels["io.buildpacks.stack.id"] == "example.stack"
    # Everything else stays: other labels the app inherited, and the lifecycle's own.
    assert labels.get("org.example.team") == before.get("org.example.team")
    assert {k for k in before if not k.startswith(("io.buildpacks.stack.", "io.buildpacks.base."))} <= set(labels)


# -- Sandbox.run: an interrupted run stops the buildpack's whole process group ------------------------

_INTERRUPTED_RUN = """
import os, signal, sys, time
from ocibuild.cnb.sandbox import DIRECT, prepare_sandbox

def interrupt(_signum, _frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGALRM, interrupt)
mode, mount, pidfile = sys.argv[1:]
sandbox = DIRECT if mode == "direct" else prepare_sandbox({mount: "/ocibuild-signal-test"})
# The shell and its sleep ignore SIGTERM: only the SIGKILL after the grace stops them.
script = f"trap '' TERM; sleep 30 & echo $$ $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"
signal.setitimer(signal.ITIMER_REAL, 1.0)
start = time.monotonic()
try:
    sandbox.run(["/bin/sh", "-c", script], cwd="/", env={"PATH": os.environ["PATH"]})
except KeyboardInterrupt:
    print(sandbox.mode, round(time.monotonic() - start, 1))
"""


@pytest.mark.parametrize("mode", ["direct", "namespace"])
def test_interrupted_sandbox_run_kills_the_group_after_the_grace(tmp_path: Path, mode: str) -> None:
    from ocibuild.cnb.sandbox import STOP_GRACE

    pidfile = tmp_path / "pids"
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_RUN, mode, str(tmp_path / "mnt"), str(pidfile)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    shown_mode, elapsed = proc.stdout.split()
    assert shown_mode == ("direct" if mode == "direct" else ("root" if os.geteuid() == 0 else "user"))
    assert 1.0 + STOP_GRACE - 0.3 <= float(elapsed) < 1.0 + STOP_GRACE + 5
    shell, sleeper = (int(x) for x in pidfile.read_text().split())
    assert not alive(shell) and not alive(sleeper)
