"""Run buildpack executables so that host directories appear at the image's paths (/layers, /workspace).

Buildpacks write absolute paths (launch.toml, env files, scripts); they must resolve when the image
runs, so bin/build has to see the layers under ``/layers`` and the app under ``/workspace`` even
though ocibuild keeps them in a scratch directory. Inside a private mount namespace (as root, or as
an unprivileged user in a user namespace mapped to root) a small helper builds a tmpfs root that
bind-mounts every top-level entry of ``/``, adds the requested directories at their target paths,
``chroot``s into it and execs the buildpack. Nothing is created on the host outside the given
directories.

The helper is ``_mountns.py`` run by this interpreter with ``-I -S`` (no site, ~15 ms): mounts are
``mount(2)`` calls through ctypes, not one ``mount`` process per top-level entry, so a sandboxed run
costs about what a plain one does. It reports a failed set-up on a status pipe that closes on exec,
so the first run tells whether a namespace can be had; no separate probe run.

Every run starts in a session (and process group) of its own, so that an interrupted build can stop
the buildpack and everything it started: a CI job cancelled with SIGTERM signals ocibuild alone, and
a ``sleep`` a bin/build backgrounded would otherwise outlive the build.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ocibuild.cnb import _mountns
from ocibuild.cnb.errors import SandboxUnavailable

__all__ = ["Sandbox", "SandboxUnavailable", "prepare_sandbox", "stop_group"]

#: The helper script (standard library only), run by path so that it never imports ocibuild.
_HELPER = Path(_mountns.__file__)
#: Seconds an interrupted buildpack's process group has between SIGTERM and SIGKILL.
STOP_GRACE = 2.0


@dataclass(frozen=True)
class Sandbox:
    """How to run a command so that each host dir of ``mounts`` appears at its target path.

    ``mode`` is ``direct`` (every host dir already is its target: run as is), ``root`` (private
    mount namespace) or ``user`` (unprivileged user + mount namespace).
    """

    mounts: tuple[tuple[Path, str], ...]
    mode: str

    def visible(self, host: Path | str) -> str:
        """The path a sandboxed command sees for host path ``host``."""
        host = Path(host).absolute()
        if self.mode != "direct":
            for src, target in self.mounts:
                if host == src or src in host.parents:
                    rel = host.relative_to(src)
                    return target if str(rel) == "." else f"{target.rstrip('/')}/{rel}"
        return str(host)

    def command(self, argv: Sequence[str], cwd: str, root_dir: Path, status_fd: int) -> list[str]:
        """The argv to exec; ``root_dir`` is an empty scratch directory used as the new root and
        ``status_fd`` an inheritable pipe end the helper reports a failed set-up on."""
        if self.mode == "direct":
            return list(argv)
        skip = " ".join(t.strip("/") for _, t in self.mounts if t.strip("/") and "/" not in t.strip("/"))
        return [
            sys.executable, "-I", "-S", str(_HELPER),
            str(status_fd), self.mode, str(root_dir), cwd, str(len(self.mounts)), skip,
            *[x for src, target in self.mounts for x in (str(src), target)],
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdout=None,
        stderr=None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` (paths as seen inside) with ``cwd`` (seen inside); capture per stdout/stderr.

        Raises ``SandboxUnavailable`` when the mount namespace cannot be set up here.
        """
        if self.mode == "direct":
            with subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr,
                                  start_new_session=True) as proc:
                try:
                    out, err = proc.communicate()
                except BaseException:
                    stop_group(proc)
                    raise
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        with tempfile.TemporaryDirectory(prefix="ocibuild-root-") as root_dir:
            read_end, write_end = os.pipe()
            try:
                with subprocess.Popen(
                    self.command(argv, cwd, Path(root_dir), write_end),
                    env=dict(env), stdout=stdout, stderr=stderr, pass_fds=(write_end,), start_new_session=True,
                ) as proc:
                    try:
                        os.close(write_end)
                        write_end = -1
                        with os.fdopen(read_end, "rb") as status:
                            read_end = -1
                            reason = status.read().decode("utf-8", "replace")  # EOF at exec or exit
                        out, err = proc.communicate()
                    except BaseException:
                        stop_group(proc)
                        raise
            finally:
                for fd in (read_end, write_end):
                    if fd >= 0:
                        os.close(fd)
        if reason and proc.returncode == _mountns.SETUP_FAILED:
            raise _unavailable(self, reason)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Stop the process group ``proc`` leads (its own session): SIGTERM, then SIGKILL after ``grace``.

    Waits for ``proc`` itself; the rest of the group (children it started) are signalled, and the
    SIGKILL goes out if any of them is still there when the grace is over.
    """
    pgid = proc.pid
    if not _signal_group(pgid, signal.SIGTERM):
        proc.wait()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member changed its credentials (setuid)
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies waiting for a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    except OSError:  # pragma: no cover - no /proc: trust kill(0)
        return True
    return False


def _unavailable(sandbox: Sandbox, reason: str) -> SandboxUnavailable:
    where = " and ".join(t for _, t in sandbox.mounts) or "the build paths"
    hint = (
        "run as root"
        if sandbox.mode == "root"
        else "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / "
        "user.max_user_namespaces), run as root"
    )
    return SandboxUnavailable(
        f"cannot place {where} for buildpacks ({sandbox.mode} mount namespace failed: {reason}); "
        f"{hint}, or pass --layers-dir/--workspace pointing to directories you can write"
    )


DIRECT = Sandbox((), "direct")


def prepare_sandbox(mounts: Mapping[str | Path, str], *, mode: str | None = None) -> Sandbox:
    """A sandbox placing each host dir (key) at its absolute target path (value).

    ``mode`` forces ``root``/``user``/``direct``; by default: ``direct`` when every host dir is
    already its target, ``root`` when running as root, else ``user``. Whether a mount namespace can
    be had is learnt on the first ``run`` (it raises ``SandboxUnavailable`` with what to do).
    """
    pairs = []
    for host, target in mounts.items():
        if not str(target).startswith("/") or ".." in Path(target).parts:
            raise SandboxUnavailable(f"sandbox target {target!r} must be an absolute path without '..'")
        pairs.append((Path(host).absolute(), str(target)))
    if mode is None:
        if all(str(h) == t for h, t in pairs):
            mode = "direct"
        else:
            mode = "root" if os.geteuid() == 0 else "user"
    return Sandbox(tuple(pairs), mode)
