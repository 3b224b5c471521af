"""Reproducible tar streams: same content in, same bytes out, whatever the clock, owner or umask.

Normalisation (the same choices as pack/imgutil's ``archive`` package):

* entries sorted by path (a parent always precedes its children: it is a prefix);
* mtime 315532801 (1980-01-01T00:00:01Z), uid/gid 0 unless overridden, empty uname/gname;
* USTAR headers, with a PAX extended header only for an entry that needs one (long or non-ASCII
  names and link names, big numbers);
* permission bits through a mode policy (``keep_mode`` or pack's ``pack_mode``), optionally
  without setuid/setgid;
* hard links within the source are kept as hard links to the first path (in sorted order).

Paths are written relative, without a leading ``/`` (``cnb/buildpacks/...``), as Docker, BuildKit
and go-containerregistry write them. pack's ``archive.WriteDirToTar`` joins onto an absolute
``/cnb/...`` base and so writes a leading slash; every extractor (Docker, containerd, umoci, the
lifecycle) strips it, so both forms unpack the same, and the relative form is what the image-spec
examples show and what ``tar`` accepts without a warning.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Union

from ocibuild.errors import UnsafeContent, UsageError

NORMALIZED_MTIME = 315532801  # 1980-01-01T00:00:01Z, as pack and the lifecycle use

FILE, DIR, SYMLINK, HARDLINK, FIFO, CHAR, BLOCK = "file", "dir", "symlink", "hardlink", "fifo", "char", "block"

ModePolicy = Callable[[str, int], int]
"""(kind, mode from the source) -> permission bits to write."""


class InvalidArchive(UnsafeContent):
    """A tarball or layer that is not a readable tar: bad header, truncated, damaged compression (exit 1)."""


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged tar or compressed stream raises (evaluated only when something is raised)."""
    import zlib

    import zstandard
    from isal import isal_zlib

    return (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, isal_zlib.error, zstandard.ZstdError)


@contextlib.contextmanager
def archive_errors(source: object) -> Iterator[None]:
    """Turn the errors of reading a damaged archive into one-line ``InvalidArchive`` naming ``source``."""
    try:
        yield
    except InvalidArchive:
        raise
    except _decode_errors() as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidArchive(f"{source}: not a valid tar archive ({reason})") from None


def keep_mode(kind: str, mode: int) -> int:
    """Keep the permission bits as they are (including setuid/setgid/sticky)."""
    return mode & 0o7777


def pack_mode(kind: str, mode: int) -> int:
    """pack's policy for buildpack and app layers: directories and executables 0755, else 0644."""
    if kind == SYMLINK:
        return 0o777
    if kind == DIR or mode & 0o111:
        return 0o755
    return 0o644


