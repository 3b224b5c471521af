"""The sandbox's set-up, run as a script: namespaces, the root file system, the build user, exec.

Run by ``ocibuild.cnb.sandbox`` as ``python -I -S _mountns.py STATUS_FD SPEC_JSON COMMAND...``, which
imports it only for its path and constants. Standard library only, so the interpreter starts in about
15 ms; ``mount(2)``, ``unshare(2)`` and ``pivot_root(2)`` are called through ctypes.

SPEC (JSON): ``mode`` ``root`` (real root: no user namespace) or ``user`` (a user namespace mapping the
caller to ``uid``/``gid``); ``uid``/``gid`` the identity the command runs as; ``root`` either
``{"layers": [dirs, lowest first], "readonly": bool, "home": path, "upper": dir}`` (an overlayfs of the
image's extracted layers over a throw-away tmpfs upper, or over ``<upper>/diff`` when given) or
``{"host": [names to skip]}`` (the host's top-level entries bound on a tmpfs: for library use, never for
a build); ``new_root`` an empty directory; ``isolate`` (PID, IPC and UTS namespaces, ``/proc``, a
minimal ``/dev``, a private ``/tmp``); ``network`` ``host`` or ``none`` (a network namespace with only
loopback); ``hostname``; ``files`` (host files bound read-only, ``/etc/resolv.conf``...); ``mounts``
(``[src, dst, rw]``); ``cwd``.

With ``isolate``, the process forks a PID 1 for the new PID namespace, which forks the command and
reaps; when the command exits, PID 1 exits with its status and the kernel kills whatever the command
left running in the namespace. Both die with their parent (``PR_SET_PDEATHSIG``). A set-up failure is
written to ``STATUS_FD`` (closed on exec) and exits 125; a command that cannot be executed exits
126/127, as a shell does.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
SETUP_FAILED = 125
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class SetupError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else os.fsencode(s) for s in (src, dst, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {fstype or src} on {dst}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


# -- namespaces ------------------------------------------------------------------------------------
def unshare(spec: dict) -> None:
    """The user namespace first (so the others belong to it), then mount/PID/IPC/UTS/network."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if spec["mode"] == "user":
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(user namespace)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{spec['uid']} {outer_uid} 1")
        _write("/proc/self/gid_map", f"{spec['gid']} {outer_gid} 1")
    flags = CLONE_NEWNS
    if spec.get("isolate"):
        flags |= CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if spec.get("network") == "none":
        flags |= CLONE_NEWNET
    _check(_libc.unshare(flags), "unshare")


# -- the root file system -----------------------------------------------------------------------------
def _overlay(layers: list[str], target: str, upper: str, work: str) -> None:
    """overlayfs of ``layers`` (lowest first) on ``target``; names are made relative to their common
    parent (the mount options must fit in one page)."""
    parent = os.path.commonpath(layers) if len(layers) > 1 else os.path.dirname(layers[0])
    os.chdir(parent)
    lower = ":".join(os.path.relpath(p, parent) for p in reversed(layers))
    _mount("overlay", target, "overlay", 0, f"userxattr,lowerdir={lower},upperdir={upper},workdir={work}")
    os.chdir("/")


def image_root(spec: dict, base: str) -> str:
    """The image's layers as an overlay with a throw-away tmpfs upper directory (or, with ``upper``,
    ``<upper>/diff``, kept: an extension's RUN is snapshotted from it); returns its path."""
    root = spec["root"]
    for d in ("upper", "work", "root"):
        os.mkdir(f"{base}/{d}")
    upper, work = f"{base}/upper", f"{base}/work"
    if root.get("upper"):
        upper, work = f"{root['upper']}/diff", f"{root['upper']}/work"
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
    layers = root["layers"] or [f"{base}/empty"]
    if not root["layers"]:
        os.mkdir(layers[0])
    _overlay(layers, f"{base}/root", upper, work)
    return f"{base}/root"


def host_root(spec: dict, base: str) -> str:
    """The host's top-level entries bound on ``base`` (library use: a buildpack's paths placed on the
    host's own file system)."""
    skip = set(spec["root"]["host"])
    for name in os.listdir("/"):
        if name in skip:
            continue
        src, dst = f"/{name}", f"{base}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            _mount(src, dst, None, MS_BIND | MS_REC)
        else:
            open(dst, "w").close()
            _mount(src, dst, None, MS_BIND)
    return base


def _place(root: str, target: str, is_dir: bool) -> str:
    """Create the mount point ``target`` inside ``root`` (never following a link out of it)."""
    path = root + target
    if os.path.islink(path):
        os.unlink(path)  # /etc/resolv.conf is often a link to a file the image does not have
    if is_dir:
        os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    return path


