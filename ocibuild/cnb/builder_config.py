"""pack's ``builder.toml`` and ``builder create`` without a daemon.

Fields read (buildpacks/pack:builder/config_reader.go): ``description``, ``[[buildpacks]]`` (``uri``
or ``image``), ``[[order]]``/``[[order.group]]``, ``[stack]`` (``id``, ``build-image``,
``run-image``, ``run-image-mirrors``), ``[build] image`` and ``[[build.env]]``, ``[[run.images]]``,
``[system]`` pre/post buildpacks, ``[[extensions]]`` (``uri``: a directory or ``.tgz``) and
``[[order-extensions]]``, ``[lifecycle] uri`` (a lifecycle tgz: a path, or an ``http(s)://`` URL fetched as buildpack URLs are,
see ``cnb/fetch.py``). Relative URIs are relative to
the directory of the builder.toml. Anything else (``[[targets]]``, ``[lifecycle] version``
without a ``uri``, extension images...) is refused in one line
naming it: a builder that silently lacks what its config asks for is worse than none.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ocibuild.cnb.buildpack import Buildpack, dedupe, load_buildpacks
from ocibuild.cnb.builder import RunImage, open_builder
from ocibuild.cnb.compose import BuildConfigEnv, ComposeResult, Lifecycle, compose_builder, publish_builder
from ocibuild.cnb.descriptor import Order, parse_order, decode_text
from ocibuild.cnb.system import SystemBuildpacks, parse_system
from ocibuild.errors import UsageError
from ocibuild.oci.descriptor import Descriptor, Platform


@dataclass(frozen=True)
class BuildpackEntry:
    uri: str = ""
    image: str = ""
    id: str = ""
    version: str = ""


@dataclass(frozen=True)
class BuilderConfig:
    path: Path
    description: str
    buildpacks: tuple[BuildpackEntry, ...]
    order: Order
    build_image: str
    build_env: tuple[BuildConfigEnv, ...]
    run_images: tuple[RunImage, ...]
    stack_id: str
    stack_run_image: RunImage | None
    lifecycle_uri: str
    lifecycle_version: str
    system: SystemBuildpacks = SystemBuildpacks()
    extensions: tuple[BuildpackEntry, ...] = ()
    order_extensions: Order = Order()

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}: [{key}] must be a table")
    return value


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string")
    return value


#: What ocibuild honours in builder.toml, table by table (``[[build.env]]`` entries: ``_env``).
_KNOWN: Mapping[str, frozenset[str] | None] = {
    "description": None, "buildpacks": frozenset({"uri", "image", "id", "version"}), "order": None,
    "stack": frozenset({"id", "build-image", "run-image", "run-image-mirrors"}),
    "build": frozenset({"image", "env"}), "run": frozenset({"images"}), "lifecycle": frozenset({"uri", "version"}),
    "system": None,  # checked by parse_system
    "extensions": frozenset({"uri", "id", "version"}), "order-extensions": None,
}
_WHY = {
    "targets": "one builder per --platform: run builder create once per platform",
}


def _refuse_unknown(doc: Mapping[str, Any], where: str) -> None:
    """One line naming the first table or key of ``doc`` ocibuild would otherwise drop."""
    for key, value in doc.items():
        if key not in _KNOWN:
            shown = f"[[{key}]]" if isinstance(value, list) and value and isinstance(value[0], Mapping) \
                else f"[{key}]" if isinstance(value, Mapping) else key
            why = _WHY.get(key, "unknown to ocibuild")
            raise UsageError(f"{where}: {shown} is not supported ({why})")
        allowed = _KNOWN[key]
        items = value if isinstance(value, list) else [value]
        for item in items:
            if allowed is not None and isinstance(item, Mapping):
                extra = sorted(set(item) - allowed)
                if extra:
                    raise UsageError(f"{where}: {key}.{extra[0]} is not supported by ocibuild")
    for item in (doc.get("build") or {}).get("env") or []:
        if isinstance(item, Mapping):
            extra = sorted(set(item) - {"name", "value", "suffix", "delim"})
            if extra:
                raise UsageError(f"{where}: build.env.{extra[0]} is not supported by ocibuild")
    lifecycle = doc.get("lifecycle")
    if isinstance(lifecycle, Mapping) and lifecycle.get("version") and not lifecycle.get("uri"):
        raise UsageError(f"{where}: [lifecycle] version {lifecycle['version']}: ocibuild downloads no lifecycle; "
                         "set [lifecycle] uri to a local lifecycle .tgz")


def read_builder_config(path: str | os.PathLike[str]) -> BuilderConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(decode_text(path.read_bytes(), str(path)))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such builder config") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    where = str(path)
    _refuse_unknown(doc, where)
    entries = _entries(doc, "buildpacks", where)
    extensions = _entries(doc, "extensions", where)
    try:
        order = parse_order(doc.get("order"), f"{where}: order")
        order_ext = parse_order(doc.get("order-extensions"), f"{where}: order-extensions")
    except Exception as exc:
        raise UsageError(str(exc)) from None
    stack = _table(doc, "stack", where)
    build = _table(doc, "build", where)
    run = _table(doc, "run", where)
    lifecycle = _table(doc, "lifecycle", where)
    build_env = []
    for item in build.get("env") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            raise UsageError(f"{where}: every [[build.env]] needs a name")
        build_env.append(BuildConfigEnv(item["name"], _str(item.get("value"), "build.env.value"),
                                        _str(item.get("suffix"), "build.env.suffix"), _str(item.get("delim"), "build.env.delim")))
    run_images = tuple(
        RunImage(_str(i.get("image"), "run.images.image"), tuple(i["mirrors"]) if i.get("mirrors") is not None else None)
        for i in run.get("images") or [] if isinstance(i, Mapping)
    )
    stack_run = None
    if stack.get("run-image"):
        mirrors = stack.get("run-image-mirrors")
        stack_run = RunImage(_str(stack.get("run-image"), "stack.run-image"), tuple(mirrors) if mirrors is not None else None)
    if not run_images and stack_run is not None:
        run_images = (stack_run,)
    build_image = _str(build.get("image"), "build.image") or _str(stack.get("build-image"), "stack.build-image")
    if not build_image:
        raise UsageError(f"{where}: build.image is required")
    return BuilderConfig(
        path=path,
        description=_str(doc.get("description"), "description"),
        buildpacks=tuple(entries),
        order=order,
        build_image=build_image,
        build_env=tuple(build_env),
        run_images=run_images,
        stack_id=_str(stack.get("id"), "stack.id"),
        stack_run_image=stack_run,
        lifecycle_uri=_str(lifecycle.get("uri"), "lifecycle.uri"),
        lifecycle_version=_str(lifecycle.get("version"), "lifecycle.version"),
        system=parse_system(doc.get("system"), where),
        extensions=extensions,
        order_extensions=order_ext,
    )


def _entries(doc: Mapping[str, Any], key: str, where: str) -> tuple[BuildpackEntry, ...]:
    out = []
    for item in doc.get(key) or []:
        if not isinstance(item, Mapping):
            raise UsageError(f"{where}: [[{key}]] entries must be tables")
        out.append(BuildpackEntry(_str(item.get("uri"), f"{key}.uri"), _str(item.get("image"), f"{key}.image"),
                                  _str(item.get("id"), f"{key}.id"), _str(item.get("version"), f"{key}.version")))
    return tuple(out)


def config_extensions(config: BuilderConfig) -> list[Buildpack]:
    """The ``[[extensions]]`` of builder.toml: directories or archives (``uri``), relative to its directory."""
    from ocibuild.cnb.buildpack import load_extensions

    out: list[Buildpack] = []
    for entry in config.extensions:
        if not entry.uri or entry.uri.startswith(("http://", "https://", "docker://")):
            raise UsageError(f"{config.path}: extension {entry.id or '?'} needs a uri naming a directory or "
                             ".tgz (ocibuild does not fetch extension images or URLs)")
        out.extend(load_extensions(entry.uri, base_dir=config.base_dir))
    return out


def config_buildpacks(config: BuilderConfig, platform: Platform | None = None, options: Any = None,
                      default_registry: str | None = None) -> list[Buildpack]:
    out: list[Buildpack] = []
    for entry in config.buildpacks:
        source = entry.uri or entry.image
        if not source:
            raise UsageError(f"{config.path}: buildpack {entry.id or '?'} has neither uri nor image "
                             "(ocibuild does not query buildpack registries)")
        if source.startswith(("http://", "https://")):
            from ocibuild.cnb.fetch import load_url_buildpacks

            out.extend(load_url_buildpacks(source, _download_root(), platform=platform, options=options,
                                           default_registry=default_registry))
            continue
        out.extend(load_buildpacks(source, base_dir=config.base_dir, platform=platform, options=options,
                                   default_registry=default_registry))
    return dedupe(out)


def _download_root() -> Path:
    """Where URLs in a builder.toml are downloaded to: the scratch directory's cache, as for builds."""
    from ocibuild.ledger import Scratch

    return Scratch.resolve(None).ensure().cache_path


