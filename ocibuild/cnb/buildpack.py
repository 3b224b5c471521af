"""Buildpack sources and the frozen ``Buildpack`` model, with pack's layer conventions.

A buildpack can come from a directory holding ``buildpack.toml``, a ``.tgz`` of such a directory,
a ``.cnb`` buildpackage (an OCI image layout in a tar) or a buildpackage image reference. Each
becomes one ``Buildpack`` per id@version (a composite brings its dependencies), and each can produce
its distribution layer: ``cnb/buildpacks/<id with / as _>/<version>/...``.

Layer tars follow pack's ``toDistTar`` (buildpacks/pack:pkg/buildpack/buildpack.go): two directory
entries for the escaped id and the version, every source entry prefixed by the version dir (hard
links too), directories and executables 0755, everything else 0644. They are written by
``ocibuild.layer`` (one reproducible tar writer: entries sorted by path, mtime
1980-01-01T00:00:01Z, uid/gid 0, empty user/group names, relative names; gzip through isal), so a
directory and a tarball of it give the same layer.

``buildpack.toml`` is parsed and validated by ``ocibuild.cnb.descriptor`` (the one parser); orders,
targets and stacks are its models. ``Buildpack`` is the thin distribution record built from one.
"""

from __future__ import annotations


import contextlib
import io
import os
import posixpath
import shutil
import tarfile
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

from ocibuild.cnb.descriptor import (
    KIND_BUILDPACK,
    KIND_EXTENSION,
    BuildpackDescriptor,
    License,
    Order,
    Stack,
    TargetSpec,
    decode_text,
    escape_id,
    order_to_json,
    parse_descriptor,
    parse_extension_descriptor,
    parse_order,
    parse_stacks,
    parse_targets,
)
from ocibuild.cnb.errors import DescriptorError
from ocibuild.errors import ManifestError, NotFound, UsageError
from ocibuild.layer import TarEntry, TarOptions, pack_mode, write_layer
from ocibuild.layer.compress import LayerResult, compress_stream, decompressor
from ocibuild.layer.tarwriter import BLOCK, CHAR, FIFO, FILE, entries_from_dir, entries_from_tar, open_tarball
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, load_json, parse_manifest

NORMALIZED_TIME = "1980-01-01T00:00:01Z"
BUILDPACKS_DIR = "cnb/buildpacks"
EXTENSIONS_DIR = "cnb/extensions"
ASSUMED_API = "0.1"  # pack's dist.AssumedBuildpackAPIVersion
LABEL_BUILDPACKAGE = "io.buildpacks.buildpackage.metadata"
LABEL_LAYERS = "io.buildpacks.buildpack.layers"
_CHUNK = 1 << 20
_EXEC_NAMES = frozenset({"bin/build", "bin/detect", "bin/generate"})
DIST_TAR_OPTIONS = TarOptions(mode_policy=pack_mode)
"""pack's modes for buildpack layers: directories and executables 0755, everything else 0644."""




# ---------------------------------------------------------------------------------------------
# The model: a thin distribution record; orders, targets and stacks are ``descriptor``'s


