"""Enter a private mount namespace, build a root where host dirs appear at image paths, exec a command.

Run as a script by ``ocibuild.cnb.sandbox`` (``python -I -S _mountns.py ...``), which imports it only
for its path and constants. It uses the standard library only, so the interpreter starts in ~15 ms,
and it calls ``mount(2)`` directly instead of spawning one ``mount`` process per top-level entry of ``/``.

    argv: STATUS_FD MODE NEW_ROOT CWD N SKIP_NAMES (HOST TARGET)*N COMMAND...

``MODE`` is ``root`` (a mount namespace) or ``user`` (also a user namespace, mapping the caller to
root). ``NEW_ROOT`` is an empty directory; a tmpfs is mounted on it and every top-level entry of
``/`` but ``SKIP_NAMES`` is bind-mounted (symlinks copied), then each ``HOST`` at ``TARGET``; then
``chroot``, ``chdir(CWD)`` and exec ``COMMAND`` (searched on the ``PATH`` of its environment). A
set-up failure is written to ``STATUS_FD`` and exits 125; the fd closes on exec, so the parent reads
EOF when the command started. A command that cannot be executed exits 126/127, as a shell does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else os.fsencode(s) for s in (src, dst, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {src} on {dst}")


def enter(mode: str, root: str, cwd: str, skip: set[str], mounts: list[tuple[str, str]]) -> None:
    """Everything before the exec: namespaces, the new root, the chroot."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWNS | (CLONE_NEWUSER if mode == "user" else 0)), "unshare")
    if mode == "user":
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("ocibuild-root", root, "tmpfs", 0, "mode=0755")
    for name in os.listdir("/"):
        if name in skip:
            continue
        src, dst = f"/{name}", f"{root}/{name}"
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.mkdir(dst)
            _mount(src, dst, None, MS_BIND | MS_REC)
        else:
            open(dst, "w").close()
            _mount(src, dst, None, MS_BIND)
    for host, target in mounts:
        os.makedirs(root + target, exist_ok=True)
        _mount(host, root + target, None, MS_BIND | MS_REC)
    os.chroot(root)
    os.chdir(cwd)


def main(args: list[str]) -> None:
    status, mode, root, cwd, n, skip = int(args[0]), args[1], args[2], args[3], int(args[4]), set(args[5].split())
    flat, command = args[6:6 + 2 * n], args[6 + 2 * n:]
    try:
        enter(mode, root, cwd, skip, list(zip(flat[::2], flat[1::2])))
    except OSError as err:
        os.write(status, str(err).encode("utf-8", "replace"))
        os._exit(SETUP_FAILED)
    os.set_inheritable(status, False)
    try:
        os.execvpe(command[0], command, os.environ)
    except OSError as err:
        sys.stderr.write(f"{command[0]}: {err.strerror}\n")
        os._exit(126 if err.errno in (errno.EACCES, errno.ENOEXEC) else 127)


if __name__ == "__main__":
    main(sys.argv[1:])
