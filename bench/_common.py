"""Shared helpers for the benchmark scripts: peers run in the same invocation, ratios printed.

Benchmarks are not tests: they print a table and never assert. Every figure is compared as a ratio
against a peer measured in the same run, because the shared machine's absolute speed drifts.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.support (the real registry fixture) and a source checkout


@dataclass
class Run:
    seconds: float
    max_rss_mib: float
    cpu_seconds: float = 0.0  # user + system time of the child (and its children)


def _peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Run:
    """Run ``cmd`` to completion; wall time, CPU time and the child's peak RSS.

    The peak is VmHWM polled every 10 ms: wait4's ru_maxrss would report the benchmark's own RSS,
    which a forked child inherits as its high-water mark until exec.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _peak_rss_kib(proc.pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(seconds, peak / 1024, cpu)


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SystemExit(f"{name} is not installed: run ./run-tests once (it installs the peers) or apt-get install it")
    return path


def ocibuild_cmd() -> list[str]:
    """The console script beside this interpreter (a pyenv shim on PATH would add 0.1 s of bash)."""
    exe = Path(sys.executable).parent / "ocibuild"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ocibuild")
    return [found] if found else [sys.executable, "-m", "ocibuild.cli.main"]


def installed_ocibuild(site: Path) -> list[str]:
    """The command that runs ocibuild as ``pip install`` leaves it: a venv whose ``ocibuild`` package
    is a bytecode-compiled copy of this checkout, with the dependencies of the project's venv.

    This checkout is an editable install: its import finder maps ``ocibuild`` to the working tree
    ahead of ``sys.path`` (so PYTHONPATH cannot override it), and the sandbox sets
    PYTHONDONTWRITEBYTECODE, so every run of the working tree compiles ~30 modules from source
    (~0.1 s of CPU a user never pays; skopeo is a compiled binary). The venv made here sees the
    dependencies' directory as a plain path entry, without its ``.pth`` files and so without the
    editable finder. Nothing is written into the working tree.
    """
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(site / "venv")
    lib = site / "lib"
    shutil.copytree(REPO / "ocibuild", lib / "ocibuild", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(lib / "ocibuild")], check=True,
                   stdout=subprocess.DEVNULL)
    python = site / "venv" / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            check=True, capture_output=True, text=True).stdout.strip()
    deps = sysconfig.get_path("purelib")  # this interpreter's site-packages: the project's venv
    Path(target, "ocibuild-bench.pth").write_text(f"{lib}\n{deps}\n")
    script = site / "venv" / "bin" / "ocibuild"
    script.write_text(f"#!{python}\nimport sys\nfrom ocibuild.cli.main import run\nsys.exit(run())\n")
    script.chmod(0o755)
    return [str(script)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


def scratch_dir(prefix: str) -> Path:
    base = os.environ.get("OCIBUILD_BENCH_DIR") or tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