def normalize_path(path: str) -> str:
    """A clean relative POSIX path: no leading ``/`` or ``./``, no empty or ``.`` parts; ``..`` refused."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise UnsafeContent(f"tar entry {path!r}: '..' is not allowed in a layer path")
    return "/".join(parts)


@dataclass(frozen=True)
class TarEntry:
    """One entry of a layer. ``opener`` gives the content of regular files (none is read in advance)."""

    path: str
    kind: str = FILE
    mode: int = 0o644
    size: int = 0
    linkname: str = ""
    uid: int | None = None  # None: TarOptions.uid
    gid: int | None = None
    devmajor: int = 0
    devminor: int = 0
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False, repr=False)
    link_key: object = field(default=None, compare=False, repr=False)
    """Entries sharing a link_key are one file: the first (sorted) is written, the rest hard-link it."""
    fingerprint: str | None = field(default=None, compare=False, repr=False)
    """What identifies a regular file's content without reading it (``size:mtime_ns`` of its source,
    or the hash of in-memory data); None: unknown, and a layer holding it is never memoized."""

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644, **kw: object) -> "TarEntry":
        blob = bytes(data)
        kw.setdefault("fingerprint", "sha256:" + hashlib.sha256(blob).hexdigest())
        return cls(normalize_path(path), FILE, mode, len(blob), opener=lambda: _BytesReader(blob), **kw)  # type: ignore[arg-type]

    @classmethod
    def dir(cls, path: str, mode: int = 0o755, **kw: object) -> "TarEntry":
        return cls(normalize_path(path), DIR, mode, **kw)  # type: ignore[arg-type]

    @classmethod
    def symlink(cls, path: str, target: str, **kw: object) -> "TarEntry":
        return cls(normalize_path(path), SYMLINK, 0o777, linkname=target, **kw)  # type: ignore[arg-type]


class _BytesReader:
    def __init__(self, data: bytes):
        import io

        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)

    def close(self) -> None:
        self._io.close()

    def __enter__(self) -> "_BytesReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TarOptions:
    """How entries are normalised. ``uid``/``gid`` apply to entries that do not set their own."""

    uid: int = 0
    gid: int = 0
    mtime: int = NORMALIZED_MTIME
    mode_policy: ModePolicy = keep_mode
    strip_setid: bool = False
    allow_devices: bool = False


# -- sources ----------------------------------------------------------------------------------------
def parent_entries(prefix: str, mode: int = 0o755, uid: int | None = None, gid: int | None = None) -> list[TarEntry]:
    """Directory entries for every ancestor of ``prefix`` (``a``, ``a/b`` for ``a/b/c``)."""
    parts = normalize_path(prefix).split("/") if normalize_path(prefix) else []
    return [TarEntry("/".join(parts[:i]), DIR, mode, uid=uid, gid=gid) for i in range(1, len(parts))]


def entries_from_dir(
    root: str | os.PathLike[str],
    prefix: str = "",
    *,
    include_parents: bool = True,
    parent_mode: int = 0o755,
) -> list[TarEntry]:
    """The tree under ``root`` as entries under ``prefix`` (e.g. ``/cnb/buildpacks/x/1.0``).

    With a prefix the root directory itself becomes the prefix entry, and ``include_parents`` adds
    entries for its ancestors. Sockets are skipped; symlinks are recorded, never followed.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"{root_path} is not a directory")
    base = normalize_path(prefix)
    out: list[TarEntry] = []
    if base:
        if include_parents:
            out.extend(parent_entries(base, parent_mode))
        out.append(TarEntry(base, DIR, stat.S_IMODE(root_path.stat().st_mode)))
    for dirpath, dirnames, filenames in os.walk(root_path, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root_path)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            # already clean: ``base`` is normalised and os.walk yields plain names ('..' never)
            entry = _entry_for_file(full, f"{base}/{rel}" if base else rel)
            if entry is not None:
                out.append(entry)
    return out


def _entry_for_file(full: str, tar_path: str) -> TarEntry | None:
    st = os.lstat(full)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return TarEntry(tar_path, DIR, mode)
    if stat.S_ISLNK(st.st_mode):
        return TarEntry(tar_path, SYMLINK, mode, linkname=os.readlink(full))
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return TarEntry(tar_path, FILE, mode, st.st_size, opener=lambda: open(full, "rb"), link_key=key,
                        fingerprint=f"{st.st_size}:{st.st_mtime_ns}")
    if stat.S_ISFIFO(st.st_mode):
        return TarEntry(tar_path, FIFO, mode)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = CHAR if stat.S_ISCHR(st.st_mode) else BLOCK
        return TarEntry(tar_path, kind, mode, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev))
    return None  # sockets and doors are not archivable


_TAR_KINDS = {
    tarfile.REGTYPE: FILE, tarfile.AREGTYPE: FILE, tarfile.CONTTYPE: FILE, tarfile.DIRTYPE: DIR,
    tarfile.SYMTYPE: SYMLINK, tarfile.LNKTYPE: HARDLINK, tarfile.FIFOTYPE: FIFO,
    tarfile.CHRTYPE: CHAR, tarfile.BLKTYPE: BLOCK,
}


