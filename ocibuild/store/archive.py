"""skopeo's archive transports as stores: ``oci-archive:`` (a tar of an OCI layout) and
``docker-archive:`` (``docker save``'s tar: ``manifest.json``, a config and layer tars per image).

Reading never extracts: the tar's headers are indexed once (offsets, sizes) and every blob is
streamed from its offset in the file through a ``VerifyingReader``, so nothing is held in memory
and every byte is checked. A docker archive has no manifests; one is made per image (an OCI
manifest over its config and layers, canonical JSON, so the same archive always gives the same
digest). An uncompressed layer's digest is its diff_id; a compressed one's is its file name
when the archive names blobs by digest (``blobs/sha256/<hex>``), else it is hashed once.

Writing stages into a private OCI layout next to the archive; every time a root is named (a tag),
the archive is written whole into a temp file in the same directory, fsynced and renamed over the
target. A failed command leaves the target as it was; ``close()`` removes the staging directory.
Like skopeo, writing replaces an existing archive: an archive holds what this command wrote.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ocibuild.errors import ManifestError, NotFound, StoreError, UsageError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest, Hasher
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, Index, Manifest, canonical_json, load_json, parse_manifest
from ocibuild.oci.reference import ArchiveReference, familiar_name, parse_docker_reference
from ocibuild.store.base import VerifyingReader, digest_arg, verify_bytes
from ocibuild.store.layout import INDEX_FILE, LAYOUT_FILE, LayoutStore, _sniff_manifest_type

MANIFEST_JSON = "manifest.json"
_READ_BUFFER = 1 << 20
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_DIGEST_PATH = re.compile(r"^blobs/(sha256|sha512)/([0-9a-f]{64,128})$")


def _read_only(name: str) -> StoreError:
    return StoreError(f"{name} is read as an archive; write a new one with copy (it replaces the file)")


# -- the tar, indexed ---------------------------------------------------------------------------
class _Bounded(io.RawIOBase):
    """``size`` bytes of ``fh`` from its current position; owns ``fh``."""

    def __init__(self, fh: BinaryIO, size: int):
        super().__init__()
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self._left]
        n = self._fh.readinto(view) or 0  # type: ignore[attr-defined]
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            super().close()


class TarMembers:
    """The regular files of a plain tar, by normalised name (``./a`` is ``a``), read by offset.

    Links are followed inside the tar (old ``docker save`` links repeated layers); sparse files,
    devices and links leaving the tar are refused when they are read.
    """

    def __init__(self, path: str | os.PathLike[str], what: str):
        self.path = Path(path)
        self.what = what
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(self.path, mode="r:") as tf:
                for info in tf:
                    self._members[_normalise(info.name)] = info
        except FileNotFoundError:
            raise NotFound(f"{what}: no such file") from None
        except IsADirectoryError:
            raise StoreError(f"{what}: is a directory, not a tar archive") from None
        except tarfile.ReadError as exc:
            raise StoreError(f"{what}: not a tar archive ({exc})") from None

    def _regular(self, name: str) -> tarfile.TarInfo | None:
        info = self._members.get(_normalise(name))
        for _ in range(16):
            if info is None or info.isreg():
                break
            if info.islnk():
                info = self._members.get(_normalise(info.linkname))
            elif info.issym():
                target = info.linkname
                if target.startswith("/"):
                    return None
                info = self._members.get(_normalise(os.path.join(os.path.dirname(_normalise(info.name)), target)))
            else:
                return None
        if info is None or not info.isreg() or info.issparse():
            return None
        return info

    def __contains__(self, name: str) -> bool:
        return self._regular(name) is not None

    def size(self, name: str) -> int | None:
        info = self._regular(name)
        return None if info is None else info.size

    def open(self, name: str) -> BinaryIO:
        """A raw stream of the member's bytes (caller verifies)."""
        info = self._regular(name)
        if info is None:
            raise NotFound(f"{self.what}: no file {name!r} in the archive")
        fh = open(self.path, "rb", buffering=0)  # one handle per stream: blobs are read in parallel
        fh.seek(info.offset_data)
        return io.BufferedReader(_Bounded(fh, info.size), _READ_BUFFER)  # type: ignore[arg-type, return-value]

    def read_small(self, name: str, what: str) -> bytes:
        size = self.size(name)
        if size is None:
            raise NotFound(f"{self.what}: no file {name!r} in the archive")
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.what}: {what} {name!r} is {size} bytes, over the {MAX_MANIFEST_BYTES} limit")
        with self.open(name) as fh:
            return fh.read()

    def head(self, name: str, n: int) -> bytes:
        with self.open(name) as fh:
            return fh.read(n)


