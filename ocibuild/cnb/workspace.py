"""The app as buildpacks see it: a copy of the user's directory, kept in the scratch dir between builds.

Buildpacks may write to ``/workspace``, so they get a copy, never the user's directory. Copying a large
app on every build dominated a no-change rebuild, so the copy is kept and synced: only files whose size,
mtime or mode differ from the app's are copied again, files that went away are removed, and whatever
the previous build's buildpacks changed in the copy is undone (every entry is compared with the state
recorded right after the previous sync, inode included). One build at a time holds a kept copy (flock);
a concurrent build of the same app gets a fresh copy instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

Include = Callable[[str, bool], bool]
_STATE = "state.json"


def _walk(root: Path, include: Include | None) -> dict[str, tuple]:
    """relative path -> (kind, size, mtime_ns, mode, inode, link target, uid, gid) of every entry below ``root``."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                is_dir = stat.S_ISDIR(st.st_mode)
                if include is not None and not include(rel, is_dir):
                    continue
                owner = (st.st_uid, st.st_gid)
                if is_dir:
                    out[rel] = ("d", 0, 0, stat.S_IMODE(st.st_mode), st.st_ino, "", *owner)
                    stack.append(rel)
                elif stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", 0, 0, 0, st.st_ino, os.readlink(entry.path), *owner)
                elif stat.S_ISREG(st.st_mode):
                    out[rel] = ("f", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino, "", *owner)
                # sockets, fifos and devices are not part of an app
    return out


def _same_content(src: tuple, cur: tuple) -> bool:
    """The kept entry still holds what the app holds (kind, size, mtime, mode, link target)."""
    return src[0] == cur[0] and src[1:4] == cur[1:4] and src[5] == cur[5]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def sync(app: Path, dest: Path, include: Include | None = None, owner: tuple[int, int] | None = None) -> int:
    """Make ``dest`` an exact copy of ``app`` (filtered by ``include``); returns how many files were copied.

    ``owner`` (as root): every entry of the copy belongs to that uid/gid, the build user's, as the
    lifecycle's ``/workspace`` does."""
    state_file = dest.parent / _STATE
    try:
        recorded = {k: tuple(v) for k, v in json.loads(state_file.read_text()).items()}
    except (OSError, ValueError):
        recorded = {}
    dest.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.lchown(dest, *owner)
    src = _walk(app, include)
    cur = _walk(dest, None)
    gone = sorted(set(cur) - set(src), reverse=True)
    for rel in gone:  # children before their directory
        _remove(dest / rel)
    copied = changed = 0
    for rel in sorted(src):  # parents before children
        want, have = src[rel], cur.get(rel)
        owned = owner is None or have is None or tuple(have[6:8]) == owner
        if have is not None and recorded.get(rel) == have and _same_content(want, have) and owned:
            continue  # untouched since the last sync and the app's file did not change
        changed += 1
        target = dest / rel
        if have is not None and (have[0] != want[0] or want[0] != "d"):
            _remove(target)
        if want[0] == "d":
            target.mkdir(exist_ok=True)
            os.chmod(target, want[3])
        elif want[0] == "l":
            os.symlink(want[5], target)
        else:
            shutil.copy2(app / rel, target, follow_symlinks=False)
            copied += 1
        if owner is not None:
            os.lchown(target, *owner)
    if not gone and not changed and cur == recorded:
        return 0  # nothing touched: the copy is as the walk just saw it, and as recorded
    state = _walk(dest, None)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)
    return copied


@contextlib.contextmanager
def prepared(app: Path, scratch_root: Path, fallback: Path, include: Include | None = None,
             owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A workspace for one build: the kept copy of ``app`` (synced), or a fresh copy in ``fallback``."""
    root = scratch_root / "workspaces" / hashlib.sha256(str(app).encode()).hexdigest()[:16]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            sync(app, fallback, include, owner)  # another build of this app holds the kept copy
            yield fallback
            return
        (root / "app-path").write_text(str(app))
        sync(app, root / "tree", include, owner)
        yield root / "tree"
