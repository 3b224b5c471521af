"""Compose a builder without a daemon: the image pack's ``Builder.Save`` would make, written directly.

The base builder is never touched: its manifest digest (captured when it was opened) stays its
identity, its layers are referenced by descriptor and never read, and everything new (layers,
config, manifest) goes into a scratch store. Layer order follows buildpacks/pack
internal/builder/builder.go ``Save``: dirs, lifecycle (builder create only), whiteouts, buildpack
layers sorted by id@version, order.toml, stack.toml, run.toml, build-config env, platform env.
Everything is reproducible: fixed mtimes, sorted env, no random names, fixed created/history times.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ocibuild
from ocibuild.cnb.buildpack import (
    NORMALIZED_TIME,
    Buildpack,
    LayerBlob,
    load_buildpacks,
)
from ocibuild.cnb.builder import (
    LABEL_EXTENSION_LAYERS,
    LABEL_LAYERS,
    LABEL_METADATA,
    LABEL_MIXINS,
    LABEL_ORDER,
    LABEL_ORDER_EXTENSIONS,
    Builder,
    RunImage,
    label_text,
    thaw,
)
from ocibuild.cnb.descriptor import Group, GroupElement, Order, order_to_json
from ocibuild.cnb.system import LABEL as SYSTEM_LABEL
from ocibuild.cnb.system import PATH as SYSTEM_PATH
from ocibuild.cnb.system import SystemBuildpacks
from ocibuild.cnb.errors import BuildpackNotFound, IncompatibleBuildpackAPI
from ocibuild.errors import UsageError
from ocibuild.layer import TarEntry, TarOptions, write_layer
from ocibuild.layer.tarwriter import SYMLINK, entries_from_tar, open_tarball
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest

BeforePublish = Callable[[Descriptor], None]
SCRATCH_TAG_PREFIX = "ocibuild.local/builder/"
CREATOR_NAME = "ocibuild"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ComposeResult:
    """The composed (or, with ``ephemeral=False``, the original) builder image."""

    descriptor: Descriptor
    manifest: Manifest = field(repr=False)
    config: ImageConfig = field(repr=False)
    new_layers: tuple[Descriptor, ...] = ()
    ephemeral: bool = True
    tag: str | None = None
    base: Builder | None = field(default=None, repr=False, compare=False)
    store: Any = field(default=None, repr=False, compare=False)

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest


@dataclass(frozen=True)
class Lifecycle:
    """A lifecycle release tgz: ``lifecycle.toml`` plus ``lifecycle/<binaries>`` (cnb.md §2)."""

    path: Path
    version: str
    buildpack_supported: tuple[str, ...]
    buildpack_deprecated: tuple[str, ...]
    platform_supported: tuple[str, ...]
    platform_deprecated: tuple[str, ...]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Lifecycle":
        import tomllib

        path = Path(path)
        try:
            with tarfile.open(path, "r:*") as tar:
                member = next((m for m in tar if os.path.normpath(m.name) == "lifecycle.toml" and m.isreg()), None)
                if member is None:
                    raise UsageError(f"{path}: not a lifecycle archive (no lifecycle.toml at its root)")
                doc = tomllib.loads(tar.extractfile(member).read().decode("utf-8"))  # type: ignore[union-attr]
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"{path}: cannot read lifecycle archive ({exc})") from None
        apis = doc.get("apis") or {}
        legacy = doc.get("api") or {}

        def versions(kind: str, key: str) -> tuple[str, ...]:
            value = (apis.get(kind) or {}).get(key)
            if value is None and key == "supported" and legacy.get(kind):
                value = [legacy[kind]]
            return tuple(str(v) for v in value or ())

        return cls(
            path,
            str((doc.get("lifecycle") or {}).get("version") or ""),
            versions("buildpack", "supported"), versions("buildpack", "deprecated"),
            versions("platform", "supported"), versions("platform", "deprecated"),
        )

    def metadata(self) -> dict[str, Any]:
        """``lifecycle`` in ``io.buildpacks.builder.metadata``; ``api`` is the legacy earliest version."""
        def earliest(values: Sequence[str]) -> str | None:
            return min(values, key=_version_key) if values else None

        return {
            "version": self.version,
            "api": {"buildpack": earliest(self.buildpack_deprecated + self.buildpack_supported),
                    "platform": earliest(self.platform_deprecated + self.platform_supported)},
            "apis": {
                "buildpack": {"deprecated": list(self.buildpack_deprecated), "supported": list(self.buildpack_supported)},
                "platform": {"deprecated": list(self.platform_deprecated), "supported": list(self.platform_supported)},
            },
        }

    @contextlib.contextmanager
    def entries(self, spool_dir: Path | None = None) -> Iterator[list[TarEntry]]:
        """pack's ``lifecycleLayer``: ``cnb/lifecycle`` + every ``<top>/<file>`` of the tgz (modes
        kept) + the compat symlink ``lifecycle -> /cnb/lifecycle``. The tgz stays open while the
        entries are written."""
        pattern = re.compile(r"^[^/]+/([^/]+)$")
        tf = open_tarball(self.path, spool_dir)
        try:
            out = [TarEntry.dir("cnb/lifecycle")]
            for e in entries_from_tar(tf):
                match = pattern.match(e.path)
                if match:
                    out.append(replace(e, path=f"cnb/lifecycle/{match.group(1)}"))
            out.append(TarEntry("lifecycle", SYMLINK, 0o644, linkname="/cnb/lifecycle"))
            yield out
        finally:
            tf.close()
            if tf.fileobj is not None:
                tf.fileobj.close()


def _version_key(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (1 << 30,)


@dataclass(frozen=True)
class BuildConfigEnv:
    """A ``[[build.env]]`` of builder.toml -> ``/cnb/build-config/env/<NAME>[.<suffix>]``."""

    name: str
    value: str
    suffix: str = ""
    delim: str = ""


# ---------------------------------------------------------------------------------------------
# TOML the way pack writes it (BurntSushi/toml: two-space indents, blank lines between tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def order_toml(order: Order, extensions: Order | None = None) -> str:
    """``/cnb/order.toml``: ``[[order]]``, then ``[[order-extensions]]`` when the builder has extensions."""
    text = _order_tables(order, "order")
    if extensions:
        text = (text + "\n" if text else "") + _order_tables(extensions, "order-extensions")
    return text


def _order_tables(order: Order, key: str) -> str:
    out = []
    for group in order:
        out.append(f"[[{key}]]\n")
        for ref in group:
            out.append(f"\n  [[{key}.group]]\n")
            for name, value in ref.to_dict().items():
                out.append(f"    {name} = {_toml_value(value)}\n")
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n" if out else ""


def _run_image_keys(run: RunImage, indent: str) -> str:
    text = f"{indent}image = {_toml_value(run.image)}\n"
    if run.mirrors is not None:
        text += f"{indent}mirrors = {_toml_value(list(run.mirrors))}\n"
    return text


def stack_toml(stack_run: RunImage, images: Sequence[RunImage]) -> str:
    """``/cnb/stack.toml``: the legacy stack run image, else the first run image, else empty."""
    if stack_run.image:
        return "[run-image]\n" + _run_image_keys(stack_run, "  ")
    if images:
        return _run_image_keys(images[0], "")
    return ""


def run_toml(images: Sequence[RunImage]) -> str:
    return "\n".join("[[images]]\n" + _run_image_keys(r, "  ") for r in images)


# ---------------------------------------------------------------------------------------------
# Orders


def resolve_order(buildpacks: Sequence[Mapping[str, Any]], order: Order, kind: str = "buildpack") -> Order:
    """pack's ``processOrder``: fill in versions from the builder's buildpacks (or extensions);
    unknown or ambiguous ids are errors."""
    resolved = []
    for group in order:
        out = []
        for ref in group:
            versions = [str(bp.get("version", "")) for bp in buildpacks if bp.get("id") == ref.id]
            if not versions:
                raise BuildpackNotFound(f"no versions of {kind} {ref.id} were found on the builder")
            version = ref.version
            if not version:
                if len(set(versions)) > 1:
                    raise BuildpackNotFound(
                        f"unable to resolve version: multiple versions of {ref.id} - must specify an explicit version"
                    )
                version = versions[0]
            if version not in versions:
                raise BuildpackNotFound(f"{kind} {ref.id} with version {version} was not found on the builder")
            out.append(GroupElement(ref.id, version, ref.optional))
        resolved.append(Group(tuple(out)))
    return Order(tuple(resolved))


def parse_order(groups: Iterable[Iterable[str | GroupElement]]) -> Order:
    """``[["a@1", "b"], ...]`` -> Order (strings ending in ``?`` are optional)."""
    out = []
    for group in groups:
        refs = []
        for item in group:
            if isinstance(item, GroupElement):
                refs.append(item)
            else:
                refs.append(GroupElement.parse(item.rstrip("?"), optional=item.endswith("?")))
        out.append(Group(tuple(refs)))
    return Order(tuple(out))


# ---------------------------------------------------------------------------------------------
# Compose


def _metadata_doc(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The builder metadata in Go's field order, absent fields as Go's zero values."""
    src = thaw(raw)
    doc: dict[str, Any] = {
        "description": src.pop("description", ""),
        "buildpacks": src.pop("buildpacks", None),
        "extensions": src.pop("extensions", None),
        "stack": src.pop("stack", None) or {"runImage": {"image": "", "mirrors": None}},
        "lifecycle": src.pop("lifecycle", None) or {
            "version": None, "api": {"buildpack": None, "platform": None},
            "apis": {"buildpack": {"deprecated": None, "supported": None},
                     "platform": {"deprecated": None, "supported": None}},
        },
        "createdBy": src.pop("createdBy", None) or {"name": "", "version": ""},
        "images": src.pop("images", None),
    }
    return doc


