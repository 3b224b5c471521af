"""A frozen snapshot of a builder image: manifest and config captured once, labels parsed into models.

Identity is the manifest digest read when the builder was opened. Nothing here is ever mutated:
composing makes a new image (``ocibuild.cnb.compose``) and the caller's ``Builder`` keeps naming the
original, which is exactly what pack's ephemeral-builder cleanup got wrong (buildpacks/pack#2255).

Label shapes follow buildpacks/pack: internal/builder/metadata.go and pkg/dist/dist.go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ocibuild.cnb.buildpack import _select
from ocibuild.cnb.descriptor import Order, parse_order
from ocibuild.errors import ManifestError, UsageError
from ocibuild.oci.descriptor import Descriptor, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import _freeze  # the model's freezer: labels are frozen as manifests are
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, load_json, parse_manifest

LABEL_METADATA = "io.buildpacks.builder.metadata"
LABEL_LAYERS = "io.buildpacks.buildpack.layers"
LABEL_ORDER = "io.buildpacks.buildpack.order"
LABEL_ORDER_EXTENSIONS = "io.buildpacks.buildpack.order-extensions"
LABEL_EXTENSION_LAYERS = "io.buildpacks.extension.layers"
LABEL_SYSTEM = "io.buildpacks.buildpack.system"
LABEL_STACK_ID = "io.buildpacks.stack.id"
LABEL_MIXINS = "io.buildpacks.stack.mixins"
ENV_UID = "CNB_USER_ID"
ENV_GID = "CNB_GROUP_ID"


class InvalidBuilder(ManifestError):
    """An image that cannot serve as a builder (missing or malformed builder labels/env)."""


def thaw(value: Any) -> Any:
    """A mutable deep copy of a JSON value frozen by ``oci.manifest``'s ``_freeze``."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _label_json(labels: Mapping[str, str], key: str, where: str) -> Any:
    text = labels.get(key)
    if text is None:
        return None
    try:
        return load_json(text.encode("utf-8"), f"{where}: label {key}")
    except ManifestError as exc:
        raise InvalidBuilder(str(exc)) from None


@dataclass(frozen=True)
class RunImage:
    image: str
    mirrors: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "RunImage":
        if not isinstance(data, Mapping):
            return cls("")
        mirrors = data.get("mirrors")
        return cls(str(data.get("image") or ""), tuple(mirrors) if isinstance(mirrors, (list, tuple)) else None)

    def to_dict(self) -> dict[str, Any]:
        """Go's encoding of ``RunImageMetadata``: a nil mirrors slice is ``null``."""
        return {"image": self.image, "mirrors": list(self.mirrors) if self.mirrors is not None else None}


@dataclass(frozen=True)
class LifecycleAPIs:
    buildpack_supported: tuple[str, ...] = ()
    buildpack_deprecated: tuple[str, ...] = ()
    platform_supported: tuple[str, ...] = ()
    platform_deprecated: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuilderMetadata:
    """``io.buildpacks.builder.metadata`` as read; ``raw`` keeps every field for re-encoding."""

    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def description(self) -> str:
        return str(self.raw.get("description") or "")

    @property
    def buildpacks(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.raw.get("buildpacks") or ())

    @property
    def extensions(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.raw.get("extensions") or ())

    @property
    def stack_run_image(self) -> RunImage:
        return RunImage.from_dict((self.raw.get("stack") or {}).get("runImage"))

    @property
    def images(self) -> tuple[RunImage, ...]:
        return tuple(RunImage.from_dict(i) for i in self.raw.get("images") or ())

    @property
    def lifecycle(self) -> Mapping[str, Any]:
        return self.raw.get("lifecycle") or MappingProxyType({})

    @property
    def lifecycle_version(self) -> str:
        return str(self.lifecycle.get("version") or "")

    @property
    def lifecycle_apis(self) -> LifecycleAPIs:
        apis = self.lifecycle.get("apis") or {}
        bp, pl = apis.get("buildpack") or {}, apis.get("platform") or {}
        return LifecycleAPIs(
            tuple(bp.get("supported") or ()), tuple(bp.get("deprecated") or ()),
            tuple(pl.get("supported") or ()), tuple(pl.get("deprecated") or ()),
        )

    @property
    def created_by(self) -> Mapping[str, Any]:
        return self.raw.get("createdBy") or MappingProxyType({})


