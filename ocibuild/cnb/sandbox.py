"""Run a buildpack's executables in a sandbox: the build image's file system, the build user, no host.

A ``Sandbox`` says what the command sees: with ``rootfs`` (a build), an overlayfs of the builder's
extracted layers with a throw-away upper directory, in private mount, PID, IPC and UTS namespaces
(and a network namespace with ``network="none"``), its own ``/proc``, a minimal ``/dev``, a private
``/tmp``, the scratch directories bound at ``/layers``, ``/workspace``, ``/platform``, and the
command running as the builder's CNB user. Without ``rootfs`` (library use: ``prepare_sandbox``) the
host's own root is bound instead and only the given directories are placed; a build never runs so.

As root the namespaces are created directly and the command switches to the build user; as an
unprivileged user a user namespace maps the caller to the build user (the kernel lets its owner
mount overlayfs there since Linux 5.11). Without subordinate ids every file of the image then
appears owned by the build user, so the root is mounted read-only, with a writable ``$HOME`` on top.

The set-up is ``_mountns.py``, run by this interpreter with ``-I -S`` (stdlib only, ~15 ms): it
reports a failed set-up on a status pipe that closes on exec, so the first run tells whether a
namespace can be had. Every run starts in a session (and process group) of its own, so that an
interrupted build can stop the buildpack and everything it started; with ``isolate`` the PID
namespace's init exits with the command, which kills whatever the command left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocibuild.cnb import _mountns
from ocibuild.cnb.errors import SandboxUnavailable
from ocibuild.cnb.rootfs import RootFS

__all__ = ["DIRECT", "Mount", "Sandbox", "SandboxUnavailable", "exit_reason", "prepare_sandbox", "stop_group"]

#: The helper script (standard library only), run by path so that it never imports ocibuild.
_HELPER = Path(_mountns.__file__)
#: Seconds an interrupted buildpack's process group has between SIGTERM and SIGKILL.
STOP_GRACE = 2.0
NETWORKS = ("host", "none")


@dataclass(frozen=True)
class Mount:
    """A host directory (or file) at ``target`` inside the sandbox."""

    source: Path
    target: str
    writable: bool = True

    def __post_init__(self) -> None:
        if not self.target.startswith("/") or ".." in Path(self.target).parts:
            raise SandboxUnavailable(f"sandbox target {self.target!r} must be an absolute path without '..'")


@dataclass(frozen=True)
class Sandbox:
    """How a command runs; ``mode`` is ``direct`` (as is, on the host), ``root`` or ``user``."""

    mounts: tuple[Mount, ...]
    mode: str
    rootfs: RootFS | None = None
    uid: int = 0
    gid: int = 0
    isolate: bool = False
    network: str = "host"
    hostname: str = ""
    readonly_root: bool = False
    home: str = ""
    files: tuple[tuple[str, str], ...] = ()
    upper: str = ""  # a host directory that keeps what the command changes (``<upper>/diff``), not a tmpfs

    def visible(self, host: Path | str) -> str:
        """The path a sandboxed command sees for host path ``host``."""
        host = Path(host).absolute()
        if self.mode == "direct":
            return str(host)
        for m in self.mounts:
            if host == m.source or m.source in host.parents:
                rel = host.relative_to(m.source)
                return m.target if str(rel) == "." else f"{m.target.rstrip('/')}/{rel}"
        for layer in self.rootfs.layers if self.rootfs is not None else ():
            if layer in host.parents:
                return f"/{host.relative_to(layer)}"
        return str(host)

    def spec(self, cwd: str, new_root: Path) -> dict:
        """The helper's instructions (see ``_mountns``)."""
        if self.rootfs is not None:
            root: dict = {"layers": [str(p) for p in self.rootfs.layers], "readonly": self.readonly_root,
                          "home": self.home, "upper": self.upper}
        else:
            root = {"host": sorted({m.target.strip("/") for m in self.mounts
                                    if m.target.strip("/") and "/" not in m.target.strip("/")})}
        return {
            "mode": self.mode, "uid": self.uid, "gid": self.gid, "root": root, "new_root": str(new_root),
            "isolate": self.isolate, "network": self.network, "hostname": self.hostname,
            "files": [list(f) for f in self.files],
            "mounts": [[str(m.source), m.target, m.writable] for m in self.mounts], "cwd": cwd,
        }

    def command(self, argv: Sequence[str], cwd: str, new_root: Path, status_fd: int) -> list[str]:
        """The argv to exec; ``new_root`` is an empty directory the helper mounts its root on and
        ``status_fd`` an inheritable pipe end it reports a failed set-up on."""
        if self.mode == "direct":
            return list(argv)
        return [sys.executable, "-I", "-S", str(_HELPER), str(status_fd),
                json.dumps(self.spec(cwd, new_root)), *argv]

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

        Raises ``SandboxUnavailable`` when the sandbox cannot be set up here.
        """
        if self.mode == "direct":
            return _run_direct(argv, cwd, env, stdout, stderr)
        with tempfile.TemporaryDirectory(prefix="ocibuild-root-") as new_root:
            read_end, write_end = os.pipe()
            try:
                with subprocess.Popen(
                    self.command(argv, cwd, Path(new_root), write_end),
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
            raise unavailable(self, reason)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run_direct(argv: Sequence[str], cwd: str, env: Mapping[str, str], stdout, stderr) -> subprocess.CompletedProcess:
    with subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            stop_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def exit_reason(returncode: int) -> str:
    """How a command ended, for an error line: ``exit status N`` or ``signal N``."""
    return f"exit status {returncode}" if returncode > 0 else f"signal {-returncode}"


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


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def namespace_hint(reason: str, mode: str) -> str:
    """What to do about a failed set-up, from what failed and the kernel's settings."""
    if "overlay" in reason:
        return ("the kernel refused overlayfs here (it needs Linux 5.11 or later in a user namespace); "
                "run as root or on a newer kernel")
    if "unshare" not in reason:
        return "check the paths given to the build"
    if mode == "root":
        return "the container lacks CAP_SYS_ADMIN (run it with --privileged or --cap-add SYS_ADMIN)"
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+): "
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root")
    if _sysctl("kernel.unprivileged_userns_clone") == "0":
        return "unprivileged user namespaces are off: sysctl -w kernel.unprivileged_userns_clone=1, or run as root"
    if _sysctl("user.max_user_namespaces") == "0" or "No space left on device" in reason:
        return ("no more user namespaces may be made (user.max_user_namespaces is reached or 0): "
                "sysctl -w user.max_user_namespaces=15000, or run as root")
    return ("no user namespace can be made here (a container without the capability, or a seccomp "
            "filter): run as root, or allow user namespaces")


