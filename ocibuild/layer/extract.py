"""Safe, streaming extraction of layers and archives into a directory.

Every path is resolved inside ``dest`` by hand, one component at a time, with ``*at`` system calls
on directory descriptors opened ``O_NOFOLLOW`` — never by the kernel following a link:

* a leading ``/`` is stripped (Docker and containerd treat ``/x`` as ``x``); any ``..`` component
  is refused, even one that would stay inside (no legitimate layer needs it);
* symlinks met in a *parent* path are followed the way the container will see them: an absolute
  target is taken relative to ``dest`` (container root semantics, as umoci/securejoin do), a
  relative one from the link's directory; a target that climbs above ``dest`` is refused;
* the last component is never followed (a symlink entry replaces whatever was there);
* hard links must name a path inside ``dest``; devices and FIFOs are refused unless allowed (and
  root); setuid/setgid bits are stripped unless kept; owners are not applied unless asked.

Refusals raise ``UnsafeContent`` naming the entry; a stream that is no tar (or damaged compression)
raises ``InvalidArchive`` naming the layer. Extraction streams and verifies as it goes, so
a failure (unsafe entry, digest or diffID mismatch) can leave ``dest`` partly written: callers
unpack into a fresh directory and discard it on error.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Union

from ocibuild.errors import DigestMismatch, ManifestError, UnsafeContent
from ocibuild.layer.compress import decompressor
from ocibuild.layer.tarwriter import InvalidArchive, archive_errors, check_stream_end
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import CHUNK, Digest, Hasher
from ocibuild.oci.manifest import Manifest
from ocibuild.store.base import Store, load_config

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "user.overlay.opaque"
MAX_SYMLINK_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

PrefixFilter = Union[str, Callable[[str], "str | None"], None]


@dataclass(frozen=True)
class ExtractOptions:
    keep_setid: bool = False
    allow_devices: bool = False  # only effective when running as root
    same_owner: bool = False  # chown to the tar's uid/gid (root only)
    whiteouts: bool = False  # apply OCI whiteouts (layers) instead of writing .wh.* files
    overlay_whiteouts: bool = False  # write whiteouts as overlayfs lower layers hold them (see below)


def _clean(name: str) -> list[str]:
    """Entry name -> components inside the root; refuses ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
    if ".." in parts:
        raise UnsafeContent(f"tar entry {name!r}: path contains '..'")
    return parts