def _scratch_tag(digest: Digest) -> str:
    return f"{SCRATCH_TAG_PREFIX}{digest.encoded[:20]}"


def _validate(bp: Buildpack, lifecycle_meta: Mapping[str, Any], on_builder: set[str]) -> None:
    apis = (lifecycle_meta or {}).get("apis") or {}
    known = list(((apis.get("buildpack") or {}).get("supported")) or []) + list(
        ((apis.get("buildpack") or {}).get("deprecated")) or []
    )
    if known and _version_key(bp.api) not in {_version_key(v) for v in known}:
        raise IncompatibleBuildpackAPI(
            f"buildpack {bp.full_name} (Buildpack API {bp.api}) is incompatible with the builder's lifecycle "
            f"(Buildpack API(s) {', '.join(known)})"
        )
    for group in bp.order:
        for ref in group:
            present = ref.full_name in on_builder if ref.version else any(n.split("@")[0] == ref.id for n in on_builder)
            if not present:
                raise BuildpackNotFound(f"buildpack {ref.full_name} not found on the builder")


def _location(store: Any) -> str:
    registry, repository = getattr(store, "registry", None), getattr(store, "repository", None)
    if registry and repository:
        return f"{registry}/{repository}"
    return str(getattr(store, "name", store))


def _same_store(a: Any, b: Any) -> bool:
    if a is b:
        return True
    pa, pb = getattr(a, "path", None), getattr(b, "path", None)
    if pa is not None and pb is not None:
        return os.path.realpath(pa) == os.path.realpath(pb)
    return False


