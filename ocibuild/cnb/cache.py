"""The build cache: cache layers kept between builds, as a directory or as an image.

Formats are the lifecycle's (cache/volume_cache.go, cache/image_cache.go):

* ``DirCache``: ``<dir>/committed/<diffID>.tar`` (plain tars) and ``<dir>/committed/
  io.buildpacks.lifecycle.cache.metadata`` (JSON). Saving writes into ``<dir>/staging/`` and renames;
  a layer whose diffID is already committed is not written again.
* ``ImageCache``: an image with one gzip layer per cached layer and the metadata as the label
  ``io.buildpacks.lifecycle.cache.metadata``. A layer the store already holds is not uploaded.

Restoring follows the lifecycle's restorer: ``cache = true`` layers get their content, ``<layer>.toml``
(``[metadata]`` only: the types are false until the buildpack sets them again) and ``<layer>.sha``;
launch-only layers (from the previous image's metadata) get the toml and sha only, so that a buildpack
can keep them and the exporter reuses them by diffID; build-only layers are not restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Protocol

import tomli_w

from ocibuild.cnb.descriptor import GroupElement
from ocibuild.cnb.export import _dir_entries, escape_id, read_build_output, sbom_entries
from ocibuild.cnb.errors import CacheError
from ocibuild.errors import NotFound
from ocibuild.layer import TarEntry, write_layer
from ocibuild.layer.compress import decompressor
from ocibuild.layer.extract import safe_extract
from ocibuild.layer.tarwriter import normalize_path
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest, canonical_json
from ocibuild.store.base import Store, load_config, load_manifest, put_bytes

CACHE_LABEL = "io.buildpacks.lifecycle.cache.metadata"


@dataclass(frozen=True)
class CachedLayer:
    """One cache layer as built: where its plain tar is and what the metadata says."""

    buildpack: GroupElement
    name: str
    diff_id: Digest
    metadata: Mapping[str, Any]


class LayerCache(Protocol):
    def metadata(self) -> dict[str, Any]:
        """The cache metadata JSON (``{"buildpacks": [{"key", "version", "layers": {...}}]}``)."""

    def open_layer(self, diff_id: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The plain tar of a cached layer."""

    def save(self, layers_dir: Path, *, image_layers_dir: str = "/layers", uid: int = 0, gid: int = 0,
             tmp_dir: Path | None = None) -> "SaveResult":
        ...


@dataclass(frozen=True)
class SaveResult:
    metadata: dict[str, Any]
    written: tuple[str, ...]  # diffIDs of layers whose bytes were written (others were reused)
    reused: tuple[str, ...]


def _cache_layers(layers_dir: Path) -> list[tuple[GroupElement, str, Path, dict[str, Any]]]:
    build = read_build_output(layers_dir)
    out = []
    for lay in build.layers:
        if lay.cache and lay.has_content:
            md = {"data": dict(lay.metadata), "build": lay.build, "launch": lay.launch, "cache": True}
            out.append((lay.buildpack, lay.name, lay.path, md))
    return out


def _tar_layer(path: Path, image_path: str, uid: int, gid: int, media_type: str, tmp_dir: Path):  # noqa: ANN202
    entries = _dir_entries(path, image_path, uid, gid)
    return write_layer(entries, media_type=media_type, tmp_dir=tmp_dir)


def _metadata_doc(items: list[tuple[GroupElement, str, str, dict[str, Any]]], sbom_sha: str | None = None
                  ) -> dict[str, Any]:
    bps: dict[str, dict[str, Any]] = {}
    for bp, name, sha, md in items:
        entry = bps.setdefault(bp.id, {"key": bp.id, "version": bp.version, "layers": {}})
        entry["layers"][name] = {"sha": sha, **md}
    doc: dict[str, Any] = {"buildpacks": list(bps.values())}
    if sbom_sha:
        doc["sbom"] = {"sha": sbom_sha}  # the lifecycle's cache metadata "sbom" (layers/sbom/cache)
    return doc


