"""The small Python API behind the CLI: what a script imports to copy and look at images.

Every function takes references as text (``oci:DIR:TAG``, ``docker://…`` or a Docker reference),
opens the stores it needs, and closes them. ``registry`` is where short names live; ``options`` is
a ``RegistryOptions`` (None: defaults).
"""

from __future__ import annotations

import contextlib
import os
import platform as _platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ocibuild.errors import ManifestError, NotFound, UsageError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, parse_manifest
from ocibuild.oci.reference import ArchiveReference, LayoutReference, Reference, parse_reference

if TYPE_CHECKING:
    from ocibuild.store.base import Store
    from ocibuild.transfer.progress import ProgressSink

__all__ = [
    "append", "config", "copy", "delete", "digest", "host_platform", "inspect", "manifest", "mutate",
    "open_image", "tags", "unpack",
]

_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "i686": ("386", None), "i386": ("386", None),
}


def host_platform() -> Platform:
    """The platform of this machine, in OCI words (``linux/amd64``)."""
    arch, variant = _MACHINES.get(_platform.machine().lower(), (_platform.machine().lower(), None))
    return Platform("linux", arch, variant)


@contextlib.contextmanager
def open_image(
    text: str, *, registry: str | None = None, options: Any = None, for_write: bool = False
) -> Iterator[tuple["Store", str | None]]:
    """The store ``text`` points into and the identifier it names; closed on exit."""
    from ocibuild.store.open import open_reference

    store, identifier = open_reference(text, registry, options, for_write=for_write)
    try:
        yield store, identifier
    finally:
        store.close()


def _require_identifier(store: "Store", identifier: str | None, text: str) -> str:
    """A bare ``oci:DIR`` names its only image; with several, the user must choose."""
    if identifier is not None:
        return identifier
    names = store.tags()
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFound(f"{store.name}: no tagged image in the layout")
    raise UsageError(f"{text} holds {len(names)} images; add :TAG or @DIGEST ({', '.join(sorted(names)[:5])})")


def _default_tag(src_text: str, registry: str | None) -> str:
    ref = parse_reference(src_text, registry)
    return ref.tag if ref.tag and ref.digest is None else "latest"


def copy(
    src: str,
    dst: str,
    *,
    platforms: list[Platform] | None = None,
    all_platforms: bool = False,
    jobs: int = 4,
    registry: str | None = None,
    options: Any = None,
    progress: "ProgressSink | None" = None,
    referrers: bool = False,
) -> Descriptor:
    """Copy an image (or index) between any two references; returns the descriptor written.

    A destination without tag (``oci:DIR``) gets the source's tag, else ``latest``; a destination
    with a digest is only accepted when the copy produces exactly that digest.
    """
    from ocibuild.transfer.copy import copy_image

    dst_ref = parse_reference(dst, registry)
    with open_image(src, registry=registry, options=options) as (src_store, src_id):
        src_id = _require_identifier(src_store, src_id, src)
        top = src_store.resolve(src_id)  # a missing source fails here, before the destination exists
        if dst_ref.digest is not None and not platforms and top.digest != dst_ref.digest:
            # check before writing anything: the source must already be that digest
            raise UsageError(f"{src} is {top.digest}, not the destination digest {dst_ref.digest}")
        with _new_layout_removed_on_error(dst_ref), \
                open_image(dst, registry=registry, options=options, for_write=True) as (dst_store, _):
            if dst_ref.digest is not None:
                tag = None
            elif isinstance(dst_ref, LayoutReference) and dst_ref.tag is None:
                tag = _default_tag(src, registry)
            elif isinstance(dst_ref, ArchiveReference) and dst_ref.tag is None:
                tag = _archive_default_tag(dst_ref, src, registry)
            else:
                tag = dst_ref.tag
            desc = copy_image(
                src_store, src_id, dst_store, tag,
                platforms=platforms, all_platforms=all_platforms, jobs=jobs, progress=progress,
                referrers=referrers,
            )
            if dst_ref.digest is not None and desc.digest != dst_ref.digest:
                raise UsageError(f"copied image is {desc.digest}, not the destination digest {dst_ref.digest}")
            return desc