def _as_buildpacks(items: Iterable[Buildpack | str | os.PathLike[str]]) -> list[Buildpack]:
    out: list[Buildpack] = []
    for item in items:
        if isinstance(item, Buildpack):
            out.append(item)
        else:
            out.extend(load_buildpacks(item))
    return out


def compose_builder(
    builder: Builder,
    *,
    buildpacks: Iterable[Buildpack | str | os.PathLike[str]] = (),
    order: Order | None = None,
    env: Mapping[str, str] | None = None,
    run_image: str | None = None,
    scratch_store: Any,
    before_publish: BeforePublish | None = None,
    ledger: Any = None,
    lifecycle: Lifecycle | None = None,
    description: str | None = None,
    run_images: Sequence[RunImage] | None = None,
    stack_run_image: RunImage | None = None,
    build_config_env: Sequence[BuildConfigEnv] = (),
    system: SystemBuildpacks | None = None,
    extensions: Iterable[Buildpack] = (),
    order_extensions: Order | None = None,
    validate: bool = False,
    tag: str | None = "",
) -> ComposeResult:
    """A new builder = ``builder`` + buildpacks, order, env, run image; written to ``scratch_store``.

    ``builder`` is never changed and its layers are not read. With nothing to add, the original is
    returned (``ephemeral=False``) and nothing is written. ``before_publish(desc)`` runs before each
    new blob becomes visible (the ledger writes its row there); ``ledger.record_source`` notes where
    each base layer lives when that is not ``scratch_store``. ``tag``: "" (default) tags the result
    ``ocibuild.local/builder/<digest-hex[:20]>``, None leaves it untagged, anything else is the tag.
    """
    bps = _as_buildpacks(buildpacks)
    exts = list(extensions)
    env = dict(env or {})
    replace_order = order is not None and bool(order) and bool(order.groups[0])
    needed = bool(bps or exts or order_extensions or env or replace_order or run_image or lifecycle or run_images
                  or stack_run_image or build_config_env or system or description is not None)
    if not needed:
        return ComposeResult(builder.descriptor, builder.manifest, builder.config, (), False, None, builder, builder.store)
    for name in env:
        if not _ENV_NAME.match(name):
            raise UsageError(f"invalid environment variable name {name!r}")
    if builder.uid is None or builder.gid is None:
        raise UsageError(f"builder {builder.name} is missing required env var CNB_USER_ID or CNB_GROUP_ID")

    meta = _metadata_doc(builder.metadata.raw)
    if description is not None:
        meta["description"] = description
    if run_image:
        meta["images"] = [RunImage(run_image).to_dict()]
        meta["stack"] = {"runImage": RunImage(run_image).to_dict()}
    if stack_run_image is not None:
        meta["stack"] = {"runImage": stack_run_image.to_dict()}
    if run_images is not None:
        meta["images"] = [r.to_dict() for r in run_images] or None
    if lifecycle is not None:
        meta["lifecycle"] = lifecycle.metadata()
    tmp_parent = getattr(scratch_store, "tmp_dir", None)
    with tempfile.TemporaryDirectory(prefix="compose-", dir=tmp_parent) as tmp:
        layers = _Layers(Path(tmp), builder, meta, dict(builder.labels))
        layers.add(_dirs_entries(builder.uid, builder.gid))  # 1. default directories
        if lifecycle is not None:  # 2. lifecycle
            with lifecycle.entries(layers.workdir) as entries:
                layers.add(entries)
        layers.buildpacks(bps, validate)  # 3. buildpacks
        layers.extensions(exts)  # 3b. image extensions (cnb/extensions)
        if replace_order or order_extensions:  # 4. order (and order-extensions)
            layers.order(order if replace_order else builder.order,
                         order_extensions if order_extensions else builder.order_extensions)
        if system:  # 4b. system buildpacks (Platform API 0.15)
            system.check_present({(str(b.get("id")), str(b.get("version"))) for b in meta["buildpacks"] or []})
            layers.add([TarEntry.file(SYSTEM_PATH.lstrip("/"), system.toml().encode())])
            layers.labels[SYSTEM_LABEL] = system.label()
        stack_run = RunImage.from_dict((meta["stack"] or {}).get("runImage"))  # 5. stack.toml and run.toml
        images = [RunImage.from_dict(i) for i in meta["images"] or []]
        layers.add([TarEntry.file("cnb/stack.toml", stack_toml(stack_run, images).encode())])
        layers.add([TarEntry.file("cnb/run.toml", run_toml(images).encode())])
        if build_config_env:  # 6. build-config env (builder.toml [[build.env]])
            layers.add(_build_config_entries(build_config_env))
        layers.add([TarEntry.file(f"platform/env/{k}", env[k].encode()) for k in sorted(env)])  # 7. platform env
        return _publish(builder, layers, scratch_store, before_publish, ledger, tag)