def _sbom_cache_entries(layers_dir: Path, cached: list[tuple[GroupElement, str, Path, dict[str, Any]]],
                        image_layers_dir: str) -> list[TarEntry]:
    """``<layers>/sbom/cache/<bp>/<layer>/sbom.<ext>`` from each cache layer's ``<layer>.sbom.<ext>``:
    the one SBOM layer of the cache, so that a layer restored from it keeps its SBOM."""
    names = {(bp.id, name) for bp, name, _path, _md in cached}
    return sbom_entries(layers_dir, sorted({bp.id for bp, *_ in cached}), "cache", image_layers_dir,
                        lambda bp_id, owner: (bp_id, owner) in names)


def restore_sbom(cache: LayerCache, cache_md: Mapping[str, Any], layers: Path, restored: list[str],
                 image_layers_dir: str) -> None:
    """The cache's SBOM layer, when its metadata names one (never from an empty cache, lifecycle#831),
    into ``<layers>/sbom/cache``, and each restored layer's files back as ``<bp>/<layer>.sbom.<ext>``."""
    sha = (cache_md.get("sbom") or {}).get("sha")
    target = layers / "sbom" / "cache"
    if not sha or not _restore_content(cache, sha, target, normalize_path(f"{image_layers_dir}/sbom/cache")):
        return
    for key in restored:
        bp_id, _, name = key.partition(":")
        src = target / escape_id(bp_id) / name
        for sbom in sorted(src.glob("sbom.*")) if src.is_dir() else []:
            shutil.copyfile(sbom, layers / escape_id(bp_id) / f"{name}.{sbom.name}")