def _bind(src: str, dst: str, writable: bool) -> None:
    _mount(src, dst, None, MS_BIND | MS_REC)
    if not writable:
        _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def system_mounts(root: str) -> None:
    """``/proc`` of the new PID namespace, a minimal ``/dev``, a private ``/tmp``."""
    _mount("proc", _place(root, "/proc", True), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = _place(root, "/dev", True)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        open(f"{dev}/{name}", "w").close()
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.mkdir(f"{dev}/pts")
    _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{link}")
    _mount("tmpfs", _place(root, "/tmp", True), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 0x1))  # SIOCSIFFLAGS, IFF_UP


def _pivot(root: str) -> None:
    number = _PIVOT_ROOT.get(os.uname().machine)
    os.chdir(root)
    if number is None:
        os.chroot(".")
    else:
        _check(_libc.syscall(number, b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")


def build_root(spec: dict) -> None:
    """Everything between the namespaces and the user switch; ends inside the new root."""
    base = spec["new_root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
    _mount("ocibuild-root", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    root = image_root(spec, base) if "layers" in spec["root"] else host_root(spec, base)
    if spec.get("isolate"):
        system_mounts(root)
    for src, dst in spec.get("files", ()):
        _bind(src, _place(root, dst, False), False)
    for src, dst, writable in sorted(spec.get("mounts", ()), key=lambda m: m[1].count("/")):
        _bind(src, _place(root, dst, os.path.isdir(src)), writable)
    if spec["root"].get("readonly"):
        home = os.path.normpath(spec["root"].get("home") or "/")
        mounted = [m[1] for m in spec.get("mounts", ())] + ["/tmp", "/dev", "/proc"]
        inside_mount = any(home == m or home.startswith(m.rstrip("/") + "/") for m in mounted)
        if home != "/" and not inside_mount and os.path.isdir(root + home) and not os.path.islink(root + home):
            os.mkdir(f"{base}/home-upper")
            os.mkdir(f"{base}/home-work")
            _overlay([root + home], root + home, f"{base}/home-upper", f"{base}/home-work")
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    if spec.get("network") == "none":
        _loopback_up()
    _pivot(root)


# -- running the command ---------------------------------------------------------------------------------
def become(spec: dict) -> None:
    """The build user, with no way back to privileges (``no_new_privs``: setuid files are inert)."""
    if spec["mode"] == "root" and spec["uid"] != 0:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    os.chdir(spec["cwd"])


def exec_command(command: list[str]) -> None:
    for sig in _STOP:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, os.environ)
    except OSError as err:
        sys.stderr.write(f"{command[0]}: {err.strerror}\n")
        os._exit(126 if err.errno in (errno.EACCES, errno.ENOEXEC) else 127)


def _status_of(wait_status: int) -> int:
    return os.waitstatus_to_exitcode(wait_status) if os.WIFEXITED(wait_status) else 128 + os.WTERMSIG(wait_status)


def init(status: int, spec: dict, command: list[str]) -> None:
    """PID 1 of the namespace: build the root, start the command as the build user, reap, exit
    with the command's status (the kernel then kills everything left in the namespace)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        build_root(spec)
    except (OSError, SetupError) as err:
        os.write(status, str(err).encode("utf-8", "replace"))
        os._exit(SETUP_FAILED)
    child = os.fork()
    if child == 0:
        try:
            become(spec)
        except OSError as err:
            os.write(status, str(err).encode("utf-8", "replace"))
            os._exit(SETUP_FAILED)
        os.set_inheritable(status, False)
        exec_command(command)
    os.close(status)
    for sig in _STOP:  # a stop signal for the group reached the command too; PID 1 only waits
        signal.signal(sig, lambda signum, _frame: _forward(child, signum))
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(_status_of(wait_status))


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def main(args: list[str]) -> None:
    status, spec, command = int(args[0]), json.loads(args[1]), args[2:]
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        unshare(spec)
    except OSError as err:
        os.write(status, str(err).encode("utf-8", "replace"))
        os._exit(SETUP_FAILED)
    if not spec.get("isolate"):
        try:
            build_root(spec)
            become(spec)
        except (OSError, SetupError) as err:
            os.write(status, str(err).encode("utf-8", "replace"))
            os._exit(SETUP_FAILED)
        os.set_inheritable(status, False)
        exec_command(command)
    pid1 = os.fork()
    if pid1 == 0:
        init(status, spec, command)
    os.close(status)
    for sig in _STOP:
        signal.signal(sig, signal.SIG_IGN)  # the group's stop signal is for the command; wait for PID 1
    while True:
        try:
            _, wait_status = os.waitpid(pid1, 0)
            break
        except InterruptedError:
            continue
    os._exit(_status_of(wait_status))


if __name__ == "__main__":
    main(sys.argv[1:])
