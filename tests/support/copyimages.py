"""Small images built with ocibuild's own layer and model code (for the copy, CLI and api tests).

Layers are real gzip (or Docker) tar layers of one small file each, made by ``write_layer`` and
written through the real ``Store`` API (a layout or a registry repository); each image gets
distinct layers so that tests can tell which blobs a copy moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from ocibuild.layer import LayerResult, TarEntry, write_layer
from ocibuild.oci import Descriptor, ImageConfig, Index, Manifest, Platform
from ocibuild.oci import mediatype as mt
from ocibuild.store.base import Store, put_bytes


@dataclass(frozen=True)
class Built:
    desc: Descriptor
    raw: bytes
    blobs: tuple[Descriptor, ...]  # every blob the image (or all images of the index) needs


def image(
    store: Store,
    name: str,
    *,
    platform: str = "linux/amd64",
    docker: bool = False,
    tag: str | None = None,
    layers: int = 2,
    env: tuple[str, ...] = ("PATH=/usr/bin:/bin",),
    extra_layers: tuple[Descriptor, ...] = (),
) -> Built:
    """One image whose layers are ``layers`` distinct small blobs (named after ``name``)."""
    plat = Platform.parse(platform)
    layer_type = mt.DOCKER_LAYER if docker else mt.OCI_LAYER_GZIP
    layer_descs, diff_ids = [], []
    for i in range(layers):
        data = f"{name} layer {i} ".encode() * (i + 3)
        result = write_layer([TarEntry.file(f"{name}/layer-{i}.txt", data)], media_type=layer_type,
                             tmp_dir=getattr(store, "tmp_dir", None))
        _put_layer(store, result)
        layer_descs.append(result.descriptor)
        diff_ids.append(str(result.diff_id))
    cfg_doc = {
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {"Env": list(env), "Cmd": ["/bin/sh"], "Labels": {"name": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if plat.variant:
        cfg_doc["variant"] = plat.variant
    cfg = ImageConfig.build(cfg_doc, mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)
    put_bytes(store, cfg.descriptor(), cfg.raw)
    manifest = Manifest.build(
        cfg.descriptor(), [*layer_descs, *extra_layers], media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    )
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return Built(manifest.descriptor(), manifest.raw, (cfg.descriptor(), *layer_descs))


def _put_layer(store: Store, result: LayerResult) -> None:
    """Move the finished layer into a layout (no copy), or stream it to any other store."""
    put_file = getattr(store, "put_blob_file", None)
    if put_file is not None:
        put_file(result.descriptor, result.path)
        return
    try:
        with open(result.path, "rb") as fh:
            store.put_blob(result.descriptor, fh)
    finally:
        result.discard()


def index(
    store: Store, name: str, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8"), *,
    docker: bool = False, tag: str | None = None,
) -> tuple[Built, list[Built]]:
    """An index (or Docker manifest list) of one image per platform."""
    children = [image(store, f"{name}-{p.replace('/', '-')}", platform=p, docker=docker) for p in platforms]
    entries = [c.desc.with_platform(Platform.parse(p)) for c, p in zip(children, platforms)]
    idx = Index.build(entries, media_type=mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX)
    store.put_manifest(idx.descriptor(), idx.raw, tag=tag)
    blobs = tuple(b for c in children for b in c.blobs)
    return Built(idx.descriptor(), idx.raw, blobs), children
