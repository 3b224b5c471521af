"""Run buildpack executables so that host directories appear at the image's paths (/layers, /workspace).

Buildpacks write absolute paths (launch.toml, env files, scripts); they must resolve when the image
runs, so bin/build has to see the layers under ``/layers`` and the app under ``/workspace`` even
though ocibuild keeps them in a scratch directory. Inside a private mount namespace (as root, or as
an unprivileged user via ``unshare --user --map-root-user``) we build a tmpfs root that bind-mounts
every top-level entry of ``/``, add the requested directories at their target paths, and ``chroot``
into it. Nothing is created on the host outside the given directories.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ocibuild.cnb.errors import SandboxUnavailable

__all__ = ["Sandbox", "SandboxUnavailable", "prepare_sandbox"]

# The mount script: $1 = new root, $2 = cwd, $3 = number of mounts, $4 = top-level names replaced by a
# mount, then host/target pairs, then argv.
_SCRIPT = r"""
set -e
R=$1; CWD=$2; N=$3; SKIP=" $4 "; shift 4
mount -t tmpfs -o mode=0755 ocibuild-root "$R"
for e in /* /.[!.]*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  name=${e#/}
  case "$SKIP" in *" $name "*) continue;; esac
  if [ -L "$e" ]; then ln -s "$(readlink "$e")" "$R/$name"
  elif [ -d "$e" ]; then mkdir "$R/$name"; mount --rbind "$e" "$R/$name"
  else : > "$R/$name"; mount --bind "$e" "$R/$name"; fi
done
i=0
while [ "$i" -lt "$N" ]; do
  mkdir -p "$R$2"; mount --rbind "$1" "$R$2"; shift 2; i=$((i+1))
done
exec CHROOT "$R" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$CWD" "$@"
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

    def command(self, argv: Sequence[str], cwd: str, root_dir: Path) -> list[str]:
        """The argv to exec; ``root_dir`` is an empty scratch directory used as the new root."""
        if self.mode == "direct":
            return list(argv)
        return [
            *_unshare_prefix(self.mode),
            "/bin/sh", "-c", _SCRIPT.replace("CHROOT", _chroot()), "sh",
            str(root_dir), cwd, str(len(self.mounts)),
            " ".join(t.strip("/") for _, t in self.mounts if t.strip("/") and "/" not in t.strip("/")),
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
        """Run ``argv`` (paths as seen inside) with ``cwd`` (seen inside); capture per stdout/stderr."""
        if self.mode == "direct":
            return subprocess.run(list(argv), cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr, check=False)
        with tempfile.TemporaryDirectory(prefix="ocibuild-root-") as root_dir:
            return subprocess.run(
                self.command(argv, cwd, Path(root_dir)), env=dict(env), stdout=stdout, stderr=stderr, check=False
            )


DIRECT = Sandbox((), "direct")


def _unshare_prefix(mode: str) -> list[str]:
    unshare = shutil.which("unshare") or "unshare"
    if mode == "user":
        return [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]
    return [unshare, "--mount", "--propagation", "private", "--"]


@functools.cache
def _chroot() -> str:
    return shutil.which("chroot") or shutil.which("chroot", path="/usr/sbin:/sbin") or "/usr/sbin/chroot"


@functools.cache
def _works(mode: str) -> str | None:
    """None when ``mode`` can run a sandbox here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = Sandbox((), mode)
    with tempfile.TemporaryDirectory(prefix="ocibuild-probe-") as root_dir:
        try:
            res = subprocess.run(
                probe.command(["/bin/true"], "/", Path(root_dir)),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return str(err)
    if res.returncode != 0:
        lines = res.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {res.returncode}"
    return None


def prepare_sandbox(mounts: Mapping[str | Path, str], *, mode: str | None = None) -> Sandbox:
    """A sandbox placing each host dir (key) at its absolute target path (value).

    ``mode`` forces ``root``/``user``/``direct``; by default: ``direct`` when every host dir is
    already its target, ``root`` when running as root, else ``user``. Raises ``SandboxUnavailable``
    with what to do when no mount namespace can be had.
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
    if mode == "direct":
        return Sandbox(tuple(pairs), "direct")
    reason = _works(mode)
    if reason is not None:
        where = " and ".join(t for _, t in pairs) or "the build paths"
        hint = (
            "run as root"
            if mode == "root"
            else "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / "
            "user.max_user_namespaces), run as root"
        )
        raise SandboxUnavailable(
            f"cannot place {where} for buildpacks ({mode} mount namespace failed: {reason}); "
            f"{hint}, or pass --layers-dir/--workspace pointing to directories you can write"
        )
    return Sandbox(tuple(pairs), mode)
