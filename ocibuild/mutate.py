"""Derive images: append layers, edit the config. Inputs are never modified; new content is built
from ``to_dict()`` copies and encoded once. The OCI or Docker media-type family of the base is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ocibuild.errors import ManifestError, NotFound, UsageError
from ocibuild.layer import LayerResult, TarOptions, write_layer
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.store.base import Store, load_config, load_manifest, put_bytes
from ocibuild.store.layout import LayoutStore

HISTORY_CREATED = "1980-01-01T00:00:01Z"  # reproducible, like the tar mtimes


def _load_image(store: Store, identifier: str, platform: Platform | None) -> tuple[Manifest, ImageConfig]:
    _, m = load_manifest(store, identifier)
    if isinstance(m, Index):
        if platform is None:
            raise UsageError(f"{identifier} is an image index: choose a platform (e.g. linux/amd64)")
        entry = m.select(platform)
        if entry is None:
            raise NotFound(f"{identifier} has no image for platform {platform}")
        _, m = load_manifest(store, str(entry.digest))
        if isinstance(m, Index):
            raise ManifestError(f"{entry.digest}: nested index where an image manifest was expected")
    return m, load_config(store, m.config)


def _same_store(a: Store, b: Store) -> bool:
    if a is b:
        return True
    return isinstance(a, LayoutStore) and isinstance(b, LayoutStore) and a.path == b.path


def _writer_lock(store: Store):  # noqa: ANN202
    import contextlib

    return store.writer_lock() if isinstance(store, LayoutStore) else contextlib.nullcontext()


def copy_missing_blobs(src: Store, dst: Store, descs: Iterable[Descriptor]) -> None:
    """Stream each blob ``dst`` lacks from ``src`` (verified on both ends).

    A plain loop for now; ``transfer/copy.py`` is the general graph copy. Layers that ``src`` lacks
    but that carry ``urls`` (foreign layers) are left as references.
    """
    if _same_store(src, dst):
        return
    for desc in descs:
        if dst.has_blob(desc):
            continue
        if desc.urls and not src.has_blob(desc):
            continue
        with src.open_blob(desc) as stream:
            dst.put_blob(desc, stream)


def _publish_layer(dst: Store, result: LayerResult) -> None:
    try:
        if isinstance(dst, LayoutStore):
            dst.put_blob_file(result.descriptor, result.path)
        else:
            with open(result.path, "rb") as fh:
                dst.put_blob(result.descriptor, fh)
    finally:
        result.discard()


def _write_image(dst: Store, base: Manifest, config_doc: dict[str, Any], config_type: str,
                 layers: Sequence[Descriptor], annotations: Mapping[str, str] | None, tag: str | None) -> Descriptor:
    config = ImageConfig.build(config_doc, config_type)
    put_bytes(dst, config.descriptor(), config.raw)
    manifest = Manifest.build(
        config.descriptor(), layers, media_type=base.media_type,
        annotations=None if base.is_docker else annotations,
        artifact_type=base.artifact_type,
    )
    return dst.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)


def append_layers(
    store_src: Store,
    base_identifier: str,
    layer_paths: Sequence[str | os.PathLike[str]],
    dst_store: Store | None = None,
    dst_tag: str | None = None,
    *,
    options: TarOptions = TarOptions(),
    prefix: str = "",
    platform: Platform | None = None,
    created_by: str = "ocibuild append",
) -> Descriptor:
    """A new image: the base plus one reproducible gzip layer per directory or tarball in ``layer_paths``.

    The config's ``rootfs.diff_ids`` and ``history`` grow by one entry per layer. Base layers are
    referenced, not rewritten; they are copied only when ``dst_store`` is another store.
    """
    dst = store_src if dst_store is None else dst_store
    base, config = _load_image(store_src, base_identifier, platform)
    docker = base.is_docker
    media_type = mt.layer_type("gzip", docker)
    tmp_dir = dst.tmp_dir if isinstance(dst, LayoutStore) else None
    doc = config.to_dict()
    rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    diff_ids = rootfs.setdefault("diff_ids", [])
    history = doc.setdefault("history", []) if ("history" in doc or layer_paths) else None
    layers = list(base.layers)
    for path in layer_paths:
        if not Path(path).exists():
            raise UsageError(f"{path}: no such file or directory")
    with _writer_lock(dst):
        # every layer is built before anything is written: a damaged tarball leaves dst as it was
        results: list[LayerResult] = []
        try:
            for path in layer_paths:
                results.append(write_layer(path, media_type=media_type, options=options, prefix=prefix,
                                           tmp_dir=tmp_dir))
            copy_missing_blobs(store_src, dst, base.layers)
            for path, result in zip(layer_paths, results):
                _publish_layer(dst, result)
                layers.append(result.descriptor)
                diff_ids.append(str(result.diff_id))
                if history is not None:
                    # named by content, as docker's "ADD file:<hash>": the same layer from another
                    # path or file name gives the same image digest
                    history.append({"created": HISTORY_CREATED,
                                    "created_by": f"{created_by} {result.diff_id}"})
        finally:
            for result in results:
                result.discard()
        return _write_image(dst, base, doc, config.media_type, layers, base.annotations, dst_tag)


def _merge_env(env_list: Sequence[str], updates: Mapping[str, str | None]) -> list[str]:
    keys = [item.partition("=")[0] for item in env_list]
    out = dict(zip(keys, env_list))
    for key, value in updates.items():
        if "=" in key or not key:
            raise UsageError(f"invalid environment variable name {key!r}")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = f"{key}={value}"
    return list(out.values())


def mutate_image(
    store: Store,
    identifier: str,
    *,
    env: Mapping[str, str | None] | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    labels: Mapping[str, str | None] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    annotations: Mapping[str, str | None] | None = None,
    dst_store: Store | None = None,
    dst_tag: str | None = None,
    platform: Platform | None = None,
) -> Descriptor:
    """A new image with config (and manifest annotation) edits; ``None`` leaves a field alone.

    ``env``/``labels``/``annotations`` are merged (a ``None`` value removes the key); ``entrypoint``
    and ``cmd`` replace. Layers are shared with the base (copied only into another store).
    """
    dst = store if dst_store is None else dst_store
    base, config = _load_image(store, identifier, platform)
    if annotations and base.is_docker:
        raise UsageError("Docker v2 schema 2 manifests cannot carry annotations; convert the image to OCI first")
    doc = config.to_dict()
    cfg = doc.get("config") or {}
    if env is not None:
        cfg["Env"] = _merge_env(cfg.get("Env") or [], env)
    if entrypoint is not None:
        cfg["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        cfg["Cmd"] = list(cmd)
    if labels is not None:
        merged = dict(cfg.get("Labels") or {})
        for key, value in labels.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        cfg["Labels"] = merged
    if user is not None:
        cfg["User"] = user
    if workdir is not None:
        cfg["WorkingDir"] = workdir
    doc["config"] = cfg
    new_annotations = dict(base.annotations)
    for key, value in (annotations or {}).items():
        if value is None:
            new_annotations.pop(key, None)
        else:
            new_annotations[key] = value
    with _writer_lock(dst):
        copy_missing_blobs(store, dst, base.layers)
        return _write_image(dst, base, doc, config.media_type, base.layers, new_annotations, dst_tag)


def flatten_image(
    store_src: Store,
    identifier: str,
    dst_store: Store,
    dst_tag: str | None,
    *,
    platform: Platform | None = None,
) -> Descriptor:
    """A new one-layer image with the file system of ``identifier`` (whiteouts applied) and its config.

    ``rootfs`` and ``history`` describe the one layer; the rest of the config is kept (``crane flatten``).
    An index without ``platform`` becomes an index of its images flattened, entries (platform,
    annotations) kept. Each layer is built into a temp file before anything of it is written.
    """
    if platform is None:
        _, top = load_manifest(store_src, identifier)
        if isinstance(top, Index):
            entries = []
            for entry in top.manifests:
                _, child = load_manifest(store_src, str(entry.digest))
                if not isinstance(child, Manifest):
                    raise ManifestError(f"{entry.digest}: nested index where an image manifest was expected")
                flat = _flatten_one(store_src, child, load_config(store_src, child.config), dst_store, None)
                entries.append(Descriptor(flat.media_type, flat.digest, flat.size, platform=entry.platform,
                                          annotations=entry.annotations))
            index = Index.build(entries, media_type=top.media_type, annotations=top.annotations or None)
            return dst_store.put_manifest(index.descriptor(), index.raw, tag=dst_tag)
    base, config = _load_image(store_src, identifier, platform)
    return _flatten_one(store_src, base, config, dst_store, dst_tag)


def _flatten_one(store_src: Store, base: Manifest, config: ImageConfig, dst_store: Store,
                 dst_tag: str | None) -> Descriptor:
    from ocibuild.layer.compress import compress_stream
    from ocibuild.layer.flatten import export_filesystem

    media_type = mt.layer_type("gzip", base.is_docker)
    tmp_dir = dst_store.tmp_dir if isinstance(dst_store, LayoutStore) else None
    result = compress_stream(lambda out: export_filesystem(store_src, base, out), media_type=media_type,
                             tmp_dir=tmp_dir)
    doc = config.to_dict()
    doc["rootfs"] = {"type": "layers", "diff_ids": [str(result.diff_id)]}
    doc["history"] = [{"created": HISTORY_CREATED, "created_by": f"ocibuild flatten {base.digest}"}]
    with _writer_lock(dst_store):
        try:
            _publish_layer(dst_store, result)
        finally:
            result.discard()
        return _write_image(dst_store, base, doc, config.media_type, [result.descriptor], base.annotations, dst_tag)