def _normalise(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


@contextlib.contextmanager
def _verified(members: TarMembers, name: str, desc: Descriptor) -> Iterator[BinaryIO]:
    if members.size(name) != desc.size:
        raise NotFound(f"blob {desc.digest} not found in {members.what}")
    reader = VerifyingReader(members.open(name), desc)  # type: ignore[arg-type]
    try:
        yield reader  # type: ignore[misc]
    finally:
        reader.close()


class _ReadOnly:
    """The write half of ``Store`` for an archive opened for reading."""

    name: str

    def put_manifest(self, desc: Descriptor, raw: bytes, tag: str | None = None) -> Descriptor:
        raise _read_only(self.name)

    def put_blob(self, desc: Descriptor, stream: BinaryIO, progress: object = None) -> None:
        raise _read_only(self.name)

    def tag(self, desc: Descriptor, tag: str) -> None:
        raise _read_only(self.name)

    def delete(self, identifier: str) -> None:
        raise _read_only(self.name)

    def close(self) -> None:
        """Nothing held: every stream opens its own handle."""


# -- oci-archive: read --------------------------------------------------------------------------
class OCIArchiveReader(_ReadOnly):
    """An ``oci-archive:`` file read in place: the layout's index.json and blobs, by offset."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()
        self.name = f"oci-archive:{path}"
        self._tar = TarMembers(path, self.name)
        if LAYOUT_FILE not in self._tar:
            raise StoreError(f"{self.name}: not an OCI layout archive (no {LAYOUT_FILE})")
        doc = load_json(self._tar.read_small(LAYOUT_FILE, LAYOUT_FILE), LAYOUT_FILE)
        version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise StoreError(f"{self.name}: unsupported imageLayoutVersion {version!r}")
        try:
            self._index = Index.parse(self._tar.read_small(INDEX_FILE, INDEX_FILE))
        except ManifestError as exc:
            raise StoreError(f"{self.name}: {INDEX_FILE}: {exc}") from None

    @staticmethod
    def _blob(digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.encoded}"

    def index_entries(self) -> list[Descriptor]:
        return list(self._index.manifests)

    def only_image(self) -> str | None:
        """A bare ``oci-archive:PATH`` names its one image (tagged or not)."""
        entries = self.index_entries()
        return str(entries[0].digest) if len(entries) == 1 else None

    def tags(self) -> list[str]:
        return [e.ref_name for e in self._index.manifests if e.ref_name]

    def resolve(self, identifier: str) -> Descriptor:
        digest = digest_arg(identifier)
        for entry in self._index.manifests:
            if (entry.digest == digest) if digest is not None else (entry.ref_name == identifier):
                return Descriptor(entry.media_type, entry.digest, entry.size)
        if digest is None:
            raise NotFound(f"tag {identifier!r} not found in {self.name}")
        size = self._tar.size(self._blob(digest))
        if size is None or size > MAX_MANIFEST_BYTES:
            raise NotFound(f"manifest {digest} not found in {self.name}")
        data = self._tar.read_small(self._blob(digest), "manifest")
        verify_bytes(Descriptor("application/octet-stream", digest, size), data)
        media_type = _sniff_manifest_type(data)
        if media_type is None:
            raise NotFound(f"{digest} in {self.name} is not a manifest")
        return Descriptor(media_type, digest, size)

    def get_manifest(self, identifier: str) -> tuple[Descriptor, bytes]:
        desc = self.resolve(identifier)
        if desc.size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest {desc.digest} is {desc.size} bytes, over the {MAX_MANIFEST_BYTES} limit")
        if self._blob(desc.digest) not in self._tar:
            raise NotFound(f"manifest {desc.digest} not found in {self.name}")
        data = self._tar.read_small(self._blob(desc.digest), "manifest")
        verify_bytes(desc, data)
        return desc, data

    def has_blob(self, desc: Descriptor) -> bool:
        return self._tar.size(self._blob(desc.digest)) == desc.size

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[BinaryIO]:
        return _verified(self._tar, self._blob(desc.digest), desc)

    def stat_blob(self, digest: Digest) -> Descriptor:
        size = self._tar.size(self._blob(digest))
        if size is None:
            raise NotFound(f"blob {digest} not found in {self.name}")
        return Descriptor("application/octet-stream", digest, size)

    def referrers(self, subject: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests of index.json whose ``subject`` is ``subject`` (skopeo keeps no fallback tags here)."""
        out = []
        for entry in self._index.manifests:
            if not mt.is_manifest(entry.media_type):
                continue
            try:
                doc = parse_manifest(self.get_manifest(str(entry.digest))[1], entry.media_type)
            except (NotFound, ManifestError):
                continue
            if isinstance(doc, Manifest) and doc.subject is not None and doc.subject.digest == subject.digest:
                art = doc.artifact_type or doc.config.media_type
                if artifact_type is None or art == artifact_type:
                    out.append(Descriptor(doc.media_type, entry.digest, entry.size, artifact_type=art))
        return out


# -- docker-archive: read -----------------------------------------------------------------------
@dataclass(frozen=True)
class _DockerImage:
    manifest: Manifest
    repo_tags: tuple[str, ...]
    blobs: tuple[tuple[Digest, str], ...]  # digest -> member name


class DockerArchiveReader(_ReadOnly):
    """A ``docker save`` archive (``manifest.json``; legacy, skopeo's, crane's and docker 25's layouts)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()
        self.name = f"docker-archive:{path}"
        self._tar = TarMembers(path, self.name)
        if MANIFEST_JSON not in self._tar:
            raise StoreError(f"{self.name}: not a docker archive (no {MANIFEST_JSON})")
        doc = load_json(self._tar.read_small(MANIFEST_JSON, MANIFEST_JSON), MANIFEST_JSON)
        if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
            raise ManifestError(f"{self.name}: {MANIFEST_JSON} is not a list of images")
        self._entries: list[dict] = doc
        self._images: dict[int, _DockerImage] = {}
        self._blobs: dict[Digest, tuple[str, int]] = {}

    def _image(self, n: int) -> _DockerImage:
        if n in self._images:
            return self._images[n]
        if not 0 <= n < len(self._entries):
            raise NotFound(f"{self.name}: no image @{n} (the archive holds {len(self._entries)})")
        entry = self._entries[n]
        config_name, layer_names = entry.get("Config"), entry.get("Layers") or []
        if not isinstance(config_name, str) or not isinstance(layer_names, list) \
                or not all(isinstance(x, str) for x in layer_names):
            raise ManifestError(f"{self.name}: {MANIFEST_JSON} entry {n} needs Config and Layers file names")
        config_raw = self._tar.read_small(config_name, "config")
        config = load_json(config_raw, "config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise ManifestError(f"{self.name}: image {n}: {len(layer_names)} layers but the config lists "
                                f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids")
        config_desc = Descriptor.for_bytes(mt.OCI_CONFIG, config_raw)
        blobs = [(config_desc.digest, config_name)]
        layers = []
        for name, diff_id in zip(layer_names, diff_ids):
            layer = self._layer(name, Digest.parse(diff_id))
            layers.append(layer)
            blobs.append((layer.digest, name))
        manifest = Manifest.build(config_desc, layers)
        image = _DockerImage(manifest, self._repo_tags(n), tuple(blobs))
        for digest, name in image.blobs:
            self._blobs[digest] = (name, self._tar.size(name) or 0)
        self._images[n] = image
        return image

    def _layer(self, name: str, diff_id: Digest) -> Descriptor:
        size = self._tar.size(name)
        if size is None:
            raise NotFound(f"{self.name}: layer file {name!r} is not in the archive")
        magic = self._tar.head(name, 4)
        if magic.startswith(_GZIP_MAGIC):
            media_type = mt.OCI_LAYER_GZIP
        elif magic.startswith(_ZSTD_MAGIC):
            media_type = mt.OCI_LAYER_ZSTD
        else:
            return Descriptor(mt.OCI_LAYER, diff_id, size)  # verified against the diff_id when read
        named = _DIGEST_PATH.match(_normalise(name))
        if named:
            return Descriptor(media_type, Digest.parse(f"{named.group(1)}:{named.group(2)}"), size)
        hasher = Hasher("sha256")
        with self._tar.open(name) as fh:
            while chunk := fh.read(_READ_BUFFER):
                hasher.update(chunk)
        return Descriptor(media_type, hasher.digest(), size)

    def _all(self) -> list[_DockerImage]:
        return [self._image(n) for n in range(len(self._entries))]

    def only_image(self) -> str | None:
        return "@0" if len(self._entries) == 1 else None

    def _repo_tags(self, n: int) -> tuple[str, ...]:
        """RepoTags straight from manifest.json: naming an image needs no layer looked at."""
        tags = self._entries[n].get("RepoTags") or []
        return tuple(_familiar(t) for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()

    def tags(self) -> list[str]:
        return [tag for n in range(len(self._entries)) for tag in self._repo_tags(n)]

    def resolve(self, identifier: str) -> Descriptor:
        if identifier.startswith("@") and identifier[1:].isdigit():
            return self._image(int(identifier[1:])).manifest.descriptor()
        digest = digest_arg(identifier)
        if digest is not None:
            for image in self._all():
                if image.manifest.digest == digest:
                    return image.manifest.descriptor()
            raise NotFound(f"manifest {digest} not found in {self.name}")
        want = _familiar(identifier)
        for n in range(len(self._entries)):
            if want in self._repo_tags(n):
                return self._image(n).manifest.descriptor()
        raise NotFound(f"{identifier!r} not found in {self.name} (RepoTags: {', '.join(self.tags()) or 'none'})")

    def get_manifest(self, identifier: str) -> tuple[Descriptor, bytes]:
        desc = self.resolve(identifier)
        for image in self._images.values():  # resolve built it
            if image.manifest.digest == desc.digest:
                return desc, image.manifest.raw
        raise NotFound(f"manifest {desc.digest} not found in {self.name}")

    def _member(self, desc: Descriptor) -> str | None:
        if desc.digest not in self._blobs:
            self._all()
        found = self._blobs.get(desc.digest)
        return found[0] if found is not None and found[1] == desc.size else None

    def has_blob(self, desc: Descriptor) -> bool:
        return self._member(desc) is not None

    def stat_blob(self, digest: Digest) -> Descriptor:
        if digest not in self._blobs:
            self._all()
        if digest not in self._blobs:
            raise NotFound(f"blob {digest} not found in {self.name}")
        return Descriptor("application/octet-stream", digest, self._blobs[digest][1])

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[BinaryIO]:
        name = self._member(desc)
        if name is None:
            raise NotFound(f"blob {desc.digest} not found in {self.name}")
        return _verified(self._tar, name, desc)

    def referrers(self, subject: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        return []


def _familiar(text: str) -> str:
    """A RepoTag as ``docker save`` writes it, so ``app:1`` and ``docker.io/library/app:1`` match."""
    try:
        return familiar_name(parse_docker_reference(text))
    except UsageError:
        return text


# -- writing ------------------------------------------------------------------------------------
class _Staged(LayoutStore):
    """A private OCI layout beside the archive; ``_write_archive`` turns it into the target file."""

    transport = ""

    def __init__(self, target: str | os.PathLike[str]):
        self.target = Path(target).absolute()
        parent = self.target.parent
        if self.target.is_dir():
            raise StoreError(f"{self.transport}:{target}: is a directory, not an archive file")
        if not parent.is_dir():
            raise StoreError(f"{self.transport}:{target}: directory {parent} does not exist")
        try:
            staging = tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".staging", dir=parent)
        except OSError as exc:
            raise StoreError(f"{self.transport}:{target}: cannot write in {parent}: {exc.strerror}") from None
        self._staging = Path(staging)
        self._label = f"{self.transport}:{target}"
        super().__init__(self._staging / "layout", create=True)

    @property
    def name(self) -> str:
        return self._label

    def close(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def delete(self, identifier: str) -> None:
        raise StoreError(f"{self.name}: an archive being written cannot delete")

    def _blob_entry(self, digest: Digest, member: str) -> "object":
        from ocibuild.layer.tarwriter import FILE, TarEntry

        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{self.name}: blob {digest} was never written (a layer left out of the copy?)") from None
        return TarEntry(member, FILE, 0o644, size, opener=lambda: open(path, "rb"))

    def _write_archive(self, entries: list) -> None:
        """The tar of ``entries`` to a temp file beside the target, fsynced, renamed over it."""
        from ocibuild.layer.tarwriter import write_tar

        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write_tar(fh, entries)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class OCIArchiveWriter(_Staged):
    """``oci-archive:PATH[:TAG]`` for writing: the staged layout, tarred whenever a tag is set."""

    transport = "oci-archive"

    def tag(self, desc: Descriptor, tag: str) -> None:
        super().tag(desc, tag)
        self._write_out()

    def _write_out(self) -> None:
        from ocibuild.layer.tarwriter import TarEntry

        entries: list = [
            TarEntry.file(LAYOUT_FILE, (self.path / LAYOUT_FILE).read_bytes()),
            TarEntry.file(INDEX_FILE, (self.path / INDEX_FILE).read_bytes()),
            TarEntry.dir("blobs"),
        ]
        for digest in self.iter_blobs():
            entries.append(TarEntry.dir(f"blobs/{digest.algorithm}"))
            entries.append(self._blob_entry(digest, f"blobs/{digest.algorithm}/{digest.encoded}"))
        self._write_archive(entries)


class DockerArchiveWriter(_Staged):
    """``docker-archive:PATH[:NAME:TAG]`` for writing: ``manifest.json`` plus the config and layer
    blobs under ``blobs/sha256/`` (as docker 25 names them). Layers are kept as they came
    (``docker load`` and skopeo decompress them); the tag ``""`` names an image without RepoTags."""

    transport = "docker-archive"

    def __init__(self, target: str | os.PathLike[str]):
        super().__init__(target)
        self._roots: dict[Digest, list[str]] = {}
        self._manifests: dict[Digest, Manifest] = {}

    def tag(self, desc: Descriptor, tag: str) -> None:
        raw = self._read_small(desc)
        doc = parse_manifest(raw, desc.media_type)
        if not isinstance(doc, Manifest):
            raise UsageError(f"{self.name}: a docker archive holds single-platform images, not an index; "
                             "choose one with --platform")
        if doc.config.media_type not in mt.CONFIG_TYPES:
            raise UsageError(f"{self.name}: {doc.config.media_type} is not an image config; "
                             "a docker archive holds container images only")
        name = familiar_name(parse_docker_reference(tag)) if tag else ""
        for tags in self._roots.values():
            if name in tags:
                tags.remove(name)
        self._roots.setdefault(desc.digest, [])
        self._manifests[desc.digest] = doc
        if name:
            self._roots[desc.digest].append(name)
        self._write_out()

    def _write_out(self) -> None:
        from ocibuild.layer.tarwriter import TarEntry

        listing, entries, seen = [], [TarEntry.dir("blobs"), TarEntry.dir("blobs/sha256")], set()
        for digest, tags in self._roots.items():
            doc = self._manifests[digest]
            member = lambda d: f"blobs/{d.algorithm}/{d.encoded}"  # noqa: E731
            listing.append({"Config": member(doc.config.digest), "RepoTags": list(tags),
                            "Layers": [member(layer.digest) for layer in doc.layers]})
            for blob in doc.children():
                if blob.digest not in seen:
                    seen.add(blob.digest)
                    entries.append(self._blob_entry(blob.digest, member(blob.digest)))
        entries.append(TarEntry.file(MANIFEST_JSON, canonical_json(listing)))
        self._write_archive(entries)


def open_archive(ref: ArchiveReference, *, for_write: bool = False) -> "object":
    """The store for an archive reference: a reader in place, or a staged writer."""
    if for_write:
        if ref.index is not None:
            raise UsageError(f"{ref}: @N picks an image to read; name the image written as NAME:TAG")
        return DockerArchiveWriter(ref.path) if ref.is_docker else OCIArchiveWriter(ref.path)
    return DockerArchiveReader(ref.path) if ref.is_docker else OCIArchiveReader(ref.path)


__all__ = ["DockerArchiveReader", "DockerArchiveWriter", "OCIArchiveReader",
           "OCIArchiveWriter", "TarMembers", "open_archive"]
