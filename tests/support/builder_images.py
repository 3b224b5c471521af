"""Base builder images for the compose tests, written from text files by ``tests/support/images.py``.

The base builder is a plain OCI image with the labels and env a builder has (as pack writes them:
cnb.md §2); nothing in it is produced by ocibuild's compose code, so compose output can be judged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from support.images import ImageInfo, layer_tar, write_image

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "builder"
BUILDPACKS = FIXTURES / "buildpacks"

BASE_LAYER = {
    "etc/os-release": b'ID=ubuntu\nVERSION_ID="22.04"\n',
    "usr/share/build-image.txt": b"a tiny build image made of text files\n",
}
BASE_BP_LAYER = {
    "cnb/buildpacks/example_base/1.0.0/buildpack.toml": b'api = "0.10"\n[buildpack]\nid = "example/base"\nversion = "1.0.0"\n',
    "cnb/buildpacks/example_base/1.0.0/bin/detect": (b"#!/bin/sh\nexit 0\n", 0o755),
    "cnb/buildpacks/example_base/1.0.0/bin/build": (b"#!/bin/sh\nexit 0\n", 0o755),
}
BASE_BP_DIFF_ID = "sha256:" + hashlib.sha256(layer_tar(BASE_BP_LAYER)).hexdigest()

LIFECYCLE_MD = {
    "version": "0.20.1",
    "api": {"buildpack": "0.7", "platform": "0.7"},
    "apis": {
        "buildpack": {"deprecated": [], "supported": ["0.7", "0.8", "0.9", "0.10", "0.11"]},
        "platform": {"deprecated": [], "supported": ["0.7", "0.12", "0.13"]},
    },
}
BASE_METADATA = {
    "description": "tiny test builder",
    "buildpacks": [{"id": "example/base", "version": "1.0.0"}],
    "extensions": [],
    "stack": {"runImage": {"image": "registry.example/run:base", "mirrors": ["mirror.example/run:base"]}},
    "lifecycle": LIFECYCLE_MD,
    "createdBy": {"name": "Pack CLI", "version": "0.35.0"},
    "images": [{"image": "registry.example/run:base", "mirrors": ["mirror.example/run:base"]}],
}


def base_layers_label(extra: Mapping[str, Mapping[str, object]] | None = None) -> dict[str, object]:
    layers: dict[str, object] = {
        "example/base": {"1.0.0": {"api": "0.10", "layerDiffID": BASE_BP_DIFF_ID}},
    }
    for bp_id, versions in (extra or {}).items():
        layers.setdefault(bp_id, {}).update(versions)  # type: ignore[union-attr]
    return layers


def write_base_builder(
    layout: Path,
    tag: str = "builder",
    *,
    extra_layers_label: Mapping[str, Mapping[str, object]] | None = None,
    extra_layer: Mapping[str, object] | None = None,
    architecture: str = "amd64",
    env: tuple[str, ...] = ("PATH=/usr/bin:/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1001"),
    metadata: Mapping[str, object] | None = None,
) -> ImageInfo:
    layers = [BASE_LAYER, BASE_BP_LAYER]
    if extra_layer:
        layers.append(extra_layer)  # type: ignore[arg-type]
    labels = {
        "io.buildpacks.builder.metadata": json.dumps(metadata if metadata is not None else BASE_METADATA),
        "io.buildpacks.buildpack.layers": json.dumps(base_layers_label(extra_layers_label)),
        "io.buildpacks.buildpack.order": json.dumps([{"group": [{"id": "example/base", "version": "1.0.0"}]}]),
        "io.buildpacks.stack.id": "io.buildpacks.stacks.jammy",
        "io.buildpacks.stack.mixins": json.dumps(["build:git"]),
        "org.example.keep": "yes",
    }
    return write_image(
        layout,
        layers,
        tag=tag,
        config={"Env": list(env), "User": "1000:1001", "WorkingDir": "/", "Cmd": ["/bin/sh"]},
        labels=labels,
        architecture=architecture,
    )


def write_builder_manifest(store, layers, buildpack_diff_id: str, tag: str):  # noqa: ANN001, ANN201
    """Tag a pack-style builder (labels, CNB env) over already-stored ``layers`` (``LayerResult``s):
    one buildpack ``example/base@1.0.0`` whose layer has ``buildpack_diff_id``. Returns the manifest."""
    from ocibuild.oci.manifest import ImageConfig, Manifest
    from ocibuild.store.base import put_bytes

    labels = {
        "io.buildpacks.builder.metadata": json.dumps(BASE_METADATA),
        "io.buildpacks.buildpack.layers": json.dumps(
            {"example/base": {"1.0.0": {"api": "0.10", "layerDiffID": buildpack_diff_id}}}),
        "io.buildpacks.buildpack.order": json.dumps([{"group": [{"id": "example/base", "version": "1.0.0"}]}]),
        "io.buildpacks.stack.id": "io.buildpacks.stacks.jammy",
    }
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1001"],
                   "User": "1000:1001", "WorkingDir": "/", "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [str(r.diff_id) for r in layers]},
    })
    put_bytes(store, config.descriptor(), config.raw)
    manifest = Manifest.build(config.descriptor(), [r.descriptor for r in layers])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return manifest