@dataclass(frozen=True)
class Builder:
    """A builder image, captured once. ``digest`` (of the platform manifest) is its identity."""

    name: str
    descriptor: Descriptor
    manifest: Manifest = field(repr=False)
    config: ImageConfig = field(repr=False)
    metadata: BuilderMetadata = field(repr=False)
    buildpack_layers: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(repr=False)
    order: Order = field(repr=False)
    order_extensions: Order = field(repr=False)
    stack_id: str = ""
    extension_layers: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict, repr=False)
    mixins: tuple[str, ...] | None = None
    uid: int | None = None
    gid: int | None = None
    index_descriptor: Descriptor | None = None
    store: Any = field(default=None, compare=False, repr=False)

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.labels

    @property
    def platform(self) -> Platform:
        return self.config.platform

    @property
    def is_docker(self) -> bool:
        return self.manifest.is_docker

    @property
    def run_images(self) -> tuple[RunImage, ...]:
        """pack's ``RunImages()``: the ``images`` list, then the legacy stack run image (if set)."""
        out = list(self.metadata.images)
        stack = self.metadata.stack_run_image
        if stack.image and all(r.image != stack.image for r in out):
            out.append(stack)
        return tuple(out)

    def has_buildpack(self, bp_id: str, version: str) -> bool:
        return version in (self.buildpack_layers.get(bp_id) or {})

    def layer_diff_id(self, bp_id: str, version: str) -> str | None:
        info = (self.buildpack_layers.get(bp_id) or {}).get(version)
        return str(info.get("layerDiffID")) if info else None


def builder_from_parts(
    name: str,
    descriptor: Descriptor,
    manifest: Manifest,
    config: ImageConfig,
    *,
    store: Any = None,
    index_descriptor: Descriptor | None = None,
    require_metadata: bool = True,
) -> Builder:
    """Parse the labels and env of a builder (or, without ``require_metadata``, a build image)."""
    labels = config.labels
    meta = _label_json(labels, LABEL_METADATA, name)
    if meta is None and require_metadata:
        raise InvalidBuilder(f"{name} is not a builder: missing label {LABEL_METADATA}")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidBuilder(f"{name}: label {LABEL_METADATA} is not a JSON object")
    layers = _label_json(labels, LABEL_LAYERS, name) or {}
    if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
        raise InvalidBuilder(f"{name}: label {LABEL_LAYERS} is not an object of objects")
    ext_layers = _label_json(labels, LABEL_EXTENSION_LAYERS, name) or {}
    if not isinstance(ext_layers, dict) or not all(isinstance(v, dict) for v in ext_layers.values()):
        raise InvalidBuilder(f"{name}: label {LABEL_EXTENSION_LAYERS} is not an object of objects")
    mixins = _label_json(labels, LABEL_MIXINS, name)
    env = dict(config.iter_env())
    uid = gid = None
    try:
        if ENV_UID in env:
            uid = int(env[ENV_UID])
        if ENV_GID in env:
            gid = int(env[ENV_GID])
    except ValueError:
        raise InvalidBuilder(f"{name}: {ENV_UID}/{ENV_GID} must be integers") from None
    try:
        order = parse_order(_label_json(labels, LABEL_ORDER, name), f"{name}: {LABEL_ORDER}")
        order_ext = parse_order(_label_json(labels, LABEL_ORDER_EXTENSIONS, name), f"{name}: {LABEL_ORDER_EXTENSIONS}")
    except Exception as exc:  # DescriptorError from a malformed label
        raise InvalidBuilder(str(exc)) from None
    return Builder(
        name=name,
        descriptor=descriptor,
        manifest=manifest,
        config=config,
        metadata=BuilderMetadata(_freeze(meta or {})),
        buildpack_layers=_freeze(layers),
        order=order,
        order_extensions=order_ext,
        stack_id=labels.get(LABEL_STACK_ID, ""),
        extension_layers=_freeze(ext_layers),
        mixins=tuple(mixins) if isinstance(mixins, list) else None,
        uid=uid,
        gid=gid,
        index_descriptor=index_descriptor,
        store=store,
    )