class DirCache:
    """``--cache-dir DIR`` (and the default cache in the scratch directory)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.committed = self.path / "committed"
        self.staging = self.path / "staging"

    def _layer_path(self, diff_id: str) -> Path:
        Digest.parse(diff_id)  # never a path from untrusted JSON without checking its shape
        return self.committed / f"{diff_id}.tar"

    def metadata(self) -> dict[str, Any]:
        try:
            return json.loads((self.committed / CACHE_LABEL).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise CacheError(f"{self.committed / CACHE_LABEL}: not valid JSON ({exc})") from None

    @contextlib.contextmanager
    def open_layer(self, diff_id: str) -> Iterator[BinaryIO]:
        path = self._layer_path(diff_id)
        if not path.is_file():
            raise NotFound(f"cache {self.path}: no layer {diff_id}")
        with open(path, "rb") as fh:
            yield fh

    def save(self, layers_dir: Path, *, image_layers_dir: str = "/layers", uid: int = 0, gid: int = 0,
             tmp_dir: Path | None = None) -> SaveResult:
        self.committed.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        items, written, reused = [], [], []

        def commit(res: Any) -> str:
            sha = str(res.diff_id)
            target = self._layer_path(sha)
            if target.exists():
                res.discard()
                reused.append(sha)
            else:
                os.replace(res.path, target)
                written.append(sha)
            return sha

        cached = _cache_layers(Path(layers_dir))
        for bp, name, path, md in cached:
            sha = commit(_tar_layer(path, f"{image_layers_dir}/{escape_id(bp.id)}/{name}", uid, gid, mt.OCI_LAYER,
                                    self.staging))
            items.append((bp, name, sha, md))
        sbom = _sbom_cache_entries(Path(layers_dir), cached, image_layers_dir)
        sbom_sha = commit(write_layer(sbom, media_type=mt.OCI_LAYER, tmp_dir=self.staging)) if sbom else None
        doc = _metadata_doc(items, sbom_sha)
        tmp = self.staging / CACHE_LABEL
        tmp.write_bytes(canonical_json(doc))
        os.replace(tmp, self.committed / CACHE_LABEL)
        keep = {f"{sha}.tar" for sha in (*(item[2] for item in items), sbom_sha) if sha} | {CACHE_LABEL}
        for old in self.committed.iterdir():
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return SaveResult(doc, tuple(written), tuple(reused))

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ImageCache:
    """``--cache-image REF``: the cache as an image in a store (a registry repository or a layout)."""

    def __init__(self, store: Store, tag: str):
        self.store, self.tag = store, tag

    def _image(self) -> tuple[Manifest, ImageConfig] | None:
        try:
            _desc, manifest = load_manifest(self.store, self.tag)
        except NotFound:
            return None
        if not isinstance(manifest, Manifest):
            raise CacheError(f"cache image {self.store.name}:{self.tag} is an index")
        return manifest, load_config(self.store, manifest.config)

    def metadata(self) -> dict[str, Any]:
        found = self._image()
        if found is None or not found[1].labels.get(CACHE_LABEL):
            return {}
        return json.loads(found[1].labels[CACHE_LABEL])

    def _by_diff(self) -> dict[str, Descriptor]:
        found = self._image()
        if found is None:
            return {}
        return dict(zip((str(d) for d in found[1].diff_ids), found[0].layers))

    @contextlib.contextmanager
    def open_layer(self, diff_id: str) -> Iterator[BinaryIO]:
        desc = self._by_diff().get(diff_id)
        if desc is None:
            raise NotFound(f"cache image {self.store.name}:{self.tag}: no layer {diff_id}")
        with self.store.open_blob(desc) as raw:
            yield decompressor(raw, mt.compression_of(desc.media_type))  # type: ignore[arg-type]

    def save(self, layers_dir: Path, *, image_layers_dir: str = "/layers", uid: int = 0, gid: int = 0,
             tmp_dir: Path | None = None) -> SaveResult:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="ocibuild-cache-", dir=tmp_dir))
        items, layers, diff_ids, written, reused = [], [], [], [], []

        def push(res: Any) -> str:
            sha = str(res.diff_id)
            if self.store.has_blob(res.descriptor):
                reused.append(sha)
            else:
                with open(res.path, "rb") as fh:
                    self.store.put_blob(res.descriptor, fh)
                written.append(sha)
            res.discard()
            layers.append(res.descriptor)
            diff_ids.append(sha)
            return sha

        try:
            cached = _cache_layers(Path(layers_dir))
            for bp, name, path, md in cached:
                sha = push(_tar_layer(path, f"{image_layers_dir}/{escape_id(bp.id)}/{name}", uid, gid,
                                      mt.OCI_LAYER_GZIP, work))
                items.append((bp, name, sha, md))
            sbom = _sbom_cache_entries(Path(layers_dir), cached, image_layers_dir)
            sbom_sha = push(write_layer(sbom, media_type=mt.OCI_LAYER_GZIP, tmp_dir=work)) if sbom else None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        doc = _metadata_doc(items, sbom_sha)
        config = ImageConfig.build({
            "architecture": "amd64", "os": "linux", "created": "1980-01-01T00:00:01Z",
            "config": {"Labels": {CACHE_LABEL: canonical_json(doc).decode()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        put_bytes(self.store, config.descriptor(), config.raw)
        manifest = Manifest.build(config.descriptor(), layers)
        self.store.put_manifest(manifest.descriptor(), manifest.raw, tag=self.tag)
        return SaveResult(doc, tuple(written), tuple(reused))


@dataclass(frozen=True)
class Restored:
    content: tuple[str, ...]  # "<bp id>:<layer>" restored with their files
    metadata_only: tuple[str, ...]  # launch layers restored as toml + sha only


def _write_layer_files(bp_dir: Path, name: str, md: Mapping[str, Any], sha: str) -> None:
    """``<layer>.toml`` as the restorer writes it for buildpack API >= 0.6 (all ocibuild supports):
    ``[metadata]`` only, no ``[types]``, so every flag is false until the buildpack sets it again
    (lifecycle ``layermetadata.DefaultEncoderDecoder``); which layers come back is decided from the
    labels' types (``_restore_kind``)."""
    doc: dict[str, Any] = {}
    if md.get("data"):
        doc["metadata"] = md["data"]
    bp_dir.mkdir(parents=True, exist_ok=True)
    (bp_dir / f"{name}.toml").write_text(tomli_w.dumps(doc))
    (bp_dir / f"{name}.sha").write_text(sha)


