"""An OCI image layout directory (image-spec image-layout.md) as a ``Store``.

Layout on disk::

    oci-layout        {"imageLayoutVersion":"1.0.0"}
    index.json        an OCI index; tags in org.opencontainers.image.ref.name (bare tags, like skopeo)
    blobs/<alg>/<hex> content, named by its digest
    .tmp/             our temp files (never in blobs/: umoci gc refuses foreign files there)
    .index.lock       flock: serialises read-modify-write of index.json across processes
    .gc.lock          flock: writers hold it shared, garbage collection exclusive

Every write is a temp file in ``.tmp/`` + fsync + rename + fsync of the directory; every read is
verified against its digest. Unknown files and media types are tolerated.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ocibuild.errors import InvalidReference, ManifestError, NotFound, StoreError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import ANNOTATION_REF_NAME, Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, Index, canonical_json, load_json, parse_manifest
from ocibuild.store.base import Progress, VerifyingReader, copy_stream, digest_arg, verify_bytes

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
TMP_DIR = ".tmp"
INDEX_LOCK = ".index.lock"
GC_LOCK = ".gc.lock"

BeforePublish = Callable[[Descriptor], None]
"""Called with the verified descriptor just before its temp file is renamed into ``blobs/``."""

# annotations.md: the characters allowed in org.opencontainers.image.ref.name.
_REF_NAME = re.compile(r"^[A-Za-z0-9._:@/+-]+$")


# Small reads (tar headers) come from this buffer; large ones bypass it.
_READ_BUFFER = 64 * 1024


def _writer(fd: int) -> Callable[[memoryview], None]:
    """``write`` for ``copy_stream``: all of a buffer to a raw fd, no Python-level copy."""

    def write(data: memoryview) -> None:
        while data:
            data = data[os.write(fd, data):]

    return write


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(desc: Descriptor) -> Descriptor:
    """A descriptor without the layout-only ref name annotation and without embedded data."""
    annotations = {k: v for k, v in desc.annotations.items() if k != ANNOTATION_REF_NAME}
    return Descriptor(
        desc.media_type, desc.digest, desc.size, annotations=annotations, urls=desc.urls,
        artifact_type=desc.artifact_type, platform=desc.platform,
    )


def fallback_tag(digest: Digest) -> str:
    """The referrers tag schema: ``<alg>-<hex>`` (distribution-spec, used when there is no API)."""
    return f"{digest.algorithm}-{digest.encoded}"


TEMP_PREFIX = "blob-"


class LayoutStore:
    """A Store backed by an OCI image layout directory; safe for concurrent writers in several processes."""

    def __init__(self, path: str | os.PathLike[str], create: bool = False):
        self.path = Path(path).absolute()
        layout_file = self.path / LAYOUT_FILE
        if not layout_file.exists():
            if not create:
                raise StoreError(f"{self.path} is not an OCI image layout (no {LAYOUT_FILE} file)")
            self._initialise()
        else:
            self._check_layout_file(layout_file)

    # -- identity ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"oci:{self.path}"

    def __repr__(self) -> str:
        return f"LayoutStore({str(self.path)!r})"

    def close(self) -> None:
        """Nothing to release: every lock is scoped to one operation."""

    # -- setup -------------------------------------------------------------------------------
    def _initialise(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            (self.path / TMP_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create OCI layout {self.path}: {exc.strerror}") from None
        with self._index_locked():
            if not (self.path / INDEX_FILE).exists():
                empty = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
                self._atomic_write(self.path / INDEX_FILE, canonical_json(empty))
            if not (self.path / LAYOUT_FILE).exists():
                self._atomic_write(self.path / LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))

    def _check_layout_file(self, layout_file: Path) -> None:
        try:
            doc = load_json(layout_file.read_bytes(), LAYOUT_FILE)
        except OSError as exc:
            raise StoreError(f"cannot read {layout_file}: {exc.strerror}") from None
        except ManifestError as exc:
            raise StoreError(f"{layout_file}: {exc}") from None
        version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise StoreError(f"{layout_file}: unsupported imageLayoutVersion {version!r}")

    # -- low-level file helpers ----------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        """Where temp files live: same filesystem as ``blobs/`` so rename is atomic."""
        tmp = self.path / TMP_DIR
        tmp.mkdir(exist_ok=True)
        return tmp

    def new_temp_file(self, suffix: str = "") -> tuple[BinaryIO, Path]:
        """An open temp file in ``.tmp/`` (caller renames or deletes it), named after this process so
        that gc knows the temp file of a writer that was killed (``ocibuild.ledger.gc``)."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix)
        return os.fdopen(fd, "w+b"), Path(name)

    def _atomic_write(self, target: Path, data: bytes) -> None:
        fh, tmp = self.new_temp_file()
        try:
            with fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _index_locked(self) -> contextlib.AbstractContextManager[None]:
        return self._flock(INDEX_LOCK, fcntl.LOCK_EX)

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """Shared lock held by anyone writing blobs; excludes a concurrent GC sweep."""
        return self._flock(GC_LOCK, fcntl.LOCK_SH)

    def gc_lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock held by garbage collection; waits for writers to finish."""
        return self._flock(GC_LOCK, fcntl.LOCK_EX)

    # -- index.json --------------------------------------------------------------------------
    def _read_index_doc(self) -> dict:
        try:
            with open(self.path / INDEX_FILE, "rb") as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)  # never more than the cap in memory
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        except OSError as exc:
            raise StoreError(f"cannot read {self.path / INDEX_FILE}: {exc.strerror}") from None
        try:
            Index.parse(raw)  # validates every entry
        except ManifestError as exc:
            raise StoreError(f"{self.path / INDEX_FILE}: {exc}") from None
        return load_json(raw)

    def index_entries(self) -> list[Descriptor]:
        """The entries of ``index.json`` as they are (with their ref name annotations)."""
        doc = self._read_index_doc()
        return [Descriptor.from_dict(d) for d in doc.get("manifests") or []]

    def update_index(self, fn: Callable[[list[Descriptor]], list[Descriptor]]) -> list[Descriptor]:
        """Read-modify-write ``index.json`` under an exclusive flock; ``fn`` gets and returns the entries.

        Other top-level fields of the index (annotations, ...) are kept. Returns the new entries.
        """
        with self._index_locked():
            doc = self._read_index_doc()
            entries = [Descriptor.from_dict(d) for d in doc.get("manifests") or []]
            new_entries = list(fn(list(entries)))
            doc["manifests"] = [d.to_dict() for d in new_entries]
            doc["schemaVersion"] = 2
            doc.setdefault("mediaType", mt.OCI_INDEX)
            self._atomic_write(self.path / INDEX_FILE, canonical_json(doc))
            return new_entries

    # -- blobs -------------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        if "/" in digest.algorithm or "/" in digest.encoded or digest.encoded in (".", ".."):
            raise ManifestError(f"digest {digest} cannot name a file")
        return self.path / "blobs" / digest.algorithm / digest.encoded

    def has_blob(self, desc: Descriptor) -> bool:
        try:
            return self.blob_path(desc.digest).stat().st_size == desc.size
        except FileNotFoundError:
            return False

    def stat_blob(self, digest: Digest) -> Descriptor:
        """The size of a blob known by digest only."""
        try:
            return Descriptor("application/octet-stream", digest, self.blob_path(digest).stat().st_size)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in {self.name}") from None

    def iter_blobs(self) -> Iterator[Digest]:
        """Digests of the files in ``blobs/``; files not named like a digest are skipped."""
        root = self.path / "blobs"
        if not root.is_dir():
            return
        for alg_dir in sorted(root.iterdir()):
            if not alg_dir.is_dir():
                continue
            for f in sorted(alg_dir.iterdir()):
                try:
                    yield Digest.parse(f"{alg_dir.name}:{f.name}")
                except InvalidReference:
                    continue

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """A stream of the blob that raises ``DigestMismatch`` if the file was tampered with.

        Large ``read``/``readinto`` calls go straight from the file into the caller's buffer.
        """
        try:
            fh = open(self.blob_path(desc.digest), "rb", buffering=_READ_BUFFER)
        except FileNotFoundError:
            raise NotFound(f"blob {desc.digest} not found in {self.name}") from None
        reader = VerifyingReader(fh, desc)  # type: ignore[arg-type]
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def put_blob(
        self,
        desc: Descriptor,
        stream: BinaryIO,
        progress: Progress | None = None,
        before_publish: BeforePublish | None = None,
    ) -> None:
        """Copy ``stream`` into ``blobs/``, hashing as it goes; on any mismatch nothing is kept.

        A blob already present is not read again and ``stream`` is not drained.
        """
        if self.has_blob(desc):
            return
        target = self.blob_path(desc.digest)
        fh, tmp = self.new_temp_file()
        try:
            with fh:
                copy_stream(stream, _writer(fh.fileno()), desc, progress)
                os.fsync(fh.fileno())
            self._publish(tmp, target, desc, before_publish)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_blob_file(self, desc: Descriptor, path: Path, before_publish: BeforePublish | None = None) -> None:
        """Move a finished temp file in ``.tmp/`` into ``blobs/`` after verifying it (no copy)."""
        path = Path(path)
        if self.has_blob(desc):
            path.unlink(missing_ok=True)
            return
        if path.absolute().parent != self.tmp_dir:  # elsewhere (maybe another filesystem): copy it in
            try:
                with open(path, "rb") as fh:
                    self.put_blob(desc, fh, before_publish=before_publish)  # type: ignore[arg-type]
            finally:
                path.unlink(missing_ok=True)
            return
        try:
            with open(path, "rb", buffering=0) as fh:
                copy_stream(fh, lambda _: None, desc)  # type: ignore[arg-type]
                os.fsync(fh.fileno())
            self._publish(path, self.blob_path(desc.digest), desc, before_publish)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _publish(self, tmp: Path, target: Path, desc: Descriptor, before_publish: BeforePublish | None) -> None:
        if before_publish is not None:
            before_publish(desc)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise StoreError(f"{tmp} is not on the same filesystem as {self.path}") from None
            raise
        _fsync_dir(target.parent)

    # -- manifests ---------------------------------------------------------------------------
    def _read_small(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest {desc.digest} is {desc.size} bytes, over the {MAX_MANIFEST_BYTES} limit")
        try:
            data = self.blob_path(desc.digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"manifest {desc.digest} not found in {self.name}") from None
        verify_bytes(desc, data)
        return data

    def _find_tag(self, tag: str) -> Descriptor | None:
        for entry in self.index_entries():
            if entry.ref_name == tag:
                return entry
        return None

    def resolve(self, identifier: str) -> Descriptor:
        """A tag from ``index.json``, or a digest (an index entry, or a manifest blob in ``blobs/``)."""
        digest = digest_arg(identifier)
        if digest is None:
            entry = self._find_tag(identifier)
            if entry is None:
                raise NotFound(f"tag {identifier!r} not found in {self.name}")
            return _plain(entry)
        for entry in self.index_entries():
            if entry.digest == digest:
                return _plain(entry)
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"manifest {digest} not found in {self.name}") from None
        if size > MAX_MANIFEST_BYTES:
            raise NotFound(f"{digest} in {self.name} is not a manifest ({size} bytes)")
        data = path.read_bytes()
        probe = Descriptor("application/octet-stream", digest, size)
        verify_bytes(probe, data)
        media_type = _sniff_manifest_type(data)
        if media_type is None:
            raise NotFound(f"{digest} in {self.name} is not a manifest")
        return Descriptor(media_type, digest, size)

    def get_manifest(self, identifier: str) -> tuple[Descriptor, bytes]:
        desc = self.resolve(identifier)
        return desc, self._read_small(desc)

    def put_manifest(
        self,
        desc: Descriptor,
        raw: bytes,
        tag: str | None = None,
        before_publish: BeforePublish | None = None,
    ) -> Descriptor:
        """Write the manifest blob; with ``tag`` also point the tag at it (a root in ``index.json``)."""
        verify_bytes(desc, raw)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        if desc.data is not None:
            desc = Descriptor(desc.media_type, desc.digest, desc.size, annotations=desc.annotations,
                              urls=desc.urls, artifact_type=desc.artifact_type, platform=desc.platform)
        self.put_blob(desc, io.BytesIO(raw), before_publish=before_publish)
        if tag is not None:
            self.tag(desc, tag)
        return _plain(desc)

    def tag(self, desc: Descriptor, tag: str) -> None:
        """Point ``tag`` at a manifest present in the layout, replacing any entry of that name."""
        if not _REF_NAME.match(tag):
            raise InvalidReference(f"invalid tag {tag!r}: allowed characters are A-Z a-z 0-9 - . _ : @ / +")
        if not self.has_blob(desc):
            raise NotFound(f"manifest {desc.digest} not found in {self.name}; cannot tag it {tag!r}")
        entry = _plain(desc)
        entry = entry.with_annotations({**entry.annotations, ANNOTATION_REF_NAME: tag})

        def apply(entries: list[Descriptor]) -> list[Descriptor]:
            out: list[Descriptor] = []
            placed = False
            for e in entries:
                if e.ref_name == tag:
                    if not placed:
                        out.append(entry)
                        placed = True
                    continue
                out.append(e)
            if not placed:
                out.append(entry)
            return out

        self.update_index(apply)

    def tags(self) -> list[str]:
        return [e.ref_name for e in self.index_entries() if e.ref_name]

    def delete(self, identifier: str) -> None:
        """Remove a tag (its index entry) or every index entry with a digest.

        Blobs are never removed here: a blob may be shared, and deciding that is garbage
        collection's job (it runs under ``gc_lock``).
        """
        digest = digest_arg(identifier)
        removed: list[Descriptor] = []

        def apply(entries: list[Descriptor]) -> list[Descriptor]:
            removed.clear()
            keep = []
            for e in entries:
                hit = e.digest == digest if digest is not None else e.ref_name == identifier
                (removed if hit else keep).append(e)
            return keep

        self.update_index(apply)
        if not removed:
            if digest is not None and self.blob_path(digest).exists():
                return  # present but not a root: nothing to unlink from index.json
            what = f"manifest {digest}" if digest is not None else f"tag {identifier!r}"
            raise NotFound(f"{what} not found in {self.name}")

    # -- referrers ---------------------------------------------------------------------------
    def referrers(self, subject: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``subject``: from the ``<alg>-<hex>`` fallback tag index and
        from manifests listed in ``index.json``."""
        found: dict[Digest, Descriptor] = {}
        entries = self.index_entries()
        fallback = fallback_tag(subject.digest)
        for entry in entries:
            if entry.ref_name == fallback and mt.is_index(entry.media_type):
                try:
                    idx = parse_manifest(self._read_small(entry), entry.media_type)
                except (NotFound, ManifestError):
                    continue
                for d in idx.children():
                    found.setdefault(d.digest, _plain(d))
        for entry in entries:
            if entry.digest in found or not mt.is_manifest_like(entry.media_type):
                continue
            try:
                m = parse_manifest(self._read_small(entry), entry.media_type)
            except (NotFound, ManifestError):
                continue
            if m.subject is None or m.subject.digest != subject.digest:
                continue
            art = m.artifact_type or (m.config.media_type if hasattr(m, "config") else None)
            found[entry.digest] = Descriptor(
                m.media_type, entry.digest, entry.size, annotations=m.annotations, artifact_type=art
            )
        out = list(found.values())
        if artifact_type is not None:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out


def _sniff_manifest_type(data: bytes) -> str | None:
    """The media type a blob declares, if it is a manifest or index (by ``mediaType``, else by shape)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str):
        return declared if mt.is_manifest_like(declared) else None
    if isinstance(doc.get("manifests"), list):
        return mt.OCI_INDEX
    if isinstance(doc.get("config"), dict):
        return mt.OCI_MANIFEST
    return None


def create_layout(path: str | os.PathLike[str]) -> LayoutStore:
    """Create (or open) an OCI image layout at ``path``."""
    return LayoutStore(path, create=True)
