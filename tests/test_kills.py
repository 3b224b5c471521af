"""SIGKILL of ``ocibuild build``, ``copy`` and ``gc`` at random points, and a full disk.

Kills: one scratch directory takes 51 runs (seeded; each seed and delay is printed), each killed
after a random delay. Every few kills, ``ocibuild gc --grace 0`` then ``ocibuild fsck`` must report
a clean scratch layout (every tagged manifest complete, no torn ``index.json``, no temp file or
live lease left by a killed run), and the build's output layout must hold only verified blobs and
complete tagged images. Disk full: a 2 MB tmpfs holds the destination layout of a copy and of a
build; both fail with one error line and the layout stays valid and usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from support.images import write_image

RUNS = 51
CHECK_EVERY = 10
SEED = 20261128


def _env(scratch: Path) -> dict[str, str]:
    return dict(os.environ, OCIBUILD_SCRATCH=str(scratch), XDG_CACHE_HOME=str(scratch.parent / "xdg"))


def ocibuild(*args: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                          env=_env(scratch), timeout=120)


def check_layout(layout: Path) -> int:
    """index.json parses; every blob hashes to its name; every tagged image is complete. Returns tags."""
    if not layout.exists():
        return 0
    index = json.loads((layout / "index.json").read_bytes())
    blobs = layout / "blobs" / "sha256"
    for p in blobs.iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"unverified blob {p}"
    for entry in index["manifests"]:
        doc = json.loads((blobs / entry["digest"][7:]).read_bytes())
        for child in [doc.get("config"), *doc.get("layers", []), *doc.get("manifests", [])]:
            if child:
                assert (blobs / child["digest"][7:]).exists(), f"tagged image misses {child['digest']}"
    return len(index["manifests"])


def gc_then_fsck(scratch: Path) -> str:
    gc = ocibuild("gc", "--grace", "0", scratch=scratch)
    assert gc.returncode == 0, f"gc after kills failed: {gc.stdout}{gc.stderr}"
    fsck = ocibuild("fsck", scratch=scratch)
    assert fsck.returncode == 0 and fsck.stdout.startswith("ok:"), f"fsck after gc: {fsck.stdout}{fsck.stderr}"
    tmp = scratch / "layout" / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"temp files survived gc: {list(tmp.iterdir())}"
    return fsck.stdout.strip()


def test_sigkill_build_copy_gc_at_random_points(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    rnd = random.Random(SEED)
    src = write_image(tmp_path / "src", [{f"f{i}.bin": rnd.randbytes(300_000)} for i in range(3)], tag="v1")
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    out = tmp_path / "out"
    warm = ocibuild("build", f"oci:{out}:app", "--path", str(app), scratch=scratch)  # composes the builder once
    assert warm.returncode == 0, warm.stderr
    # Kill points are drawn within each command's measured run time, so (almost) every run is cut short.
    timed = {"build": ["build", f"oci:{out}:app", "--path", str(app)],
             "copy": ["copy", src.ref, f"oci:{scratch / 'layout'}:timing"], "gc": ["gc", "--grace", "0"]}
    max_delay = {}
    for op, argv in timed.items():
        start = time.monotonic()
        assert ocibuild(*argv, scratch=scratch).returncode == 0
        max_delay[op] = 0.9 * (time.monotonic() - start)
    print(f"kill windows (s): { {k: round(v, 3) for k, v in max_delay.items()} }")
    stats: Counter[str] = Counter()
    checks = 0
    for run in range(RUNS):
        seed = SEED + run
        r = random.Random(seed)
        op = ("build", "copy", "gc")[run % 3]
        delay = r.uniform(0.02, max_delay[op])
        if op == "build":
            argv = ["build", f"oci:{out}:app", "--path", str(app)] + (["--clear-cache"] if r.random() < 0.3 else [])
        elif op == "copy":
            argv = ["copy", src.ref, f"oci:{scratch / 'layout'}:copied-{run % 4}"]
        else:
            argv = ["gc", "--grace", "0"]
        proc = subprocess.Popen([sys.executable, "-m", "ocibuild.cli.main", *argv], env=_env(scratch),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        outcome = "killed" if proc.returncode == -signal.SIGKILL else "finished"
        stats[f"{op} {outcome}"] += 1
        print(f"kill run {run}: seed={seed} op={op} delay={delay:.3f}s {outcome} rc={proc.returncode}")
        if outcome == "finished":
            assert proc.returncode == 0, err.decode()[-2000:]
        if run % CHECK_EVERY == CHECK_EVERY - 1 or run == RUNS - 1:
            report = gc_then_fsck(scratch)
            check_layout(out)
            checks += 1
            print(f"  after run {run}: {report}")
    assert sum(v for k, v in stats.items() if k.endswith("killed")) >= RUNS // 2, stats
    # The scratch layout is still fully usable: a build and a copy complete and verify.
    assert ocibuild("build", f"oci:{out}:app", "--path", str(app), scratch=scratch).returncode == 0
    final = ocibuild("copy", src.ref, f"oci:{scratch / 'layout'}:final", scratch=scratch)
    assert final.returncode == 0, final.stderr
    gc_then_fsck(scratch)
    assert check_layout(out) >= 1
    print(f"kills: {dict(stats)}; gc+fsck checkpoints clean: {checks}")


# -- disk full ---------------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert proc.returncode == 0, f"cannot mount a tmpfs (tests run as root): {proc.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_disk_full_during_layout_writes(tmp_path: Path, small_tmpfs: Path) -> None:
    rnd = random.Random(7)
    small = write_image(tmp_path / "small", [{"a.txt": b"small\n"}], tag="v1")
    big = write_image(tmp_path / "big", [{f"f{i}.bin": rnd.randbytes(700_000)} for i in range(4)], tag="v1")
    layout = small_tmpfs / "layout"
    scratch = tmp_path / "scratch"
    assert ocibuild("copy", small.ref, f"oci:{layout}:small", scratch=scratch).returncode == 0
    before = (layout / "index.json").read_bytes()

    line = _one_line(ocibuild("copy", big.ref, f"oci:{layout}:big", scratch=scratch))
    assert "space" in line.lower(), line
    assert (layout / "index.json").read_bytes() == before  # not torn, not changed
    assert check_layout(layout) == 1
    assert not any((layout / ".tmp").iterdir()) if (layout / ".tmp").exists() else True

    # a build whose output layout is the full filesystem (fill it first so the export must fail)
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    line = _one_line(ocibuild("build", f"oci:{layout}:app", "--path", str(app), scratch=scratch))
    assert "space" in line.lower(), line
    assert (layout / "index.json").read_bytes() == before
    assert check_layout(layout) == 1
    filler.unlink()
    # the layout is still usable once there is room again
    assert ocibuild("copy", small.ref, f"oci:{layout}:again", scratch=scratch).returncode == 0
    assert check_layout(layout) == 2