def config_lifecycle(config: BuilderConfig) -> Lifecycle | None:
    uri = config.lifecycle_uri
    if not uri:
        return None
    if uri.startswith(("http://", "https://")):
        from ocibuild.cnb.fetch import Downloads

        path, _fresh = Downloads(_download_root() / "downloads").fetch(uri)
        return Lifecycle.from_file(path)
    uri = uri.removeprefix("file://")
    path = Path(uri) if os.path.isabs(uri) else config.base_dir / uri
    return Lifecycle.from_file(path)


def create_builder(
    config: BuilderConfig,
    target: str,
    *,
    platform: Platform | None = None,
    default_registry: str | None = None,
    options: Any = None,
    before_publish: Any = None,
) -> tuple[ComposeResult, Descriptor]:
    """``pack builder create``: compose the build image into a builder and write it to ``target``
    (``oci:DIR:TAG`` or a registry reference). New blobs are pushed; base layers are copied from
    the build image's store, or mounted when both live in the same registry."""
    from ocibuild.oci.reference import LayoutReference, parse_reference
    from ocibuild.store.layout import LayoutStore
    from ocibuild.store.open import open_parsed, open_reference

    base_store, identifier = open_reference(config.build_image, default_registry, options)
    if identifier is None:
        raise UsageError(f"{config.build_image}: name an image (oci:DIR:TAG)")
    base = open_builder(base_store, identifier, platform=platform, name=config.build_image, require_metadata=False)
    ref = parse_reference(target, default_registry)
    buildpacks = config_buildpacks(config, platform, options, default_registry)
    extensions = config_extensions(config)
    on_builder = {(str(b.get("id")), str(b.get("version"))) for b in base.metadata.raw.get("buildpacks") or []}
    config.system.check_present(on_builder | {(bp.id, bp.version) for bp in buildpacks})  # before any write
    target_store = open_parsed(ref, options, for_write=True)
    kwargs: dict[str, Any] = dict(
        buildpacks=buildpacks,
        order=config.order,
        lifecycle=config_lifecycle(config),
        description=config.description,
        run_images=config.run_images,
        stack_run_image=config.stack_run_image,
        build_config_env=config.build_env,
        system=config.system,
        extensions=extensions,
        order_extensions=config.order_extensions,
        validate=True,
        before_publish=before_publish,
    )
    if isinstance(ref, LayoutReference):
        result = compose_builder(base, scratch_store=target_store, tag=None, **kwargs)
        desc = publish_builder(result, target_store, ref.tag or "latest")
        return result, desc
    if not ref.tag:
        raise UsageError(f"{target}: a builder is published under a tag")
    with tempfile.TemporaryDirectory(prefix="ocibuild-builder-") as tmp:
        scratch = LayoutStore(tmp, create=True)
        result = compose_builder(base, scratch_store=scratch, tag=None, **kwargs)
        desc = publish_builder(result, target_store, ref.tag or None)
    return result, desc