@dataclass(frozen=True)
class Buildpack:
    """One buildpack id@version and where its content comes from. Immutable; identity is id@version
    plus the layer diffID it produces. Made from a ``BuildpackDescriptor`` (a directory or archive)
    or from a buildpackage's layers label; ``targets`` are the declared ones (never inferred)."""

    id: str
    version: str
    api: str = ASSUMED_API
    name: str = ""
    homepage: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    licenses: tuple[License, ...] = ()
    stacks: tuple[Stack, ...] = ()
    targets: tuple[TargetSpec, ...] = ()
    order: Order = Order()
    source: "LayerSource" = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    kind: str = KIND_BUILDPACK  # or KIND_EXTENSION: laid out under cnb/extensions

    @classmethod
    def from_descriptor(cls, desc: BuildpackDescriptor, source: "LayerSource | None" = None) -> "Buildpack":
        return cls(
            id=desc.id, version=desc.version, api=desc.api, name=desc.name, homepage=desc.homepage,
            description=desc.description, keywords=desc.keywords, licenses=desc.licenses, stacks=desc.stacks,
            targets=desc.declared_targets, order=desc.order, source=source, kind=desc.kind,  # type: ignore[arg-type]
        )

    @property
    def is_extension(self) -> bool:
        return self.kind == KIND_EXTENSION

    @property
    def id_dir(self) -> str:
        """Where its versions live in a builder: ``cnb/buildpacks/<id>`` (or ``cnb/extensions/<id>``)."""
        return f"{EXTENSIONS_DIR if self.is_extension else BUILDPACKS_DIR}/{self.escaped_id}"

    @property
    def full_name(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def escaped_id(self) -> str:
        return escape_id(self.id)

    @property
    def is_composite(self) -> bool:
        return bool(self.order)

    def info_json(self) -> dict[str, Any]:
        """pack's ``dist.ModuleInfo`` as it appears in ``io.buildpacks.builder.metadata``."""
        out: dict[str, Any] = {"id": self.id}
        if self.name:
            out["name"] = self.name
        if self.version:
            out["version"] = self.version
        if self.description:
            out["description"] = self.description
        if self.homepage:
            out["homepage"] = self.homepage
        if self.keywords:
            out["keywords"] = list(self.keywords)
        if self.licenses:
            out["licenses"] = [{"type": lic.type, "uri": lic.uri} for lic in self.licenses]
        return out

    def layer_info_json(self, diff_id: Digest | str) -> dict[str, Any]:
        """pack's ``dist.ModuleLayerInfo`` (an entry of ``io.buildpacks.buildpack.layers``)."""
        out: dict[str, Any] = {"api": self.api}
        if self.stacks:
            out["stacks"] = [s.to_dict() for s in self.stacks]
        if self.targets:
            out["targets"] = [t.to_dict() for t in self.targets]
        if self.order:
            out["order"] = order_to_json(self.order)
        out["layerDiffID"] = str(diff_id)
        if self.homepage:
            out["homepage"] = self.homepage
        if self.name:
            out["name"] = self.name
        return out

    def build_layer(self, workdir: str | os.PathLike[str]) -> "LayerBlob":
        """The distribution layer of this buildpack (written to ``workdir`` if it must be made)."""
        if self.source is None:
            raise UsageError(f"buildpack {self.full_name} has no content to make a layer from")
        return self.source.layer(self, Path(workdir))


def _read_descriptor(text: str, root: Path, where: str, has_file: Callable[[str], bool] | None = None
                     ) -> BuildpackDescriptor:
    """A ``buildpack.toml`` read for distribution: ``descriptor``'s validation, any well-formed API
    (the builder's lifecycle decides which it speaks, in compose)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(f"{where}: invalid TOML: {exc}") from None
    return parse_descriptor(doc, root, has_file=has_file, supported_apis=None, where=where)


# ---------------------------------------------------------------------------------------------
# Layers: a gzip blob with known digest, size and diffID, made once and published on demand


@dataclass(frozen=True)
class LayerBlob:
    """A gzip layer blob whose digest, size and diffID are known; ``open`` streams its bytes."""

    digest: Digest
    size: int
    diff_id: Digest
    open: Callable[[], ContextManager[BinaryIO]] = field(compare=False, repr=False)
    media_type: str = mt.OCI_LAYER_GZIP

    @classmethod
    def from_result(cls, result: LayerResult) -> "LayerBlob":
        """A layer ``write_layer``/``compress_stream`` left in a temp file."""
        path = result.path
        return cls(result.digest, result.descriptor.size, result.diff_id, lambda: open(path, "rb"))

    def descriptor(self, docker: bool = False) -> Descriptor:
        return Descriptor(mt.DOCKER_LAYER if docker else mt.OCI_LAYER_GZIP, self.digest, self.size)

    def publish(self, store: Any, *, docker: bool = False, before_publish: Callable[[Descriptor], None] | None = None) -> Descriptor:
        """Write the blob into ``store`` unless it is already there; return its descriptor."""
        desc = self.descriptor(docker)
        if store.has_blob(desc):
            return desc
        with self.open() as stream:
            if before_publish is not None:
                store.put_blob(desc, stream, before_publish=before_publish)
            else:
                store.put_blob(desc, stream)
        return desc


def dist_entries(bp: Buildpack, entries: Iterable[TarEntry]) -> list[TarEntry]:
    """pack's ``toDistTar``: root-relative entries re-homed under ``cnb/buildpacks/<id>/<version>``,
    ``bin/build``, ``bin/detect`` and ``bin/generate`` executable. Fifos and device nodes are not
    buildpack content and are left out."""
    base = f"{bp.id_dir}/{bp.version}"
    out = [TarEntry.dir(bp.id_dir), TarEntry.dir(base)]
    for e in entries:
        if e.kind in (FIFO, CHAR, BLOCK):
            continue
        mode = e.mode | 0o111 if e.kind == FILE and e.path in _EXEC_NAMES else e.mode
        out.append(replace(e, path=f"{base}/{e.path}", mode=mode))
    return out


def write_dist_layer(bp: Buildpack, entries: Iterable[TarEntry], workdir: Path) -> LayerBlob:
    """The distribution layer of ``entries`` (the layer package's reproducible tar, pack's modes)."""
    return LayerBlob.from_result(write_layer(dist_entries(bp, entries), options=DIST_TAR_OPTIONS, tmp_dir=workdir))


# ---------------------------------------------------------------------------------------------
# Sources


class LayerSource:
    """Where a buildpack's content lives; subclasses make (or find) its distribution layer."""

    def layer(self, bp: Buildpack, workdir: Path) -> LayerBlob:
        raise NotImplementedError


@dataclass(frozen=True)
class DirectorySource(LayerSource):
    """A buildpack directory (``buildpack.toml`` at its root); symlinks are kept, never followed."""

    path: Path

    def layer(self, bp: Buildpack, workdir: Path) -> LayerBlob:
        return write_dist_layer(bp, entries_from_dir(self.path), workdir)


@dataclass(frozen=True)
class ArchiveSource(LayerSource):
    """A ``.tgz`` (or ``.tar``) of a buildpack directory."""

    path: Path

    def layer(self, bp: Buildpack, workdir: Path) -> LayerBlob:
        tf = open_tarball(self.path, spool_dir=workdir)
        try:
            return write_dist_layer(bp, entries_from_tar(tf), workdir)
        finally:
            tf.close()
            if tf.fileobj is not None:
                tf.fileobj.close()


@dataclass(frozen=True)
class PackagedLayer(LayerSource):
    """A layer of a buildpackage: already in distribution form, used byte for byte."""

    descriptor: Descriptor
    diff_id: Digest
    opener: Callable[[Descriptor], ContextManager[BinaryIO]] = field(compare=False, repr=False)

    def layer(self, bp: Buildpack, workdir: Path) -> LayerBlob:
        if mt.compression_of(self.descriptor.media_type) != "gzip":
            # Re-compress so every layer ocibuild adds is gzip (pack's packages always are).
            return _recompress(self, workdir)
        return LayerBlob(self.descriptor.digest, self.descriptor.size, self.diff_id, lambda: self.opener(self.descriptor))


def _recompress(src: PackagedLayer, workdir: Path) -> LayerBlob:
    compression = mt.compression_of(src.descriptor.media_type)

    def produce(out: BinaryIO) -> None:
        with src.opener(src.descriptor) as stream:
            shutil.copyfileobj(decompressor(stream, compression), out, _CHUNK)
            stream.read()  # to EOF, so the blob's digest is verified

    result = compress_stream(produce, tmp_dir=workdir)
    if result.diff_id != src.diff_id:
        result.discard()
        raise ManifestError(f"layer {src.descriptor.digest}: content does not match diffID {src.diff_id}")
    return LayerBlob.from_result(result)


# ---------------------------------------------------------------------------------------------
# Buildpackages (.cnb files and images)


class _TarLayout:
    """Read-only view of an OCI image layout stored in an uncompressed tar (a ``.cnb`` file)."""

    def __init__(self, path: Path):
        self.path = path
        with tarfile.open(path, "r:") as tar:
            self._members = {posixpath.normpath(m.name).lstrip("/"): m for m in tar.getmembers() if m.isreg()}
        if "oci-layout" not in self._members or "index.json" not in self._members:
            raise UsageError(f"{path}: not a buildpackage (no oci-layout/index.json inside)")

    def read_small(self, name: str) -> bytes:
        with tarfile.open(self.path, "r:") as tar:
            return tar.extractfile(self._members[name]).read()  # type: ignore[union-attr]

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        from ocibuild.store.base import VerifyingReader

        name = f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}"
        if name not in self._members:
            raise NotFound(f"{self.path}: blob {desc.digest} is missing")
        with tarfile.open(self.path, "r:") as tar:
            raw = tar.extractfile(self._members[name])
            reader = VerifyingReader(raw, desc)  # type: ignore[arg-type]
            with io.BufferedReader(reader, _CHUNK) as stream:
                yield stream  # type: ignore[misc]

    def read_blob(self, desc: Descriptor) -> bytes:
        from ocibuild.store.base import verify_bytes

        with self.open_blob(desc) as stream:
            data = stream.read()
        verify_bytes(desc, data)
        return data