class _Layers:
    """The new layers of a composed builder, in pack's order, and the labels they change."""

    def __init__(self, workdir: Path, builder: Builder, meta: dict[str, Any], labels: dict[str, str]):
        self.workdir, self.builder, self.meta, self.labels = workdir, builder, meta, labels
        self.blobs: list[LayerBlob] = []
        self.layers_md: dict[str, dict[str, Any]] = thaw(builder.buildpack_layers)

    def add(self, entries: Iterable[TarEntry], options: TarOptions = TarOptions()) -> None:
        """One reproducible layer; modes as given (``keep_mode``)."""
        self.blobs.append(LayerBlob.from_result(write_layer(entries, options=options, tmp_dir=self.workdir)))

    def buildpacks(self, bps: Sequence[Buildpack], validate: bool) -> None:
        """Metadata first (validation and order resolution see them all), then one layer per
        id@version sorted by it; a changed buildpack of the builder's is whited out first."""
        known = self._register(bps, "buildpacks")
        if validate:
            for bp in bps:
                _validate(bp, self.meta["lifecycle"], known)
        self._module_layers(bps, self.layers_md)
        self.labels[LABEL_LAYERS] = label_text(_sorted_layers(self.layers_md))

    def extensions(self, exts: Sequence[Buildpack]) -> None:
        """Image extensions the same way: metadata ``extensions``, one layer per id@version under
        ``cnb/extensions``, the ``io.buildpacks.extension.layers`` label."""
        if not exts:
            return
        self._register(exts, "extensions")
        ext_md: dict[str, dict[str, Any]] = thaw(self.builder.extension_layers)
        self._module_layers(exts, ext_md)
        self.labels[LABEL_EXTENSION_LAYERS] = label_text(_sorted_layers(ext_md))

    def _register(self, modules: Sequence[Buildpack], key: str) -> set[str]:
        """Each new id@version into the builder metadata's ``key`` list; returns every id@version there."""
        known = {f"{b.get('id')}@{b.get('version')}" for b in self.meta[key] or []}
        for mod in modules:
            if mod.full_name not in known:
                self.meta[key] = (self.meta[key] or []) + [mod.info_json()]
                known.add(mod.full_name)
        return known

    def _module_layers(self, modules: Sequence[Buildpack], layers_md: dict[str, dict[str, Any]]) -> None:
        """One layer per id@version (sorted) unless the builder already has that content; a changed
        one of the builder's is whited out first; ``layers_md`` (a layers label) updated."""
        to_add: dict[str, tuple[Buildpack, LayerBlob]] = {}
        for mod in modules:
            blob = mod.build_layer(self.workdir)
            existing = (layers_md.get(mod.id) or {}).get(mod.version)
            if existing is not None:
                if existing.get("layerDiffID") == str(blob.diff_id):
                    continue
                self.add([_whiteout_entry(mod)])
            previous = to_add.get(mod.full_name)
            if previous is not None and previous[1].diff_id == blob.diff_id:
                continue
            to_add[mod.full_name] = (mod, blob)  # the last one wins, as in pack
        for key in sorted(to_add):
            mod, blob = to_add[key]
            self.blobs.append(blob)
            layers_md.setdefault(mod.id, {})[mod.version] = mod.layer_info_json(blob.diff_id)

    def order(self, order: Order, order_extensions: Order) -> None:
        resolved = resolve_order(self.meta["buildpacks"] or [], order)
        resolved_ext = resolve_order(self.meta["extensions"] or [], order_extensions, "extension")
        self.add([TarEntry.file("cnb/order.toml", order_toml(resolved, resolved_ext).encode())])
        self.labels[LABEL_ORDER] = label_text(order_to_json(order))
        self.labels[LABEL_ORDER_EXTENSIONS] = label_text(
            order_to_json(order_extensions) if order_extensions else None)


