"""Local image indexes, as ``pack manifest`` keeps them: drafts edited on this machine, then pushed.

They live in their own OCI layout, ``<scratch>/manifests/`` (not the scratch layout: garbage
collection has no business with them), each tagged by the qualified name it will be pushed as
(``localhost:5000/app:1``). An entry's child manifest is kept there too (for ``inspect``), and
where it came from is kept in an ``io.ocibuild.manifest.source`` annotation on the entry, which
``push`` uses to copy the child's graph into the target repository and strips from the index it
pushes. Children are referenced, never copied locally: only ``push`` moves blobs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from ocibuild.errors import NotFound, UsageError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, parse_manifest
from ocibuild.oci.reference import ArchiveReference, LayoutReference, parse_reference
from ocibuild.store.base import Store, read_blob
from ocibuild.store.layout import LayoutStore

SOURCE = "io.ocibuild.manifest.source"
FORMATS = {"oci": mt.OCI_INDEX, "docker": mt.DOCKER_MANIFEST_LIST}


def _open(text: str, registry: str | None, options: Any):  # noqa: ANN202
    from ocibuild.store.open import open_reference

    return open_reference(text, registry, options)


class LocalIndexes:
    """The local index store of one scratch directory."""

    def __init__(self, root: str | Path, *, registry: str | None = None, options: Any = None):
        self.root = Path(root)
        self.registry, self.options = registry, options
        self._layout: LayoutStore | None = None

    @property
    def layout(self) -> LayoutStore:
        if self._layout is None:
            self._layout = LayoutStore(self.root, create=True)
        return self._layout

    def key(self, name: str) -> str:
        """The qualified name an index is stored (and pushed) as."""
        ref = parse_reference(name, self.registry)
        if isinstance(ref, ArchiveReference):
            raise UsageError(f"{name}: an index is pushed to a registry or an oci: layout, not an archive")
        if ref.digest is not None:
            raise UsageError(f"{name}: an index name needs a tag, not a digest")
        if isinstance(ref, LayoutReference):
            ref = LayoutReference(str(Path(ref.path).absolute()), ref.tag or "latest")
        return str(ref)

    def exists(self, name: str) -> bool:
        return self.root.joinpath("oci-layout").exists() and self.key(name) in self.layout.tags()

    def load(self, name: str) -> Index:
        key = self.key(name)
        if not self.root.joinpath("oci-layout").exists() or key not in self.layout.tags():
            raise NotFound(f"no local index {key}; make one with `ocibuild manifest create {name} IMAGE...`")
        desc, raw = self.layout.get_manifest(key)
        doc = parse_manifest(raw, desc.media_type)
        assert isinstance(doc, Index)
        return doc

    def _save(self, name: str, entries: list[Descriptor], media_type: str,
              annotations: Mapping[str, str] | None = None) -> Index:
        index = Index.build(entries, media_type=media_type,
                            annotations=None if media_type == mt.DOCKER_MANIFEST_LIST else annotations)
        self.layout.put_manifest(index.descriptor(), index.raw, tag=self.key(name))
        return index

    # -- entries -----------------------------------------------------------------------------------
    def entries_of(self, image: str) -> list[Descriptor]:
        """Index entries for ``image``: one for an image manifest (platform from its config), or
        every entry of an index. Each remembers its source; its manifest is kept locally."""
        store, identifier = _open(image, self.registry, self.options)
        try:
            if identifier is None:
                raise UsageError(f"{image}: name an image (TAG or @DIGEST)")
            desc, raw = store.get_manifest(identifier)
            doc = parse_manifest(raw, desc.media_type)
            base = _source_base(image, self.registry)
            if isinstance(doc, Index):
                out = []
                for child in doc.manifests:
                    from ocibuild.transfer.copy import fetch_manifest

                    child_raw = fetch_manifest(store, child)
                    out.append(self._entry(store, child, child_raw, f"{base}@{child.digest}", child.platform))
                return out
            return [self._entry(store, desc, raw, f"{base}@{desc.digest}", None)]
        finally:
            store.close()

    def _entry(self, store: Store, desc: Descriptor, raw: bytes, source: str, platform: Platform | None) -> Descriptor:
        doc = parse_manifest(raw, desc.media_type)
        if not isinstance(doc, Manifest):
            raise UsageError(f"{source}: nested indexes are not supported")
        if platform is None and doc.config.media_type in mt.CONFIG_TYPES:
            platform = _config_platform(ImageConfig.parse(read_blob(store, doc.config), doc.config.media_type))
        plain = Descriptor(doc.media_type, desc.digest, len(raw))
        self.layout.put_manifest(plain, raw)  # kept for inspect; not a root
        return Descriptor(doc.media_type, desc.digest, len(raw), platform=platform,
                          annotations={**dict(desc.annotations), SOURCE: source},
                          artifact_type=doc.artifact_type)

    def resolve_member(self, index: Index, image: str) -> Digest:
        """The digest of the entry ``image`` names: by digest, by the source it was added from,
        or by resolving ``image`` where it lives."""
        ref = parse_reference(image, self.registry)
        if ref.digest is not None:
            digest = ref.digest
        else:
            store, identifier = _open(image, self.registry, self.options)
            try:
                if identifier is None:
                    raise UsageError(f"{image}: name an image (TAG or @DIGEST)")
                digest = store.resolve(identifier).digest
            finally:
                store.close()
        if not any(e.digest == digest for e in index.manifests):
            raise NotFound(f"{image} ({digest}) is not in the index")
        return digest

    # -- commands ----------------------------------------------------------------------------------
    def create(self, name: str, images: list[str], fmt: str = "oci") -> Index:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be oci or docker, not {fmt!r}")
        if self.exists(name):
            raise UsageError(f"local index {self.key(name)} exists; add to it with `ocibuild manifest add`")
        entries: list[Descriptor] = []
        for image in images:
            entries = _merge(entries, self.entries_of(image))
        return self._save(name, entries, FORMATS[fmt])

    def add(self, name: str, images: list[str]) -> Index:
        index = self.load(name)
        entries = list(index.manifests)
        for image in images:
            entries = _merge(entries, self.entries_of(image))
        return self._save(name, entries, index.media_type, index.annotations)

    def annotate(self, name: str, image: str, *, os: str | None = None, arch: str | None = None,
                 variant: str | None = None, os_version: str | None = None,
                 annotations: Mapping[str, str] | None = None) -> Index:
        index = self.load(name)
        digest = self.resolve_member(index, image)
        if annotations and index.media_type == mt.DOCKER_MANIFEST_LIST:
            raise UsageError("a Docker manifest list has no annotations; create the index with --format oci")
        entries = []
        for e in index.manifests:
            if e.digest == digest:
                p = e.platform or Platform("", "")
                platform = Platform(os or p.os, arch or p.architecture, variant or p.variant,
                                    os_version or p.os_version, p.os_features)
                if not platform.os or not platform.architecture:
                    raise UsageError(f"{image}: a platform needs both --os and --arch")
                e = Descriptor(e.media_type, e.digest, e.size, platform=platform,
                               annotations={**dict(e.annotations), **dict(annotations or {})},
                               artifact_type=e.artifact_type, urls=e.urls)
            entries.append(e)
        return self._save(name, entries, index.media_type, index.annotations)

    def remove_member(self, name: str, image: str) -> Index:
        index = self.load(name)
        digest = self.resolve_member(index, image)
        return self._save(name, [e for e in index.manifests if e.digest != digest], index.media_type,
                          index.annotations)

    def delete(self, name: str) -> None:
        self.load(name)
        self.layout.delete(self.key(name))

    def published(self, name: str) -> Index:
        """The index as it is pushed: the local bookkeeping annotation stripped."""
        index = self.load(name)
        entries = [Descriptor(e.media_type, e.digest, e.size, platform=e.platform, urls=e.urls,
                              artifact_type=e.artifact_type,
                              annotations={k: v for k, v in e.annotations.items() if k != SOURCE})
                   for e in index.manifests]
        return Index.build(entries, media_type=index.media_type, annotations=index.annotations or None)

    def push(self, name: str, *, jobs: int = 4, progress: Any = None) -> Descriptor:
        """Copy every child's graph from where it was added into the target, then put the index."""
        from ocibuild.store.open import open_reference
        from ocibuild.transfer.copy import copy_image

        index = self.load(name)
        if not index.manifests:
            raise UsageError(f"local index {self.key(name)} is empty")
        final = self.published(name)
        target, _ = open_reference(self.key(name), self.registry, self.options, for_write=True)
        with contextlib.ExitStack() as stack:
            stack.callback(target.close)
            for entry in index.manifests:
                source = entry.annotations.get(SOURCE)
                if source is None:
                    raise UsageError(f"{entry.digest}: the local index does not say where it came from")
                src, ident = _open(source, self.registry, self.options)
                stack.callback(src.close)
                copy_image(src, ident or str(entry.digest), target, None, jobs=jobs, progress=progress)
            tag = parse_reference(self.key(name), self.registry).tag
            return target.put_manifest(final.descriptor(), final.raw, tag=tag)

    def names(self) -> list[str]:
        if not self.root.joinpath("oci-layout").exists():
            return []
        return sorted(self.layout.tags())

    @contextlib.contextmanager
    def session(self) -> Iterator["LocalIndexes"]:
        try:
            yield self
        finally:
            if self._layout is not None:
                self._layout.close()


def _merge(entries: list[Descriptor], new: list[Descriptor]) -> list[Descriptor]:
    """``new`` replaces entries of the same digest (pack: adding twice does not duplicate)."""
    digests = {e.digest for e in new}
    return [e for e in entries if e.digest not in digests] + new


def _config_platform(config: ImageConfig) -> Platform:
    doc = config.to_dict()
    return Platform(config.os, config.architecture, doc.get("variant") or None, doc.get("os.version") or None,
                    tuple(doc.get("os.features") or ()))


def _source_base(image: str, registry: str | None) -> str:
    """``image`` without its tag or digest, qualified: where to fetch ``@DIGEST`` from at push time."""
    ref = parse_reference(image, registry)
    if isinstance(ref, LayoutReference):
        return f"oci:{Path(ref.path).absolute()}"
    if isinstance(ref, ArchiveReference):
        if ref.is_docker:
            raise UsageError(f"{image}: a docker-archive image cannot be named by digest; copy it to oci: first")
        return f"{ref.transport}:{Path(ref.path).absolute()}"
    return ref.name