def host_platform() -> Platform:
    machine = os.uname().machine.lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
            "s390x": "s390x"}.get(machine, machine)
    return Platform("linux", arch)


def _select(index: Index, platform: Platform | None, where: str) -> Descriptor:
    wanted = platform or host_platform()
    entry = index.select(wanted)
    if entry is None:
        raise NotFound(f"{where}: no manifest for platform {wanted}")
    return entry


def buildpacks_from_package(
    manifest: Manifest,
    config: ImageConfig,
    opener: Callable[[Descriptor], ContextManager[BinaryIO]],
    where: str,
) -> list[Buildpack]:
    """A buildpackage's buildpacks: the main one (from its metadata label) first, then its dependencies
    sorted by id@version (pack iterates a Go map here, so it has no order to keep)."""
    labels = config.labels
    try:
        meta = load_json(labels[LABEL_BUILDPACKAGE].encode(), f"{where}: {LABEL_BUILDPACKAGE}")
        layers_md = load_json(labels[LABEL_LAYERS].encode(), f"{where}: {LABEL_LAYERS}")
    except KeyError as exc:
        raise UsageError(f"{where}: not a buildpackage (no label {exc.args[0]})") from None
    if not isinstance(meta, dict) or not isinstance(layers_md, dict):
        raise ManifestError(f"{where}: malformed buildpackage labels")
    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise ManifestError(f"{where}: config has {len(diff_ids)} diffIDs for {len(manifest.layers)} layers")
    by_diff = dict(zip(diff_ids, manifest.layers))
    found: list[Buildpack] = []
    for bp_id in sorted(layers_md):
        versions = layers_md[bp_id]
        if not isinstance(versions, dict):
            raise ManifestError(f"{where}: malformed {LABEL_LAYERS} for {bp_id}")
        for version in sorted(versions):
            info = versions[version]
            try:
                diff_id = Digest.parse(info["layerDiffID"])
            except (KeyError, TypeError, Exception):
                raise ManifestError(f"{where}: {bp_id}@{version} has no valid layerDiffID") from None
            if diff_id not in by_diff:
                raise ManifestError(f"{where}: layer of {bp_id}@{version} ({diff_id}) is not in the image")
            what = f"{where}: {bp_id}@{version}"
            found.append(Buildpack(
                id=bp_id,
                version=version,
                api=str(info.get("api") or ASSUMED_API),
                name=str(info.get("name") or ""),
                homepage=str(info.get("homepage") or ""),
                stacks=parse_stacks(info.get("stacks"), what),
                targets=parse_targets(info.get("targets"), what),
                order=parse_order(info.get("order"), f"{what} order"),
                source=PackagedLayer(by_diff[diff_id], diff_id, opener),
            ))
    main = [bp for bp in found if bp.id == meta.get("id") and bp.version == meta.get("version")]
    if not main:
        raise ManifestError(f"{where}: main buildpack {meta.get('id')}@{meta.get('version')} has no layer")
    return main + [bp for bp in found if bp is not main[0]]