def _archive_default_tag(dst: ArchiveReference, src_text: str, registry: str | None) -> str:
    """An oci-archive gets the source's tag (as ``oci:DIR``); a docker archive, like skopeo's, no RepoTags."""
    return "" if dst.is_docker else _default_tag(src_text, registry)


def manifest(
    ref: str, *, platform: Platform | None = None, registry: str | None = None, options: Any = None
) -> tuple[Descriptor, bytes]:
    """The exact manifest bytes ``ref`` names (verified), and their descriptor.

    With ``platform``, an index is followed to that platform's image and the image manifest's own
    bytes are returned (``crane manifest --platform``); an image manifest is returned as it is.
    """
    with open_image(ref, registry=registry, options=options) as (store, identifier):
        desc, raw = store.get_manifest(_require_identifier(store, identifier, ref))
        if platform is None:
            return desc, raw
        image_desc, doc = _image_manifest(store, desc, raw, platform)
        return image_desc, doc.raw


def digest(ref: str, *, registry: str | None = None, options: Any = None) -> Digest:
    with open_image(ref, registry=registry, options=options) as (store, identifier):
        return store.resolve(_require_identifier(store, identifier, ref)).digest


def _image_manifest(
    store: "Store", desc: Descriptor, raw: bytes, platform: Platform | None
) -> tuple[Descriptor, Manifest]:
    """Follow an index to the image for ``platform`` (default: this machine's)."""
    from ocibuild.transfer.copy import fetch_manifest

    doc = parse_manifest(raw, desc.media_type)
    seen: set[Digest] = set()
    while isinstance(doc, Index):
        if desc.digest in seen:
            raise ManifestError(f"{store.name}: index cycle at {desc.digest}")
        seen.add(desc.digest)
        want = platform or host_platform()
        child = doc.select(want)
        if child is None:
            available = ", ".join(str(e.platform) for e in doc.manifests if e.platform) or "none"
            raise NotFound(f"{store.name}: no image for platform {want} (available: {available})")
        raw = fetch_manifest(store, child)
        desc = Descriptor(child.media_type, child.digest, child.size)
        doc = parse_manifest(raw, child.media_type)
    return desc, doc


def config(
    ref: str, *, platform: Platform | None = None, registry: str | None = None, options: Any = None
) -> tuple[Descriptor, bytes]:
    """The exact config blob of the image ``ref`` names (an index is resolved by ``platform``)."""
    from ocibuild.store.base import read_blob

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        desc, raw = store.get_manifest(_require_identifier(store, identifier, ref))
        _, doc = _image_manifest(store, desc, raw, platform)
        return doc.config, read_blob(store, doc.config)


