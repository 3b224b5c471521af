"""``buildpack package``: a package.toml made into a buildpackage, in pack's format.

A buildpackage is an image with no base: one gzip layer per buildpack (the distribution layers
``cnb/buildpack.py`` makes for builders too, byte for byte), and two labels:
``io.buildpacks.buildpackage.metadata`` (the main buildpack's ModuleInfo plus ``stacks``;
``[{"id": "*"}]`` when it declares none, as pack writes for target-only buildpacks) and
``io.buildpacks.buildpack.layers`` (id -> version -> ModuleLayerInfo with its ``layerDiffID``).
It goes into any store as an image, or into a ``.cnb`` file: an uncompressed tar of an OCI
layout (written through the ``oci-archive`` writer: staged, temp file, rename).

package.toml (buildpacks/pack buildpackage/config_reader.go): ``[buildpack] uri`` (default
``.``), ``[[dependencies]] uri | image``, ``[[targets]] os/arch/variant`` (the first names the
image's platform), deprecated ``[platform] os``. Relative URIs are relative to package.toml.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocibuild.cnb.buildpack import (
    LABEL_BUILDPACKAGE,
    LABEL_LAYERS,
    NORMALIZED_TIME,
    Buildpack,
    LayerBlob,
    load_buildpacks,
)
from ocibuild.cnb.descriptor import decode_text
from ocibuild.errors import UsageError
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.base import Store, put_bytes


@dataclass(frozen=True)
class PackageConfig:
    """What package.toml says: the main buildpack's source, its dependencies, the platform."""

    path: Path
    buildpack: str
    dependencies: tuple[str, ...]
    platform: Platform


def read_package_toml(path: str | Path, target: Platform | None = None) -> PackageConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such package config")
    try:
        doc = tomllib.loads(decode_text(path.read_bytes(), str(path)))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    if "extension" in doc:
        raise UsageError(f"{path}: packaging extensions is not supported")
    section = doc.get("buildpack") or {}
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [buildpack] must be a table")
    uri = section.get("uri", ".")
    if not isinstance(uri, str) or not uri:
        raise UsageError(f"{path}: [buildpack] uri must be a non-empty string")
    deps = []
    for dep in doc.get("dependencies") or []:
        ref = (dep.get("uri") or dep.get("image")) if isinstance(dep, dict) else None
        if not isinstance(ref, str) or not ref:
            raise UsageError(f"{path}: every [[dependencies]] needs a uri or an image")
        deps.append(ref)
    platform = target or _platform_of(doc, path)
    return PackageConfig(path, uri, tuple(deps), platform)


def _platform_of(doc: dict[str, Any], path: Path) -> Platform:
    targets = doc.get("targets") or []
    if targets:
        first = targets[0]
        if not isinstance(first, dict) or not isinstance(first.get("os", "linux"), str):
            raise UsageError(f"{path}: [[targets]] entries need os and arch")
        return Platform(first.get("os") or "linux", first.get("arch") or "amd64", first.get("variant") or None)
    legacy = doc.get("platform") or {}
    os_name = legacy.get("os", "linux") if isinstance(legacy, dict) else "linux"
    from ocibuild.api import host_platform

    return Platform(str(os_name), host_platform().architecture)


def _strip_file_uri(text: str) -> str:
    return text[len("file://"):] if text.startswith("file://") else text


def collect_buildpacks(config: PackageConfig, *, registry: str | None = None, options: Any = None) -> list[Buildpack]:
    """The main buildpack first, then every dependency's buildpacks, each id@version once."""
    base = config.path.parent
    found = load_buildpacks(_strip_file_uri(config.buildpack), base_dir=base, platform=config.platform,
                            options=options, default_registry=registry)
    for dep in config.dependencies:
        found += load_buildpacks(dep, base_dir=base, platform=config.platform, options=options,
                                 default_registry=registry)
    unique: dict[str, Buildpack] = {}
    for bp in found:
        unique.setdefault(bp.full_name, bp)
    bps = list(unique.values())
    _check_orders(bps, config.path)
    return bps


def _check_orders(bps: list[Buildpack], where: Path) -> None:
    """A composite's order must name buildpacks the package holds (pack refuses otherwise)."""
    have = {(bp.id, bp.version) for bp in bps}
    ids = {bp.id for bp in bps}
    for bp in bps:
        for group in bp.order:
            for element in group:
                ok = (element.id, element.version) in have if element.version else element.id in ids
                if not ok:
                    name = f"{element.id}@{element.version}" if element.version else element.id
                    raise UsageError(f"{where}: {bp.full_name}'s order needs {name}, which no dependency provides")


@dataclass
class BuiltPackage:
    manifest: Manifest
    config: ImageConfig
    layers: list[LayerBlob]


def build_package(bps: list[Buildpack], platform: Platform, workdir: Path) -> BuiltPackage:
    """The layers (in ``workdir``), config and manifest of the buildpackage of ``bps`` (main first)."""
    main = bps[0]
    layers = [bp.build_layer(workdir) for bp in bps]
    layers_md: dict[str, dict[str, Any]] = {}
    for bp, layer in zip(bps, layers):
        layers_md.setdefault(bp.id, {})[bp.version] = bp.layer_info_json(layer.diff_id)
    meta = main.info_json()
    meta["stacks"] = [s.to_dict() for s in main.stacks] or [{"id": "*"}]
    labels = {LABEL_BUILDPACKAGE: _compact(meta), LABEL_LAYERS: _compact(layers_md)}
    doc: dict[str, Any] = {
        "architecture": platform.architecture, "os": platform.os, "created": NORMALIZED_TIME,
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in layers]},
    }
    if platform.variant:
        doc["variant"] = platform.variant
    config = ImageConfig.build(doc)
    manifest = Manifest.build(config.descriptor(), [layer.descriptor() for layer in layers])
    return BuiltPackage(manifest, config, layers)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def write_package(pkg: BuiltPackage, store: Store, tag: str | None) -> Descriptor:
    """Blobs first, config, then the manifest under ``tag``."""
    for layer in pkg.layers:
        layer.publish(store)
    put_bytes(store, pkg.config.descriptor(), pkg.config.raw)
    return store.put_manifest(pkg.manifest.descriptor(), pkg.manifest.raw, tag=tag)


def package_buildpack(config_path: str | Path, *, target: Platform | None = None, registry: str | None = None,
                      options: Any = None, store_for: Any = None, tag: str | None = None) -> Descriptor:
    """Read package.toml, build the package in a temp dir, write it into ``store_for()``'s store."""
    config = read_package_toml(config_path, target)
    bps = collect_buildpacks(config, registry=registry, options=options)
    with tempfile.TemporaryDirectory(prefix="ocibuild-package-") as workdir:
        pkg = build_package(bps, config.platform, Path(workdir))
        store = store_for()
        try:
            return write_package(pkg, store, tag)
        finally:
            store.close()