def _publish(builder: Builder, layers: _Layers, scratch_store: Any, before_publish: BeforePublish | None,
             ledger: Any, tag: str | None) -> ComposeResult:
    """The config and manifest of the composed builder; every new blob into ``scratch_store``."""
    docker = builder.is_docker
    layers.meta["createdBy"] = {"name": CREATOR_NAME, "version": ocibuild.__version__}
    layers.labels[LABEL_METADATA] = label_text(layers.meta)
    layers.labels[LABEL_MIXINS] = label_text(list(builder.mixins) if builder.mixins is not None else None)
    layer_descs = [b.descriptor(docker) for b in layers.blobs]
    config = _new_config(builder.config, layers.labels, [b.diff_id for b in layers.blobs])
    manifest = Manifest.build(config.descriptor(), [*builder.manifest.layers, *layer_descs],
                              media_type=builder.manifest.media_type)
    desc = manifest.descriptor()
    result_tag = _scratch_tag(desc.digest) if tag == "" else tag
    lock = scratch_store.writer_lock() if hasattr(scratch_store, "writer_lock") else contextlib.nullcontext()
    with lock:
        for blob in layers.blobs:
            blob.publish(scratch_store, docker=docker, before_publish=before_publish)
        _put_small(scratch_store, config.descriptor(), config.raw, before_publish)
        if ledger is not None and not _same_store(builder.store, scratch_store):
            location = _location(builder.store)
            for layer in builder.manifest.layers:
                ledger.record_source(layer.digest, location)
        if before_publish is not None:
            scratch_store.put_manifest(desc, manifest.raw, tag=result_tag, before_publish=before_publish)
        else:
            scratch_store.put_manifest(desc, manifest.raw, tag=result_tag)
    return ComposeResult(desc, manifest, config, tuple(layer_descs), True, result_tag, builder, scratch_store)