def load_package_file(path: Path, platform: Platform | None = None) -> list[Buildpack]:
    layout = _TarLayout(path)
    index = Index.parse(layout.read_small("index.json"))
    if not index.manifests:
        raise UsageError(f"{path}: buildpackage has no image")
    desc = index.manifests[0]
    if len(index.manifests) > 1 or desc.media_type in mt.INDEX_TYPES:
        if desc.media_type in mt.INDEX_TYPES:
            index = Index.parse(layout.read_blob(desc), desc.media_type)
        desc = _select(index, platform, str(path))
    manifest = parse_manifest(layout.read_blob(desc), desc.media_type)
    if not isinstance(manifest, Manifest):
        raise ManifestError(f"{path}: nested image indexes are not supported")
    config = ImageConfig.parse(layout.read_blob(manifest.config), manifest.config.media_type)
    return buildpacks_from_package(manifest, config, layout.open_blob, str(path))


def load_package_image(reference: str, platform: Platform | None = None, options: Any = None,
                       default_registry: str | None = None) -> list[Buildpack]:
    """A buildpackage image in a registry or layout; its layers are streamed only when used.
    Short names live on ``default_registry`` (``--registry``), as for every other image."""
    from ocibuild.store.base import load_config
    from ocibuild.store.open import open_reference

    store, identifier = open_reference(reference, default_registry, options)
    if identifier is None:
        raise UsageError(f"{reference}: name an image (oci:DIR:TAG)")
    desc, raw = store.get_manifest(identifier)
    manifest = parse_manifest(raw, desc.media_type)
    if isinstance(manifest, Index):
        desc = _select(manifest, platform, reference)
        desc, raw = store.get_manifest(str(desc.digest))
        manifest = parse_manifest(raw, desc.media_type)
    assert isinstance(manifest, Manifest)
    config = load_config(store, manifest.config)
    return buildpacks_from_package(manifest, config, store.open_blob, reference)