def unavailable(sandbox: Sandbox, reason: str) -> SandboxUnavailable:
    what = ("the build environment" if sandbox.rootfs is not None
            else "place " + (" and ".join(m.target for m in sandbox.mounts) or "the build paths"))
    hint = namespace_hint(reason, sandbox.mode)
    if sandbox.rootfs is None:
        hint += ", or pass --layers-dir/--workspace pointing to directories you can write"
    return SandboxUnavailable(f"cannot {what if sandbox.rootfs is None else 'set up ' + what} "
                              f"({sandbox.mode} mount namespace failed: {reason}); {hint}")


DIRECT = Sandbox((), "direct")


def prepare_sandbox(mounts: Mapping[str | Path, str], *, mode: str | None = None) -> Sandbox:
    """A sandbox on the host's own root placing each host dir (key) at its absolute target path (value).

    For library use (running a buildpack on this machine); builds use ``cnb.environment``. ``mode``
    forces ``root``/``user``/``direct``; by default: ``direct`` when every host dir is already its
    target, ``root`` when running as root, else ``user``.
    """
    pairs = tuple(Mount(Path(host).absolute(), str(target)) for host, target in mounts.items())
    if mode is None:
        if all(str(m.source) == m.target for m in pairs):
            mode = "direct"
        else:
            mode = "root" if os.geteuid() == 0 else "user"
    return Sandbox(pairs, mode)


Owner = tuple[int, int]


def give(path: Path, owner: Owner | None) -> Path:
    """Hand a file or directory ocibuild made to the build user (as root; a user namespace maps ours)."""
    if owner is not None:
        os.lchown(path, *owner)
    return path


@contextlib.contextmanager
def phase_dir(prefix: str, tmp_dir: Path | None, owner: Owner | None) -> Iterator[Path]:
    """A temporary directory for one buildpack run's files (plans), under ``tmp_dir`` (a directory the
    sandbox shows to buildpacks) and owned by the build user."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=tmp_dir) as tmp:
        yield give(Path(tmp), owner)