def _put_small(store: Any, desc: Descriptor, data: bytes, before_publish: BeforePublish | None) -> None:
    import io

    if store.has_blob(desc):
        return
    if before_publish is not None:
        store.put_blob(desc, io.BytesIO(data), before_publish=before_publish)
    else:
        store.put_blob(desc, io.BytesIO(data))


def _sorted_layers(layers_md: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Go marshals maps with sorted keys."""
    return {k: {v: dict(layers_md[k][v]) for v in sorted(layers_md[k])} for k in sorted(layers_md)}


def _dirs_entries(uid: int, gid: int) -> list[TarEntry]:
    """pack's ``defaultDirsLayer``: workspace and layers owned by the build user, the rest by root."""
    out = [TarEntry.dir("workspace", uid=uid, gid=gid), TarEntry.dir("layers", uid=uid, gid=gid)]
    for path in ("cnb", "cnb/buildpacks", "cnb/extensions", "platform", "platform/env",
                 "cnb/build-config", "cnb/build-config/env"):
        out.append(TarEntry.dir(path))
    return out


def _whiteout_entry(bp: Buildpack) -> TarEntry:
    return TarEntry.file(f"{bp.id_dir}/.wh.{bp.version}", b"")


def _build_config_entries(envs: Sequence[BuildConfigEnv]) -> list[TarEntry]:
    out: list[TarEntry] = []
    for e in sorted(envs, key=lambda e: (e.name, e.suffix)):
        name = f"{e.name}.{e.suffix}" if e.suffix else e.name
        out.append(TarEntry.file(f"cnb/build-config/env/{name}", e.value.encode()))
        if e.delim:
            out.append(TarEntry.file(f"cnb/build-config/env/{e.name}.delim", e.delim.encode()))
    return out


def _new_config(base: ImageConfig, labels: Mapping[str, str], diff_ids: Sequence[Digest]) -> ImageConfig:
    doc = base.to_dict()
    cfg = doc.setdefault("config", {}) or {}
    doc["config"] = cfg
    cfg["Labels"] = dict(labels)
    cfg["WorkingDir"] = "/layers"
    rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [str(d) for d in diff_ids]
    if "history" in doc and isinstance(doc["history"], list):
        doc["history"] = doc["history"] + [{"created": NORMALIZED_TIME} for _ in diff_ids]
    doc["created"] = NORMALIZED_TIME
    return ImageConfig.build(doc, base.media_type if base.media_type in mt.CONFIG_TYPES else mt.OCI_CONFIG)


# ---------------------------------------------------------------------------------------------
# Publishing a composed builder (builder create)


def publish_builder(result: ComposeResult, target: Any, tag: str | None, *, progress: Any = None) -> Descriptor:
    """Copy a composed builder into ``target``: new blobs from the scratch store, base layers from
    the base store, mounted instead when the target is another repository of the same registry."""
    import io

    base_store = result.base.store if result.base is not None else None
    same_registry = (
        base_store is not None
        and getattr(base_store, "registry", None) is not None
        and getattr(base_store, "registry", None) == getattr(target, "registry", None)
    )
    new = {d.digest for d in result.new_layers}
    for layer in result.manifest.layers:
        if target.has_blob(layer):
            continue
        source = result.store if layer.digest in new or base_store is None else base_store
        if source is base_store and same_registry and getattr(base_store, "repository", None) != getattr(target, "repository", None):
            if target.mount_blob(layer, base_store.repository):
                continue
        if source is base_store and result.store is not None and result.store.has_blob(layer):
            source = result.store
        with source.open_blob(layer) as stream:
            target.put_blob(layer, stream)
    if not target.has_blob(result.manifest.config):
        target.put_blob(result.manifest.config, io.BytesIO(result.config.raw))
    return target.put_manifest(result.descriptor, result.manifest.raw, tag=tag)