def _restore_kind(c_md: Mapping[str, Any] | None, l_md: Mapping[str, Any] | None, have_cache: bool,
                  have_previous: bool) -> str | None:
    """How one layer comes back (the lifecycle's metadata restorer and restorer):

    * a launch layer of the previous image: its metadata (types from the image label) and, when it is
      also a cache layer, its content from the cache only if the cache holds the same sha (else it is
      stale and left for the buildpack to remake); launch+build without cache is never restored;
    * a cache layer the previous image does not have: content and metadata from the cache, unless it
      is a launch layer and there is a previous image that lacks it (stale); with no previous image at
      all, launch+cache layers come from the cache (spec#406, lifecycle#1346).

    Returns ``"metadata"`` (toml and sha only), ``"image"`` / ``"cache"`` (content, metadata from
    there) or None."""
    cache_ok = bool(have_cache and c_md and c_md.get("cache") and c_md.get("sha"))
    if l_md and l_md.get("launch"):
        if l_md.get("build") and not l_md.get("cache"):
            return None
        if not l_md.get("cache"):
            return "metadata"
        return "image" if cache_ok and c_md and c_md.get("sha") == l_md.get("sha") else None
    if not cache_ok or not c_md:
        return None
    return None if c_md.get("launch") and have_previous else "cache"


def _restore_content(cache: LayerCache | None, sha: str, target: Path, prefix: str) -> bool:
    """A cache layer's files into ``target``; a layer the cache lists but cannot give is skipped,
    not fatal (lifecycle#1381)."""
    assert cache is not None
    target.mkdir(parents=True, exist_ok=True)
    try:
        with cache.open_layer(sha) as stream:
            safe_extract(stream, target, prefix)
    except NotFound:
        shutil.rmtree(target, ignore_errors=True)
        return False
    return True


def restore(
    cache: LayerCache | None,
    layers_dir: str | os.PathLike[str],
    group: list[GroupElement],
    *,
    previous: Mapping[str, Any] | None = None,
    image_layers_dir: str = "/layers",
) -> Restored:
    """Put cached layers and launch-layer metadata back into ``layers_dir`` before the build."""
    layers = Path(layers_dir)
    cache_md = cache.metadata() if cache is not None else {}
    by_bp = {b.get("key"): b for b in cache_md.get("buildpacks", []) or []}
    prev_bp = {b.get("key"): b for b in (previous or {}).get("buildpacks", []) or []}
    content, meta_only = [], []
    for bp in group:
        bp_dir = layers / escape_id(bp.id)
        cached = (by_bp.get(bp.id) or {}).get("layers") or {}
        launched = (prev_bp.get(bp.id) or {}).get("layers") or {}
        for name in sorted(set(cached) | set(launched)):
            if "/" in name or name in ("", ".", ".."):
                continue
            kind = _restore_kind(cached.get(name), launched.get(name), cache is not None, previous is not None)
            if kind == "metadata":
                _write_layer_files(bp_dir, name, launched[name], str(launched[name].get("sha", "")))
                meta_only.append(f"{bp.id}:{name}")
            elif kind is not None:
                md = launched[name] if kind == "image" else cached[name]
                if _restore_content(cache, cached[name]["sha"], bp_dir / name,
                                    normalize_path(f"{image_layers_dir}/{escape_id(bp.id)}/{name}")):
                    _write_layer_files(bp_dir, name, md, cached[name]["sha"])
                    content.append(f"{bp.id}:{name}")
        store_md = (prev_bp.get(bp.id) or {}).get("store")
        if store_md and store_md.get("metadata"):
            bp_dir.mkdir(parents=True, exist_ok=True)
            (bp_dir / "store.toml").write_text(tomli_w.dumps({"metadata": store_md["metadata"]}))
    if cache is not None:
        restore_sbom(cache, cache_md, layers, content, image_layers_dir)
    return Restored(tuple(content), tuple(meta_only))