# ---------------------------------------------------------------------------------------------
# Resolving what a user typed


def _strip_file_uri(text: str) -> str:
    return text[len("file://"):] if text.startswith("file://") else text


def is_local_source(text: str, base_dir: Path | None = None) -> bool:
    text = _strip_file_uri(text)
    path = Path(text) if base_dir is None or os.path.isabs(text) else base_dir / text
    return path.exists()


def load_buildpacks(
    source: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    platform: Platform | None = None,
    options: Any = None,
    default_registry: str | None = None,
) -> list[Buildpack]:
    """Every buildpack a source brings: the one it names first, then (for composites) its dependencies.

    ``source``: a directory, a ``.tgz``/``.tar``, a ``.cnb`` file, a ``file://`` URI, or an image
    reference (``docker://``, ``oci:DIR:TAG`` or a plain registry reference, short names on
    ``default_registry``). An existing path wins; anything else that parses as an image reference
    (``team/bp:1``) is one. Relative paths are resolved against ``base_dir`` (a builder.toml's directory).
    """
    text = _strip_file_uri(os.fspath(source))
    base = Path(base_dir) if base_dir is not None else None
    path = Path(text) if base is None or os.path.isabs(text) else base / text
    if text.startswith(("docker://", "oci:")) or not path.exists():
        if not text.startswith(("docker://", "oci:", "ocidir://")) and not _looks_like_reference(text):
            raise UsageError(f"buildpack source {text!r} does not exist")
        return load_package_image(text, platform, options, default_registry)
    if path.is_dir():
        return _load_directory(path, platform, options, default_registry)
    if _is_package_file(path):
        return load_package_file(path, platform)
    return _load_archive(path)


def _looks_like_reference(text: str) -> bool:
    """A missing path that is a valid Docker reference (``bpkg:1``, ``team/bp:1``, ``reg:5000/bp``);
    path-like texts (``./x``, ``/x``, ``x.tgz``) never are, nor is ``a/b`` with no registry, tag or
    digest (pack reads that as a Buildpack Registry id, which ocibuild does not fetch): most likely
    a mistyped directory."""
    from ocibuild.errors import InvalidReference
    from ocibuild.oci.reference import parse_docker_reference

    if text.startswith((".", "/", "~")) or text.endswith((".tgz", ".tar", ".cnb", ".tar.gz")):
        return False
    first, slash, _ = text.partition("/")
    if slash and ":" not in text and "@" not in text and "." not in first and first != "localhost":
        return False
    try:
        parse_docker_reference(text)
    except InvalidReference:
        return False
    return True