def _desc_summary(desc: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": str(desc.digest), "mediaType": desc.media_type, "size": desc.size}
    if desc.platform is not None:
        out["platform"] = str(desc.platform)
    if desc.annotations:
        out["annotations"] = dict(desc.annotations)
    if desc.urls:
        out["urls"] = list(desc.urls)
    return out


def inspect(
    ref: str, *, platform: Platform | None = None, registry: str | None = None, options: Any = None
) -> dict[str, Any]:
    """A JSON-able summary: digest, media type, platforms or layers, and the config's runtime settings.

    An index is described by its entries; ``platform`` describes one of its images instead.
    """
    from ocibuild.store.base import read_blob

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        desc, raw = store.get_manifest(_require_identifier(store, identifier, ref))
        doc = parse_manifest(raw, desc.media_type)
        out: dict[str, Any] = {"reference": ref, "digest": str(desc.digest), "mediaType": doc.media_type, "size": len(raw)}
        if isinstance(doc, Index):
            if platform is None:
                out["manifests"] = [_desc_summary(e) for e in doc.manifests]
                out["platforms"] = [str(e.platform) for e in doc.manifests if e.platform]
                if doc.annotations:
                    out["annotations"] = dict(doc.annotations)
                return out
            image_desc, doc = _image_manifest(store, desc, raw, platform)
            out["index"] = out.pop("digest")
            out.update(digest=str(image_desc.digest), mediaType=doc.media_type, size=doc.size)
        assert isinstance(doc, Manifest)
        out["config"] = _desc_summary(doc.config)
        out["layers"] = [_desc_summary(layer) for layer in doc.layers]
        out["layersSize"] = sum(layer.size for layer in doc.layers)
        if doc.annotations:
            out["annotations"] = dict(doc.annotations)
        if doc.artifact_type:
            out["artifactType"] = doc.artifact_type
        if doc.subject is not None:
            out["subject"] = str(doc.subject.digest)
        if doc.config.media_type in mt.CONFIG_TYPES:
            cfg = ImageConfig.parse(read_blob(store, doc.config), doc.config.media_type)
            section = cfg.get("config") or {}
            out["platform"] = str(cfg.platform)
            out["created"] = cfg.created
            out["env"] = list(cfg.env)
            out["entrypoint"] = list(section.get("Entrypoint") or []) or None
            out["cmd"] = list(section.get("Cmd") or []) or None
            out["user"] = section.get("User") or None
            out["workingDir"] = section.get("WorkingDir") or None
            out["labels"] = dict(cfg.labels)
            if LIFECYCLE_LABEL in cfg.labels:  # a buildpacks app image: pack inspect's view too
                from ocibuild.cnb.inspect import cnb_view

                out["cnb"] = cnb_view(cfg)
        return out


LIFECYCLE_LABEL = "io.buildpacks.lifecycle.metadata"


def tags(repo: str, *, registry: str | None = None, options: Any = None) -> list[str]:
    """The tags of a repository (or of a layout directory), sorted."""
    ref = parse_reference(repo, registry)
    if isinstance(ref, Reference) and (ref.digest is not None or (ref.tag and ref.tag != "latest")):
        raise UsageError(f"tags takes a repository, not an image: {repo}")
    with open_image(repo, registry=registry, options=options) as (store, _):
        return sorted(store.tags())


def delete(ref: str, *, registry: str | None = None, options: Any = None) -> None:
    """Remove a tag, or a manifest by digest."""
    with open_image(ref, registry=registry, options=options) as (store, identifier):
        if identifier is None:
            raise UsageError(f"delete needs :TAG or @DIGEST: {ref}")
        store.delete(identifier)


def _destination(dst: str, registry: str | None) -> tuple[str | None, Any]:
    """The tag a derived image is written under (a digest destination makes no sense here)."""
    ref = parse_reference(dst, registry)
    if ref.digest is not None:
        raise UsageError(f"--tag needs a tag, not a digest: {dst}")
    if isinstance(ref, ArchiveReference) and ref.tag is None:
        return ("" if ref.is_docker else "latest"), ref
    return ref.tag or "latest", ref


@contextlib.contextmanager
def _source_and_destination(
    src: str, dst: str, registry: str | None, options: Any
) -> Iterator[tuple[Store, str, Store, str | None]]:
    """The image ``src`` names (identifier required) and the store and tag ``dst`` names, for writing."""
    tag, dst_ref = _destination(dst, registry)
    with open_image(src, registry=registry, options=options) as (src_store, src_id):
        src_id = _require_identifier(src_store, src_id, src)
        src_store.resolve(src_id)  # a missing source fails here, before the destination exists
        with _new_layout_removed_on_error(dst_ref), \
                open_image(dst, registry=registry, options=options, for_write=True) as (dst_store, _):
            yield src_store, src_id, dst_store, tag


@contextlib.contextmanager
def _new_layout_removed_on_error(ref: Any) -> Iterator[None]:
    """A layout directory that this command creates is removed again if the command fails early.

    A failed copy, append or mutate must not leave an empty layout behind. Only the bare skeleton is
    removed (no blob, no index entry), and only while no other process is writing into it (the GC
    lock, which writers hold shared, taken exclusively without waiting): a layout that existed
    before, or that holds anything, or that another process is filling, is left alone.
    """
    path = ref.path if isinstance(ref, LayoutReference) else None
    created = path is not None and not os.path.lexists(path)
    try:
        yield
    except BaseException:
        if created:
            _remove_empty_layout(Path(path))
        raise


def _remove_empty_layout(root: Path) -> None:
    import fcntl
    import json

    from ocibuild.store.layout import GC_LOCK

    if root.is_symlink() or not root.is_dir():
        return
    try:
        fd = os.open(root / GC_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        blobs = root / "blobs"
        if any(f.is_file() for f in blobs.rglob("*")) if blobs.is_dir() else False:
            return
        index = root / "index.json"
        if index.exists() and json.loads(index.read_text() or "{}").get("manifests"):
            return
        for entry in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
        root.rmdir()
    except (OSError, ValueError):
        return  # busy, unreadable or not empty: leave it as it is
    finally:
        os.close(fd)


def append(
    base: str,
    layers: list[str],
    dst: str,
    *,
    platform: Platform | None = None,
    registry: str | None = None,
    options: Any = None,
) -> Descriptor:
    """A new image ``dst``: ``base`` plus one reproducible gzip layer per directory or tarball in ``layers``."""
    from ocibuild.mutate import append_layers

    with _source_and_destination(base, dst, registry, options) as (src_store, base_id, dst_store, tag):
        return append_layers(src_store, base_id, layers, dst_store, tag, platform=platform)


def mutate(
    ref: str,
    dst: str,
    *,
    env: dict[str, str | None] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    labels: dict[str, str | None] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    annotations: dict[str, str | None] | None = None,
    platform: Platform | None = None,
    registry: str | None = None,
    options: Any = None,
) -> Descriptor:
    """A new image ``dst`` with config edits (``None``: leave the field alone)."""
    from ocibuild.mutate import mutate_image

    with _source_and_destination(ref, dst, registry, options) as (src_store, src_id, dst_store, tag):
        return mutate_image(
            src_store, src_id, env=env, entrypoint=entrypoint, cmd=cmd, labels=labels, user=user,
            workdir=workdir, annotations=annotations, dst_store=dst_store, dst_tag=tag, platform=platform,
        )


def unpack(
    ref: str, directory: str, *, platform: Platform | None = None, registry: str | None = None, options: Any = None
) -> Descriptor:
    """Extract the image's root filesystem into ``directory`` (layers in order, whiteouts applied, verified).

    Extraction streams, so a refused entry or a digest mismatch is found mid-way: a ``directory``
    this call created is removed again on failure (one the caller made is left as the layers left it).
    """
    import shutil

    from ocibuild.layer.extract import unpack_image

    created = not os.path.lexists(directory)
    try:
        with open_image(ref, registry=registry, options=options) as (store, identifier):
            desc, raw = store.get_manifest(_require_identifier(store, identifier, ref))
            image_desc, doc = _image_manifest(store, desc, raw, platform)
            unpack_image(store, doc, directory)
            return image_desc
    except BaseException:
        if created and os.path.isdir(directory) and not os.path.islink(directory):
            shutil.rmtree(directory, ignore_errors=True)
        raise


# -- crane's verbs ------------------------------------------------------------------------------
def tag(ref: str, new_tag: str, *, registry: str | None = None, options: Any = None) -> Descriptor:
    """Give the image ``ref`` names another tag in the same repository or layout; no blob moves
    (``crane tag``: the manifest bytes are read and put again under ``new_tag``)."""
    with open_image(ref, registry=registry, options=options) as (store, identifier):
        parsed = parse_reference(ref, registry)
        parsed.with_tag(new_tag)  # refuses a tag that store's grammar does not allow
        if isinstance(parsed, ArchiveReference):
            raise UsageError(f"{ref}: archives are written whole; copy to {parsed.transport}:PATH:{new_tag}")
        desc, raw = store.get_manifest(_require_identifier(store, identifier, ref))
        store.put_manifest(desc, raw, tag=new_tag)
        return desc


def catalog(registry_name: str, *, options: Any = None) -> list[str]:
    """The repositories of a registry (``_catalog``, following ``Link`` pagination)."""
    from ocibuild.oci.reference import normalize_registry
    from ocibuild.store.registry.store import catalog as list_catalog

    return list_catalog(normalize_registry(registry_name.removeprefix("docker://")), options)


def blob(ref: str, out: Any, *, registry: str | None = None, options: Any = None) -> Descriptor:
    """Stream the blob ``REPO@DIGEST`` names into ``out`` (``write``), verified (``crane blob``)."""
    from ocibuild.store.base import copy_stream

    parsed = parse_reference(ref, registry)
    if parsed.digest is None:
        raise UsageError(f"blob needs REPO@DIGEST (or oci:DIR@DIGEST): {ref}")
    with open_image(ref, registry=registry, options=options) as (store, _):
        stat = getattr(store, "stat_blob", None)
        if stat is None:
            raise UsageError(f"{store.name}: cannot read single blobs")
        desc = stat(parsed.digest)
        with store.open_blob(desc) as stream:
            copy_stream(stream, out, desc)
        return desc


def _image_of(store: "Store", identifier: str | None, text: str, platform: Platform | None) -> Manifest:
    desc, raw = store.get_manifest(_require_identifier(store, identifier, text))
    return _image_manifest(store, desc, raw, platform)[1]


def export(ref: str, out: Any, *, platform: Platform | None = None, registry: str | None = None,
           options: Any = None) -> Descriptor:
    """Write the image's flattened file system (whiteouts applied) as a tar to the binary stream ``out``."""
    from ocibuild.layer.flatten import export_filesystem

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        doc = _image_of(store, identifier, ref, platform)
        export_filesystem(store, doc, out)
        return doc.descriptor()


def flatten(ref: str, dst: str, *, platform: Platform | None = None, registry: str | None = None,
            options: Any = None) -> Descriptor:
    """A one-layer image ``dst`` with ``ref``'s file system and config (``crane flatten -t``)."""
    from ocibuild.mutate import flatten_image

    with _source_and_destination(ref, dst, registry, options) as (src_store, src_id, dst_store, tag_):
        return flatten_image(src_store, src_id, dst_store, tag_, platform=platform)


def validate(ref: str, *, fast: bool = False, schemas: str | None = None, registry: str | None = None,
             options: Any = None) -> Any:
    """Check digests, sizes, media types, diff_ids (and schemas when available) of an image or index."""
    from ocibuild.transfer.validate import validate_image

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        entries = getattr(store, "index_entries", None)
        if identifier is None and entries is not None:  # a bare layout: every image it holds
            from ocibuild.transfer.validate import Report

            report = Report()
            for entry in entries():
                part = validate_image(store, str(entry.digest), fast=fast, schemas=schemas)
                report.checked += part.checked
                report.problems += part.problems
                report.schemas = part.schemas
            if not report.checked and not report.problems:
                raise NotFound(f"{store.name}: no image in the layout")
            return report
        return validate_image(store, _require_identifier(store, identifier, ref), fast=fast, schemas=schemas)


def package_buildpack(config: str, output: str, *, fmt: str = "image", target: Platform | None = None,
                      registry: str | None = None, options: Any = None) -> Descriptor:
    """``pack buildpack package``: package.toml -> a buildpackage image at ``output`` (any writable
    reference) or, with ``fmt="file"``, a ``.cnb`` file at the path ``output``."""
    from ocibuild.cnb.package import package_buildpack as build

    if fmt == "file":
        from ocibuild.store.archive import OCIArchiveWriter

        path = output.removeprefix("file://")
        if path.startswith(("oci:", "oci-archive:", "docker://")):
            raise UsageError(f"--format file writes a .cnb file: give a path, not {output}")
        return build(config, target=target, registry=registry, options=options,
                     store_for=lambda: OCIArchiveWriter(path), tag="latest")
    if fmt != "image":
        raise UsageError(f"--format must be image or file, not {fmt!r}")
    tag, dst_ref = _destination(output, registry)
    from ocibuild.store.open import open_reference

    with _new_layout_removed_on_error(dst_ref):
        return build(config, target=target, registry=registry, options=options, tag=tag,
                     store_for=lambda: open_reference(output, registry, options, for_write=True)[0])
