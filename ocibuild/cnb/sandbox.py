"""Run buildpack executables so that host directories appear at the image's paths (/layers, /workspace).

Buildpacks write absolute paths (launch.toml, env files, scripts); they must resolve when the image
runs, so bin/build has to see the layers under ``/layers`` and the app under ``/workspace`` even
though ocibuild keeps them in a scratch directory. Inside a private mount namespace (as root, or as
an unprivileged user in a user namespace mapped to root) a small helper builds a tmpfs root that
bind-mounts every top-level entry of ``/``, adds the requested directories at their target paths,
``chroot``s into it and execs the buildpack. Nothing is created on the host outside the given
directories.

The helper is this interpreter running ``_HELPER`` with ``-I -S`` (no site, ~15 ms): mounts are
``mount(2)`` calls through ctypes, not one ``mount`` process per top-level entry, so a sandboxed run
costs about what a plain one does. It reports a failed set-up on a status pipe that closes on exec,
so the first run tells whether a namespace can be had; no separate probe run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ocibuild.cnb.errors import SandboxUnavailable

__all__ = ["Sandbox", "SandboxUnavailable", "prepare_sandbox"]

#: Exit status of the helper when the namespace or a mount could not be set up (reason on the pipe).
_SETUP_FAILED = 125

# argv: status-fd mode new-root cwd n-mounts skip-names (host target)*n command...
_HELPER = r"""
import ctypes, errno, os, sys
status, mode, root, cwd, n, skip = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), set(sys.argv[6].split())
pairs, argv = sys.argv[7:7 + 2 * n], sys.argv[7 + 2 * n:]
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def enc(s):
    return None if s is None else os.fsencode(s)
def mount(src, dst, fstype, flags, data=None):
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s on %s: %s" % (src, dst, os.strerror(e)))
def fail(msg):
    os.write(status, msg.encode("utf-8", "replace"))
    os._exit(125)
try:
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(0x00020000 | (0x10000000 if mode == "user" else 0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "unshare: " + os.strerror(e))
    if mode == "user":
        for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
            with open("/proc/self/" + name, "w") as fh:
                fh.write(text)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("ocibuild-root", root, "tmpfs", 0, "mode=0755")
    for name in os.listdir("/"):
        if name in skip:
            continue
        src, dst = "/" + name, root + "/" + name
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            mount(src, dst, None, MS_BIND | MS_REC)
        else:
            open(dst, "w").close()
            mount(src, dst, None, MS_BIND)
    for i in range(0, len(pairs), 2):
        os.makedirs(root + pairs[i + 1], exist_ok=True)
        mount(pairs[i], root + pairs[i + 1], None, MS_BIND | MS_REC)
    os.chroot(root)
    os.chdir(cwd)
except OSError as err:
    fail(str(err))
os.set_inheritable(status, False)
try:
    os.execvpe(argv[0], argv, os.environ)
except OSError as err:
    sys.stderr.write("%s: %s\n" % (argv[0], err.strerror))
    os._exit(126 if err.errno in (errno.EACCES, errno.ENOEXEC) else 127)
"""


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
            sys.executable, "-I", "-S", "-c", _HELPER,
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
            return subprocess.run(list(argv), cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr, check=False)
        with tempfile.TemporaryDirectory(prefix="ocibuild-root-") as root_dir:
            read_end, write_end = os.pipe()
            try:
                with subprocess.Popen(
                    self.command(argv, cwd, Path(root_dir), write_end),
                    env=dict(env), stdout=stdout, stderr=stderr, pass_fds=(write_end,),
                ) as proc:
                    os.close(write_end)
                    write_end = -1
                    with os.fdopen(read_end, "rb") as status:
                        read_end = -1
                        reason = status.read().decode("utf-8", "replace")  # EOF at exec or exit
                    out, err = proc.communicate()
            finally:
                for fd in (read_end, write_end):
                    if fd >= 0:
                        os.close(fd)
        if reason and proc.returncode == _SETUP_FAILED:
            raise _unavailable(self, reason)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