def entries_from_tar(tf: tarfile.TarFile, prefix: str = "", *, source: object = None) -> list[TarEntry]:
    """Entries of an open, seekable tar file (re-normalised when written). Keep ``tf`` open while writing.

    ``source`` names the archive in errors (default: ``tf.name``); a damaged archive, found here or
    later while a member is read, raises ``InvalidArchive``.
    """
    source = source or tf.name or "tar archive"
    base = normalize_path(prefix)
    members = {}
    out: list[TarEntry] = []
    with archive_errors(source):
        all_members = tf.getmembers()
        _check_seekable_end(tf)
    for m in all_members:
        kind = _TAR_KINDS.get(m.type)
        if kind is None:
            continue  # GNU sparse/volume headers and the like: not layer content
        path = normalize_path(f"{base}/{m.name}" if base else m.name)
        if not path:
            continue
        members[path] = m
        if kind == HARDLINK:
            target = normalize_path(f"{base}/{m.linkname}" if base else m.linkname)
            tm = members.get(target)
            if tm is None or not tm.isreg():
                raise UnsafeContent(f"tar entry {m.name!r}: hard link to {m.linkname!r}, which precedes it nowhere")
            out.append(TarEntry(path, FILE, m.mode, tm.size, opener=_member_opener(tf, tm, source),
                                link_key=("tar", target)))
        elif kind == FILE:
            out.append(TarEntry(path, FILE, m.mode, m.size, opener=_member_opener(tf, m, source),
                                link_key=("tar", path)))
        else:
            out.append(TarEntry(path, kind, m.mode, 0, linkname=m.linkname if kind == SYMLINK else "",
                                devmajor=m.devmajor, devminor=m.devminor))
    return out


def _check_seekable_end(tf: tarfile.TarFile) -> None:
    """Refuse a tar cut inside a header or a member's padding (``tarfile`` takes that for the end).

    Like Go's ``archive/tar``: ending right after a member (no zero blocks) is accepted, a partial
    block is not.
    """
    fh = tf.fileobj
    if fh is None:
        return
    end = fh.seek(0, os.SEEK_END)
    if end < tf.offset or 0 < end - tf.offset < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("unexpected end of data")


def check_stream_end(tf: tarfile.TarFile) -> None:
    """The streaming (``r|``) form of the check above, after the members were iterated
    (raises ``tarfile.ReadError``: wrap it in ``archive_errors``)."""
    read = getattr(tf.fileobj, "pos", None)
    if read is not None and read not in (tf.offset, tf.offset + tarfile.BLOCKSIZE):
        raise tarfile.ReadError("unexpected end of data")


def _member_opener(tf: tarfile.TarFile, m: tarfile.TarInfo, source: object) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        with archive_errors(source):
            f = tf.extractfile(m)
        assert f is not None
        return _CheckedMember(f, source)  # type: ignore[return-value]

    return opener