def _is_package_file(path: Path) -> bool:
    if path.suffix == ".cnb":
        return True
    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed tar holding oci-layout
            return any(posixpath.normpath(m.name).lstrip("/") == "oci-layout" for m in tar)
    except tarfile.TarError:
        return False


def _load_directory(path: Path, platform: Platform | None, options: Any,
                    default_registry: str | None = None) -> list[Buildpack]:
    descriptor = path / "buildpack.toml"
    if not descriptor.is_file():
        raise UsageError(f"{path}: no buildpack.toml")
    desc = _read_descriptor(decode_text(descriptor.read_bytes(), str(descriptor)), path.absolute(),
                            str(descriptor))
    main = Buildpack.from_descriptor(desc, DirectorySource(path))
    deps: list[Buildpack] = []
    package = path / "package.toml"
    if package.is_file():
        try:
            doc = tomllib.loads(decode_text(package.read_bytes(), str(package)))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{package}: invalid TOML: {exc}") from None
        for dep in doc.get("dependencies") or []:
            ref = dep.get("uri") or dep.get("image") if isinstance(dep, Mapping) else None
            if not isinstance(ref, str) or not ref:
                raise UsageError(f"{package}: every dependency needs a uri or an image")
            deps.extend(load_buildpacks(ref, base_dir=path, platform=platform, options=options,
                                        default_registry=default_registry))
    return [main] + deps


def _load_archive(path: Path) -> list[Buildpack]:
    try:
        with tarfile.open(path, "r:*") as tar:
            names, text = set(), None
            for info in tar:
                name = posixpath.normpath(info.name)
                names.add(name)
                if name == "buildpack.toml" and info.isreg():
                    text = tar.extractfile(info).read()  # type: ignore[union-attr]
    except tarfile.TarError as exc:
        raise UsageError(f"{path}: not a buildpack archive ({exc})") from None
    if text is None:
        raise UsageError(f"{path}: no buildpack.toml at the archive root")
    desc = _read_descriptor(decode_text(text, f"{path}:buildpack.toml"), path.absolute(), f"{path}:buildpack.toml",
                            names.__contains__)
    return [Buildpack.from_descriptor(desc, ArchiveSource(path))]


def load_extensions(source: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None
                    ) -> list[Buildpack]:
    """An image extension from a directory holding ``extension.toml`` or a ``.tgz``/``.tar`` of one
    (``Buildpack`` records with ``kind="extension"``). Extension packages (images) are not read."""
    text = _strip_file_uri(os.fspath(source))
    path = Path(text) if base_dir is None or os.path.isabs(text) else Path(base_dir) / text
    if not path.exists():
        raise UsageError(f"extension {text!r}: no such directory or archive (extension images are not supported)")
    if path.is_dir():
        toml_path = path / "extension.toml"
        if not toml_path.is_file():
            raise UsageError(f"{path}: no extension.toml")
        text_toml, where, source_obj = toml_path.read_bytes(), str(toml_path), DirectorySource(path)
    else:
        data = _archive_member(path, "extension.toml")
        if data is None:
            raise UsageError(f"{path}: no extension.toml at the archive root")
        text_toml, where, source_obj = data, f"{path}:extension.toml", ArchiveSource(path)
    try:
        doc = tomllib.loads(decode_text(text_toml, where))
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(f"{where}: invalid TOML: {exc}") from None
    desc = parse_extension_descriptor(doc, path.absolute(), supported_apis=None, where=where)
    return [Buildpack.from_descriptor(desc, source_obj)]


def _archive_member(path: Path, member: str) -> bytes | None:
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if posixpath.normpath(info.name) == member and info.isreg():
                    return tar.extractfile(info).read()  # type: ignore[union-attr]
    except tarfile.TarError as exc:
        raise UsageError(f"{path}: not an archive ({exc})") from None
    return None


def dedupe(buildpacks: Sequence[Buildpack]) -> list[Buildpack]:
    """Drop repeats of the same id@version from the same source (a dependency named twice)."""
    seen: set[tuple[str, str, int]] = set()
    out = []
    for bp in buildpacks:
        key = (bp.id, bp.version, id(bp.source))
        if key not in seen:
            seen.add(key)
            out.append(bp)
    return out