def open_builder(
    store: Any,
    identifier: str,
    *,
    platform: Platform | None = None,
    name: str | None = None,
    require_metadata: bool = True,
) -> Builder:
    """Read a builder's manifest (choosing ``platform`` in an index; default: the host's) and config.

    Only the manifest and the config are fetched; the layers stay where they are.
    """
    from ocibuild.store.base import load_config

    label = name or f"{store.name}:{identifier}"
    desc, raw = store.get_manifest(identifier)
    manifest = parse_manifest(raw, desc.media_type)
    index_desc = None
    if isinstance(manifest, Index):
        index_desc = desc
        entry = _select(manifest, platform, label)
        desc, raw = store.get_manifest(str(entry.digest))
        manifest = parse_manifest(raw, desc.media_type)
        if not isinstance(manifest, Manifest):
            raise InvalidBuilder(f"{label}: nested image indexes are not supported")
        desc = Descriptor(desc.media_type, desc.digest, desc.size, platform=entry.platform)
    config = load_config(store, manifest.config)
    if index_desc is None and platform is not None and not platform.matches(config.platform):
        # A single-platform image cannot be another platform's builder: refused, never built as its own.
        raise UsageError(f"{label} is a {config.platform} image only, not {platform}: "
                         f"give an image (or index) with a {platform} manifest")
    return builder_from_parts(label, desc, manifest, config, store=store, index_descriptor=index_desc,
                              require_metadata=require_metadata)


def inspect_builder(builder: Builder) -> dict[str, Any]:
    """What ``pack builder inspect`` shows, as plain data (the CLI prints it or dumps it as JSON)."""
    from ocibuild.cnb.apis import declared as declared_apis

    meta = builder.metadata
    apis = meta.lifecycle_apis
    def modules(layers: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        return [{"id": bp_id, "version": version, "homepage": layers[bp_id][version].get("homepage", ""),
                 "name": layers[bp_id][version].get("name", "")}
                for bp_id in sorted(layers) for version in sorted(layers[bp_id])]

    def groups(order: Any) -> list[dict[str, Any]]:
        return [{"group": [dict(ref.to_dict(), optional=ref.optional) for ref in group]} for group in order]

    return {
        "name": builder.name,
        "digest": str(builder.digest),
        "platform": str(builder.platform),
        "description": meta.description,
        "created_by": thaw(meta.created_by),
        "stack": {"id": builder.stack_id, "mixins": list(builder.mixins or [])},
        "run_images": [{"name": r.image, "mirrors": list(r.mirrors or [])} for r in builder.run_images],
        "lifecycle": {
            "version": meta.lifecycle_version,
            "buildpack_apis": {"deprecated": list(apis.buildpack_deprecated), "supported": list(apis.buildpack_supported)},
            "platform_apis": {"deprecated": list(apis.platform_deprecated), "supported": list(apis.platform_supported)},
        },
        "native_lifecycle": declared_apis(),  # what ocibuild itself runs the builds with
        "system_buildpacks": _system_label(builder.labels),
        "buildpacks": modules(builder.buildpack_layers),
        "detection_order": groups(builder.order),
        "extensions": modules(builder.extension_layers),
        "detection_order_extensions": groups(builder.order_extensions),
        "uid": builder.uid,
        "gid": builder.gid,
    }


def _system_label(labels: Mapping[str, str]) -> dict[str, Any]:
    """``io.buildpacks.buildpack.system`` as ``{"pre": [...], "post": [...]}`` (empty lists when absent)."""
    from ocibuild.cnb.system import LABEL

    try:
        doc = json.loads(labels.get(LABEL) or "{}")
    except ValueError:  # a malformed label names no system buildpacks; builds read /cnb/system.toml
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    return {phase: list((doc.get(phase) or {}).get("buildpacks") or []) for phase in ("pre", "post")}


def label_text(value: Any) -> str:
    """How pack's ``dist.SetLabel`` writes a label: Go's ``json.Marshal`` (compact, fields in order)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