class _CheckedMember:
    """A member's content whose read errors (a tar truncated inside it) name the archive."""

    def __init__(self, raw: BinaryIO, source: object):
        self._raw, self._source = raw, source

    def read(self, n: int = -1) -> bytes:
        with archive_errors(self._source):
            data = self._raw.read(n)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "_CheckedMember":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tarball(path: str | os.PathLike[str], spool_dir: str | os.PathLike[str] | None = None) -> tarfile.TarFile:
    """Open a tarball for random access; a compressed one is first decompressed into a temp file.

    A file that is no tar (or a damaged gzip/zstd one) raises ``InvalidArchive`` naming ``path``.
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
        from ocibuild.layer.compress import decompressor

        spool = tempfile.TemporaryFile(dir=spool_dir)
        try:
            with archive_errors(path), open(path, "rb") as fh:
                shutil.copyfileobj(decompressor(fh, "gzip" if magic[:2] == b"\x1f\x8b" else "zstd"), spool, 1 << 20)
                spool.seek(0)
                tf = tarfile.open(fileobj=spool, mode="r:")
            tf.name = os.fspath(path)  # type: ignore[assignment] - errors name the file, not the spool
            return tf
        except BaseException:
            spool.close()
            raise
    try:
        with archive_errors(path):
            return tarfile.open(path, mode="r:")
    except InvalidArchive:
        # only now, as a plain tar may well start with these bytes (a first entry named "BZh...")
        kind = next((k for sig, k in _UNSUPPORTED if magic.startswith(sig)), None)
        if kind is None:
            raise
        raise InvalidArchive(f"{os.fspath(path)}: not a valid tar archive ({kind} compression is not supported: "
                             "use a plain, gzip or zstd tarball)") from None


_UNSUPPORTED = ((b"\xfd7zX", "xz"), (b"BZh", "bzip2"))


TarSource = Union[str, os.PathLike, Iterable[TarEntry]]


# -- writing ----------------------------------------------------------------------------------------
def _sorted_unique(entries: Iterable[TarEntry]) -> list[TarEntry]:
    """Sorted by path; of several entries with one path the last given wins (like layering)."""
    by_path: dict[str, TarEntry] = {}
    for e in entries:
        if not e.path:
            continue
        by_path[e.path] = e
    return [by_path[p] for p in sorted(by_path)]


def write_tar(out: BinaryIO, entries: Iterable[TarEntry], options: TarOptions = TarOptions()) -> int:
    """Write a reproducible tar of ``entries`` to ``out``; returns the number of entries written."""
    first_of: dict[object, str] = {}
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:  # type: ignore[call-overload]
        for e in _sorted_unique(entries):
            info = _tarinfo(e, options)
            if e.kind == FILE and e.link_key is not None:
                if e.link_key in first_of:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_of[e.link_key]
                    info.size = 0
                    tf.addfile(info)
                    count += 1
                    continue
                first_of[e.link_key] = e.path
            if e.kind == FILE:
                if e.opener is None:
                    raise UsageError(f"tar entry {e.path!r} has no content")
                with e.opener() as src:
                    tf.addfile(info, _Exact(src, e.size, e.path))
            else:
                tf.addfile(info)
            count += 1
    return count


def _tarinfo(e: TarEntry, options: TarOptions) -> tarfile.TarInfo:
    if e.kind in (FIFO, CHAR, BLOCK) and not options.allow_devices:
        raise UnsafeContent(f"tar entry {e.path!r}: {e.kind} nodes are not allowed in a layer")
    info = tarfile.TarInfo(e.path)
    info.type = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, HARDLINK: tarfile.LNKTYPE,
                 FIFO: tarfile.FIFOTYPE, CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE}[e.kind]
    mode = options.mode_policy(e.kind, e.mode)
    if options.strip_setid:
        mode &= ~0o6000
    info.mode = mode
    info.size = e.size if e.kind == FILE else 0
    info.linkname = e.linkname
    info.mtime = options.mtime
    info.uid = options.uid if e.uid is None else e.uid
    info.gid = options.gid if e.gid is None else e.gid
    info.uname = info.gname = ""
    info.devmajor, info.devminor = e.devmajor, e.devminor
    return info


class _Exact:
    """Reads exactly ``size`` bytes; a file that changed size while archived is an error, not a bad tar."""

    def __init__(self, src: BinaryIO, size: int, path: str):
        self._src, self._left, self._path = src, size, path

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._src.read(want)
        if not data:
            raise UsageError(f"{self._path}: file shrank while it was being archived")
        self._left -= len(data)
        return data


def iter_source(source: TarSource, prefix: str = "", *, include_parents: bool = True,
                stack: "list[tarfile.TarFile] | None" = None) -> list[TarEntry]:
    """Entries of a directory, a tarball path or an iterable of entries (moved under ``prefix``)."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            return entries_from_dir(p, prefix, include_parents=include_parents)
        if p.is_file():
            tf = open_tarball(p)
            if stack is not None:
                stack.append(tf)
            entries = entries_from_tar(tf, prefix, source=os.fspath(source))
            if prefix and include_parents:
                entries = parent_entries(prefix) + [TarEntry.dir(prefix)] + entries
            return entries
        raise UsageError(f"{p}: no such file or directory")
    entries = list(source)
    base = normalize_path(prefix)
    if base:
        entries = [replace(e, path=normalize_path(f"{base}/{e.path}")) for e in entries]
        if include_parents:
            entries = parent_entries(base) + [TarEntry.dir(base)] + entries
    return entries


def tar_source(source: TarSource, out: BinaryIO, options: TarOptions = TarOptions(), prefix: str = "",
               *, include_parents: bool = True) -> int:
    """Write ``source`` (directory, tarball or entries) as a reproducible tar to ``out``."""
    opened: list[tarfile.TarFile] = []
    try:
        return write_tar(out, iter_source(source, prefix, include_parents=include_parents, stack=opened), options)
    finally:
        for tf in opened:
            tf.close()
            if tf.fileobj is not None:
                tf.fileobj.close()


def iter_paths(entries: Iterable[TarEntry]) -> Iterator[str]:
    for e in _sorted_unique(entries):
        yield e.path