class _Root:
    """A destination directory and the safe path operations inside it."""

    def __init__(self, dest: str | os.PathLike[str], options: ExtractOptions):
        Path(dest).mkdir(parents=True, exist_ok=True)
        self.dest = Path(dest)
        self.fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.options = options
        self.dir_modes: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        os.close(self.fd)

    def _lstat(self, comps: list[str]) -> os.stat_result | None:
        try:
            return os.stat("/".join(comps) or ".", dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def resolve_dir(self, parts: list[str], entry: str) -> list[str]:
        """Resolve a parent path to real directory components inside the root (missing ones included)."""
        resolved: list[str] = []
        pending = list(parts)
        hops = 0
        missing = False
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not resolved:
                    raise UnsafeContent(f"tar entry {entry!r}: goes through a symlink that leaves the destination")
                resolved.pop()
                continue
            if missing:
                resolved.append(name)
                continue
            st = self._lstat(resolved + [name])
            if st is None:
                missing = True
                resolved.append(name)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeContent(f"tar entry {entry!r}: too many levels of symbolic links")
                target = os.readlink("/".join(resolved + [name]), dir_fd=self.fd)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
            elif stat.S_ISDIR(st.st_mode):
                resolved.append(name)
            else:
                raise UnsafeContent(f"tar entry {entry!r}: {'/'.join(resolved + [name])} is not a directory")
        return resolved

    def open_dir(self, comps: list[str], entry: str, create: bool = True) -> int:
        """An fd of the directory ``comps`` (already resolved), opened without following any link."""
        fd = os.dup(self.fd)
        try:
            for name in comps:
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeContent(f"tar entry {entry!r}: a parent changed into a link while extracting") from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent_of(self, parts: list[str], entry: str, create: bool = True) -> tuple[list[str], int]:
        comps = self.resolve_dir(parts[:-1], entry)
        return comps, self.open_dir(comps, entry, create)


def _remove_at(dfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _mode(info: tarfile.TarInfo, options: ExtractOptions) -> int:
    mode = info.mode & 0o7777
    return mode if options.keep_setid else mode & ~0o6000


class _Extractor:
    def __init__(self, root: _Root):
        self.root = root
        self.options = root.options
        self.written: set[tuple[str, ...]] = set()  # paths created by the current layer (for opaque dirs)

    def entry(self, info: tarfile.TarInfo, tf: tarfile.TarFile, name: str) -> None:
        parts = _clean(name)
        if not parts:
            return
        base = parts[-1]
        if self.options.overlay_whiteouts and base.startswith(WHITEOUT_PREFIX):
            self.overlay_whiteout(parts, name)
            return
        if self.options.whiteouts and base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, name)
            return
        comps, pfd = self.root.parent_of(parts, name)
        try:
            self._create(info, tf, name, comps, pfd, base)
        finally:
            os.close(pfd)
        self.written.add(tuple(comps + [base]))

    def _create(self, info: tarfile.TarInfo, tf: tarfile.TarFile, name: str, comps: list[str], pfd: int, base: str) -> None:
        if info.isdir():
            st = None
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(base, dir_fd=pfd)
                st = None
            if st is None:
                os.mkdir(base, 0o755, dir_fd=pfd)
            self.root.dir_modes[tuple(comps + [base])] = _mode(info, self.options)
            self._chown(base, pfd, info)
            return
        if info.isreg():
            _remove_at(pfd, base)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                src = tf.extractfile(info)
                if src is not None:
                    while chunk := src.read(CHUNK):
                        _write_all(fd, chunk)
                os.fchmod(fd, _mode(info, self.options))
                if self.options.same_owner and os.geteuid() == 0:
                    os.fchown(fd, info.uid, info.gid)
                os.utime(fd, (info.mtime, info.mtime))
            finally:
                os.close(fd)
            return
        if info.issym():
            _remove_at(pfd, base)
            os.symlink(info.linkname, base, dir_fd=pfd)
            self._chown(base, pfd, info)
            return
        if info.islnk():
            target_parts = _clean(info.linkname)
            if not target_parts:
                raise UnsafeContent(f"tar entry {name!r}: hard link to the destination root")
            tcomps = self.root.resolve_dir(target_parts[:-1], name)
            tfd = self.root.open_dir(tcomps, name, create=False)
            try:
                tst = os.stat(target_parts[-1], dir_fd=tfd, follow_symlinks=False)
                if stat.S_ISDIR(tst.st_mode):
                    raise UnsafeContent(f"tar entry {name!r}: hard link to a directory")
                _remove_at(pfd, base)
                os.link(target_parts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeContent(f"tar entry {name!r}: hard link target {info.linkname!r} does not exist") from None
            finally:
                os.close(tfd)
            return
        if info.ischr() or info.isblk() or info.isfifo():
            kind = "fifo" if info.isfifo() else "device node"
            if not (self.options.allow_devices and os.geteuid() == 0):
                raise UnsafeContent(f"tar entry {name!r}: {kind} refused (devices and fifos are not extracted)")
            _remove_at(pfd, base)
            fmt = stat.S_IFIFO if info.isfifo() else (stat.S_IFCHR if info.ischr() else stat.S_IFBLK)
            os.mknod(base, fmt | _mode(info, self.options), os.makedev(info.devmajor, info.devminor), dir_fd=pfd)
            return
        raise UnsafeContent(f"tar entry {name!r}: unsupported entry type {info.type!r}")

    def _chown(self, base: str, pfd: int, info: tarfile.TarInfo) -> None:
        if self.options.same_owner and os.geteuid() == 0:
            os.chown(base, info.uid, info.gid, dir_fd=pfd, follow_symlinks=False)

    def whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        try:
            comps, pfd = self.root.parent_of(parts, name, create=False)
        except FileNotFoundError:
            return  # whiting out inside a directory that does not exist: nothing to hide
        try:
            if base == OPAQUE:
                here = tuple(comps)
                for child in os.listdir(pfd):
                    if here + (child,) not in self.written:
                        _remove_at(pfd, child)
            else:
                target = base[len(WHITEOUT_PREFIX):]
                if not target or target in (".", ".."):
                    raise UnsafeContent(f"tar entry {name!r}: invalid whiteout")
                _remove_at(pfd, target)
        finally:
            os.close(pfd)


    def overlay_whiteout(self, parts: list[str], name: str) -> None:
        """One layer kept apart for overlayfs: ``.wh.X`` becomes the character device 0/0 ``X`` (which
        the kernel lets anyone create, for this purpose) and ``.wh..wh..opq`` marks its directory
        opaque with the ``user.overlay.opaque`` xattr (read when mounted with ``userxattr``)."""
        base = parts[-1]
        comps, pfd = self.root.parent_of(parts, name)
        try:
            if base == OPAQUE:
                os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
                return
            target = base[len(WHITEOUT_PREFIX):]
            if not target or target in (".", "..") or target.startswith(WHITEOUT_PREFIX):
                raise UnsafeContent(f"tar entry {name!r}: invalid whiteout")
            _remove_at(pfd, target)
            os.mknod(target, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
        finally:
            os.close(pfd)
        self.written.add(tuple(comps + [target]))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _filter(prefix_filter: PrefixFilter) -> Callable[[str], "str | None"]:
    if prefix_filter is None:
        return lambda name: name
    if callable(prefix_filter):
        return prefix_filter
    prefix = "/".join(_clean(prefix_filter))

    def strip(name: str) -> str | None:
        path = "/".join(p for p in PurePosixPath(name).parts if p not in ("/", ".", ""))
        if path == prefix:
            return ""
        if prefix and path.startswith(prefix + "/"):
            return path[len(prefix) + 1:]
        return None if prefix else path

    return strip


def _extract_tar(stream: BinaryIO, root: _Root, mapping: Callable[[str], "str | None"]) -> int:
    ex = _Extractor(root)
    count = 0
    with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tf:  # type: ignore[call-overload]
        for info in tf:
            name = mapping(info.name)
            if name is None:
                continue
            ex.entry(info, tf, name)
            count += 1
        check_stream_end(tf)
    return count


def _apply_dir_modes(root: _Root) -> None:
    for comps in sorted(root.dir_modes, key=len, reverse=True):
        try:
            fd = root.open_dir(list(comps), "/".join(comps), create=False)
        except (FileNotFoundError, UnsafeContent):
            continue
        try:
            os.fchmod(fd, root.dir_modes[comps])
        finally:
            os.close(fd)
    root.dir_modes.clear()


def safe_extract(
    tar_stream: BinaryIO,
    dest: str | os.PathLike[str],
    prefix_filter: PrefixFilter = None,
    options: ExtractOptions = ExtractOptions(),
) -> int:
    """Extract an uncompressed tar stream into ``dest`` safely; returns the number of entries written.

    ``prefix_filter``: a path prefix (only entries under it, with it stripped) or a callable mapping
    an entry name to the name to write (``None`` skips the entry). Buildpack ``.tgz``/``.cnb``
    files: pass ``decompressor(f, "gzip")`` as the stream.
    """
    root = _Root(dest, options)
    try:
        with archive_errors("tar stream"):
            count = _extract_tar(tar_stream, root, _filter(prefix_filter))
        _apply_dir_modes(root)
        return count
    finally:
        root.close()


class _HashingReader:
    def __init__(self, raw: BinaryIO, hasher: Hasher):
        self._raw, self.hasher = raw, hasher

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _drain(blob: BinaryIO) -> None:
    while blob.read(CHUNK):
        pass


def unpack_image(
    store: Store,
    manifest: Manifest,
    dest_dir: str | os.PathLike[str],
    options: ExtractOptions = ExtractOptions(whiteouts=True),
) -> None:
    """Apply the image's layers in order into ``dest_dir`` (its root filesystem), with OCI whiteouts.

    Each layer is streamed once: decompressed by its media type, its blob digest verified at EOF
    and its diffID checked against the config's ``rootfs.diff_ids``.
    """
    if not isinstance(manifest, Manifest):
        raise ManifestError("unpack needs an image manifest (select a platform from an index first)")
    config = load_config(store, manifest.config)
    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"image config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )
    if not options.whiteouts:
        options = ExtractOptions(options.keep_setid, options.allow_devices, options.same_owner, True)
    root = _Root(dest_dir, options)
    try:
        for layer, diff_id in zip(manifest.layers, diff_ids):
            _extract_layer(store, layer, diff_id, root)
        _apply_dir_modes(root)
    finally:
        root.close()


def extract_layer(
    store: Store,
    layer: Descriptor,
    diff_id: Digest,
    dest_dir: str | os.PathLike[str],
    options: ExtractOptions,
) -> None:
    """One layer on its own into ``dest_dir`` (a build image's layer kept for overlayfs), checked
    as ``unpack_image`` checks each layer: blob digest at EOF, diffID of the uncompressed tar."""
    root = _Root(dest_dir, options)
    try:
        _extract_layer(store, layer, diff_id, root)
        _apply_dir_modes(root)
    finally:
        root.close()


def _extract_layer(store: Store, layer: Descriptor, diff_id: Digest, root: _Root) -> None:
    if not mt.is_layer(layer.media_type):
        raise ManifestError(f"layer {layer.digest} has unsupported media type {layer.media_type}")
    with store.open_blob(layer) as blob:
        try:
            with archive_errors(f"layer {layer.digest}"):
                plain = decompressor(blob, mt.compression_of(layer.media_type))
                reader = _HashingReader(plain, Hasher(diff_id.algorithm, expected=diff_id))
                _extract_tar(reader, root, lambda n: n)  # type: ignore[arg-type]
                reader.drain()  # trailing padding is part of the diffID
        except InvalidArchive:
            _drain(blob)  # a blob that is not what its digest says is reported as that first
            raise
        _drain(blob)  # to EOF: the store's reader verifies the blob digest there
    got = reader.hasher.digest()
    if got != diff_id:
        raise DigestMismatch(f"layer {layer.digest}: uncompressed content hashes to {got}, config says {diff_id}")
