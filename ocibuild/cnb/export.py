"""The exporter: a layers directory after the build phase + a run image -> an app image in any store.

Behaviour follows buildpacks/lifecycle ``phase/exporter.go``: the run image's layers are referenced
(mounted or copied blob by blob, never unpacked), then per buildpack in group order its launch
layers, the SBOM layer, the app layer(s), the launcher, the launcher config and the process types.
Layers are reproducible tars (``layer.tarwriter``) so the same inputs give the same digests, and a
blob the target already holds is never uploaded again.
"""

from __future__ import annotations


import glob
import io
import os
import tempfile
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import tomli_w

from ocibuild.cnb.apis import LABEL as APIS_LABEL
from ocibuild.cnb.apis import PLATFORM_API
from ocibuild.cnb.apis import label as apis_label
from ocibuild.cnb.descriptor import GroupElement, escape_id, parse_group_element
from ocibuild.cnb.errors import DescriptorError, ExportError
from ocibuild.cnb.execenv import applies
from ocibuild.cnb.launcher import PROCESS_TABLE_NAME, LaunchProcess, launcher_bytes, render_process_table
from ocibuild.errors import ManifestError, UsageError
from ocibuild.layer import write_layer
from ocibuild.layer.memo import LayerMemo, entries_key
from ocibuild.layer.tarwriter import DIR, TarEntry, TarOptions, entries_from_dir, normalize_path
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest, canonical_json
from ocibuild.store.base import Store, load_config, load_manifest

LIFECYCLE_LABEL = "io.buildpacks.lifecycle.metadata"
BUILD_LABEL = "io.buildpacks.build.metadata"
PROJECT_LABEL = "io.buildpacks.project.metadata"
EXEC_ENV_LABEL = "io.buildpacks.exec-env"
NORMALIZED_CREATED = "1980-01-01T00:00:01Z"
LAUNCHER_PATH = "/cnb/lifecycle/launcher"
PROCESS_DIR = "/cnb/process"


# -- what the build phase left ------------------------------------------------------------------
DEFAULT_GROUP_API = "0.10"
"""The Buildpack API assumed for a group entry that does not say (older group.toml files)."""


@dataclass(frozen=True)
class LayerInfo:
    """One ``<layers>/<bp>/<name>/`` directory with the types and metadata of its ``<name>.toml``."""

    buildpack: GroupElement
    name: str
    path: Path
    launch: bool
    build: bool
    cache: bool
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def has_content(self) -> bool:
        return self.path.is_dir()


@dataclass(frozen=True)
class BuildOutput:
    """What ``<layers>`` says after the build (the lifecycle's on-disk contract, read back):
    group, processes, labels, slices, layers. ``cnb.build.BuildResult`` is what ``build()``
    returns in memory; the exporter and the cache read this instead, so they work on any
    layers directory the build phase left, whoever ran it."""

    layers_dir: Path
    buildpacks: tuple[GroupElement, ...]
    processes: tuple[LaunchProcess, ...]
    labels: tuple[tuple[str, str], ...]
    slices: tuple[tuple[str, ...], ...]
    default_process: str | None
    layers: tuple[LayerInfo, ...]
    metadata_toml: Path | None  # <layers>/config/metadata.toml when the build phase wrote it


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid TOML ({exc})") from None


def _process(raw: Mapping[str, Any], bp_id: str) -> LaunchProcess:
    command = raw.get("command", [])
    # Buildpack API < 0.9 writes a command string with an optional `direct` (default false);
    # API >= 0.9 writes an array and every process is direct.
    direct = bool(raw.get("direct", False)) if isinstance(command, str) else bool(raw.get("direct", True))
    if isinstance(command, str):
        command = [command]
    if not command or not all(isinstance(c, str) for c in command):
        raise ExportError(f"process {raw.get('type')!r} of {bp_id or 'a buildpack'} has no command")
    return LaunchProcess(
        type=str(raw.get("type", "")),
        command=tuple(command),
        args=tuple(str(a) for a in raw.get("args", []) or []),
        direct=direct,
        default=bool(raw.get("default", False)),
        buildpack_id=str(raw.get("buildpack-id", bp_id)),
        working_dir=str(raw.get("working-dir", "") or ""),
        exec_env=tuple(str(e) for e in raw.get("exec-env", []) or []),
    )


def _group_element(table: Any, where: str) -> GroupElement:
    try:
        element = parse_group_element(table, where)
    except DescriptorError as exc:
        raise ExportError(str(exc)) from None
    return element if element.api else replace(element, api=DEFAULT_GROUP_API)


def read_build_output(layers_dir: str | os.PathLike[str], exec_env: str | None = None) -> BuildOutput:
    """Read the lifecycle's on-disk format: ``group.toml``, ``config/metadata.toml`` or the launch.tomls;
    with ``exec_env``, launch.toml processes for other environments are left out (Buildpack API 0.12)."""
    layers = Path(layers_dir)
    group_doc = _read_toml(layers / "group.toml")
    meta_path = layers / "config" / "metadata.toml"
    meta = _read_toml(meta_path)
    group_src = group_doc.get("group") or meta.get("buildpacks") or []
    buildpacks = tuple(
        _group_element(b, str(layers / "group.toml")) for b in group_src
    )
    if not buildpacks:
        raise ExportError(f"{layers}: no buildpack group (group.toml or config/metadata.toml)")
    if meta:
        processes = [_process(p, "") for p in meta.get("processes", [])]
        labels = [(str(x["key"]), str(x["value"])) for x in meta.get("labels", [])]
        slices = [tuple(s.get("paths", [])) for s in meta.get("slices", [])]
        default = meta.get("buildpack-default-process-type") or None
    else:
        # No metadata.toml: merge the launch.tomls in group order (later buildpacks override a type).
        by_type: dict[str, LaunchProcess] = {}
        labels, slices, default = [], [], None
        for bp in buildpacks:
            launch = _read_toml(layers / escape_id(bp.id) / "launch.toml")
            for raw in launch.get("processes", []):
                proc = _process(raw, bp.id)
                if exec_env is not None and not applies(proc.exec_env, exec_env):
                    continue
                by_type[proc.type] = proc
                if proc.default:
                    default = proc.type
            labels += [(str(x["key"]), str(x["value"])) for x in launch.get("labels", [])]
            slices += [tuple(s.get("paths", [])) for s in launch.get("slices", [])]
        processes = list(by_type.values())
    layer_infos: list[LayerInfo] = []
    for bp in buildpacks:
        bp_dir = layers / escape_id(bp.id)
        if not bp_dir.is_dir():
            continue
        for toml_path in sorted(bp_dir.glob("*.toml")):
            name = toml_path.stem
            if name in ("launch", "store", "build") or name.endswith(".sbom"):
                continue
            doc = _read_toml(toml_path)
            types = doc.get("types") or {}
            layer_infos.append(LayerInfo(
                bp, name, bp_dir / name, bool(types.get("launch")), bool(types.get("build")),
                bool(types.get("cache")), doc.get("metadata") or {},
            ))
    return BuildOutput(
        layers, buildpacks, tuple(processes), tuple(labels), tuple(slices), default, tuple(layer_infos),
        meta_path if meta else None,
    )


# -- layers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltLayer:
    """A layer ready for the manifest: its descriptor, diffID, history line and (if new) its file."""

    descriptor: Descriptor
    diff_id: Digest
    created_by: str
    path: Path | None = None  # None when reused from a store


def _dir_entries(host_dir: Path, image_path: str, uid: int, gid: int,
                 include: Callable[[str], bool] | None = None) -> list[TarEntry]:
    """A directory as the lifecycle's DirLayer writes it: ancestors root-owned, the rest uid/gid."""
    base = normalize_path(image_path)
    parts = base.split("/")
    out = [TarEntry("/".join(parts[:i]), DIR, 0o755, uid=0, gid=0) for i in range(1, len(parts))]
    for e in entries_from_dir(host_dir, base, include_parents=False):
        rel = e.path[len(base) + 1:]
        if include is not None and rel and not include(rel):
            continue
        out.append(TarEntry(e.path, e.kind, e.mode, e.size, e.linkname, uid, gid, opener=e.opener,
                            link_key=e.link_key, fingerprint=e.fingerprint))
    return out


class _Presence:
    """Blobs the target is known to hold: each is asked about (a HEAD on a registry) once per export."""

    def __init__(self, target: Store):
        self.target = target
        self._known: set[Digest] = set()

    def __call__(self, desc: Descriptor) -> bool:
        if desc.digest in self._known:
            return True
        if self.target.has_blob(desc):
            self._known.add(desc.digest)
            return True
        return False


class _LayerMaker:
    """Writes layers; with a memo, an unchanged layer the target already holds is not written again."""

    def __init__(self, tmp_dir: Path, media_type: str, memo: LayerMemo | None = None,
                 present: Callable[[Descriptor], bool] | None = None):
        self.tmp_dir, self.media_type, self.memo, self.present = tmp_dir, media_type, memo, present

    def make(self, entries: Iterable[TarEntry], created_by: str) -> BuiltLayer:
        entries = list(entries)
        key = entries_key(entries, TarOptions(), self.media_type) if self.memo is not None else None
        if key is not None:
            hit = self.memo.get(key)  # type: ignore[union-attr]
            if hit is not None and self.present is not None and self.present(hit[0]):
                return BuiltLayer(hit[0], hit[1], created_by, None)
        result = write_layer(entries, media_type=self.media_type, tmp_dir=self.tmp_dir)
        if key is not None:
            self.memo.put(key, result.descriptor, result.diff_id)  # type: ignore[union-attr]
        return BuiltLayer(result.descriptor, result.diff_id, created_by, result.path)


def _slice_entries(app_dir: Path, image_app: str, slices: tuple[tuple[str, ...], ...], uid: int, gid: int,
                   include: Callable[[str], bool] | None) -> list[list[TarEntry]]:
    """App layers: one per slice (paths matched by its globs), then everything not yet taken."""
    all_entries = _dir_entries(app_dir, image_app, uid, gid, include)
    base = normalize_path(image_app)
    taken: set[str] = set()
    groups: list[list[TarEntry]] = []
    for patterns in slices:
        matched: set[str] = set()
        for pattern in patterns:
            for hit in glob.glob(pattern, root_dir=app_dir):
                rel = normalize_path(hit)
                if rel:
                    matched.add(rel)
        chosen = []
        for e in all_entries:
            rel = e.path[len(base) + 1:] if e.path.startswith(base + "/") else ""
            if not rel or e.path in taken:
                continue
            if any(rel == m or rel.startswith(m + "/") for m in matched):
                chosen.append(e)
        if not chosen:
            continue
        taken.update(e.path for e in chosen if e.kind != DIR)
        # Each slice layer carries the directories leading to its files (owned like the app dir).
        needed_dirs = {e.path.rsplit("/", 1)[0] for e in chosen}
        dirs = [e for e in all_entries if e.kind == DIR and any(d == e.path or d.startswith(e.path + "/")
                                                                   for d in needed_dirs)]
        groups.append(dirs + chosen)
    rest = [e for e in all_entries if e.path not in taken]
    groups.append(rest)
    return groups


# -- the export -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunImageSource:
    """Where the exporter reads the run image (``store`` + ``identifier``), what to call it in
    ``runImage.image`` and its mirrors. Not ``builder.RunImage``, which is only the name+mirrors
    record of a builder's labels."""

    store: Store
    identifier: str
    name: str
    mirrors: tuple[str, ...] = ()
    read_as: str | None = None  # the name it was read from, for ``runImage.reference`` (a mirror); None: name


@dataclass(frozen=True)
class ExportOptions:
    layers_dir: Path
    app_dir: Path
    platform_api: str = PLATFORM_API
    exec_env: str = "production"  # CNB_EXEC_ENV of the build: the io.buildpacks.exec-env label (Platform API 0.15)
    uid: int = 1000
    gid: int = 1000
    default_process: str | None = None
    launcher: Path | None = None  # the builder's /cnb/lifecycle/launcher, extracted; None: ocibuild's
    launcher_version: str = ""
    creation_time: int | None = None  # unix seconds; None: SOURCE_DATE_EPOCH, else 1980-01-01T00:00:01Z
    project_metadata: Mapping[str, Any] | None = None
    image_layers_dir: str = "/layers"
    image_app_dir: str = "/workspace"
    app_include: Callable[[str], bool] | None = None  # project.toml include/exclude, on app-relative paths
    tmp_dir: Path | None = None
    extra_tags: tuple[str, ...] = ()
    layer_memo_dir: Path | None = None  # remembers unchanged layers across builds (see layer.memo)


@dataclass(frozen=True)
class ExportResult:
    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig
    layers: tuple[BuiltLayer, ...]  # the layers ocibuild added, in image order
    uploaded: tuple[Digest, ...]  # blobs written to the target (everything else was already there)
    default_process: str | None


def created_time(creation_time: int | None) -> str:
    """``--creation-time``, else ``SOURCE_DATE_EPOCH``, else the normalized 1980 date (RFC 3339, UTC)."""
    if creation_time is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if env:
            try:
                creation_time = int(env)
            except ValueError:
                raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not a unix time in seconds") from None
    if creation_time is None:
        return NORMALIZED_CREATED
    return datetime.fromtimestamp(creation_time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sbom_entries(build: BuildOutput, image_layers: str) -> list[TarEntry]:
    """``<layers>/sbom/launch/<bp>/<layer>/sbom.<ext>`` from each launch layer's ``<layer>.sbom.<ext>``
    (and ``<bp>/sbom.<ext>`` from a buildpack's ``launch.sbom.<ext>``)."""
    existing = build.layers_dir / "sbom" / "launch"
    if existing.is_dir():
        return _dir_entries(existing, f"{normalize_path(image_layers)}/sbom/launch", 0, 0)
    launch_layers = {(lay.buildpack.id, lay.name) for lay in build.layers if lay.launch}
    return sbom_entries(build.layers_dir, [bp.id for bp in build.buildpacks], "launch", image_layers,
                        lambda bp_id, owner: owner == "launch" or (bp_id, owner) in launch_layers)


def sbom_entries(layers_dir: Path, buildpack_ids: Iterable[str], kind: str, image_layers: str,
                 keep: Callable[[str, str], bool]) -> list[TarEntry]:
    """The lifecycle's SBOM layout for one layer type: ``<layers>/sbom/<kind>/<bp>/<layer>/sbom.<ext>``
    from each ``<bp>/<layer>.sbom.<ext>`` that ``keep(bp id, layer)`` accepts (layer ``launch``: the
    buildpack's own, at ``<bp>/sbom.<ext>``); directories 0755 and files 0644, root-owned."""
    base = normalize_path(image_layers)
    files: list[TarEntry] = []
    for bp_id in buildpack_ids:
        bp_dir = layers_dir / escape_id(bp_id)
        for sbom in sorted(bp_dir.glob("*.sbom.*")) if bp_dir.is_dir() else []:
            owner, _, ext = sbom.name.partition(".sbom.")
            if not keep(bp_id, owner):
                continue
            sub = f"{escape_id(bp_id)}/{owner}" if owner != "launch" else escape_id(bp_id)
            files.append(TarEntry(f"{base}/sbom/{kind}/{sub}/sbom.{ext}", "file", 0o644,
                                  sbom.stat().st_size, opener=lambda p=sbom: open(p, "rb")))
    if not files:
        return []
    dirs: set[str] = set()
    for f in files:
        parts = f.path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [TarEntry(d, DIR, 0o755) for d in sorted(dirs)] + files


def _metadata_toml(build: BuildOutput, default: str | None) -> bytes:
    """``config/metadata.toml`` as written by the build phase, or rebuilt from launch.tomls."""
    if build.metadata_toml is not None:
        return build.metadata_toml.read_bytes()
    doc: dict[str, Any] = {
        "buildpacks": [{"id": b.id, "version": b.version, "api": b.api} | ({"homepage": b.homepage} if b.homepage
                                                                            else {}) for b in build.buildpacks],
        "processes": [
            {"type": p.type, "command": list(p.command), "args": list(p.args), "direct": p.direct,
             "buildpack-id": p.buildpack_id} | ({"working-dir": p.working_dir} if p.working_dir else {})
            | ({"exec-env": list(p.exec_env)} if p.exec_env else {})
            for p in build.processes
        ],
    }
    if build.labels:
        doc["labels"] = [{"key": k, "value": v} for k, v in build.labels]
    if build.slices:
        doc["slices"] = [{"paths": list(s)} for s in build.slices]
    if default:
        doc["buildpack-default-process-type"] = default
    return tomli_w.dumps(doc).encode("utf-8")


def _file_entries(image_path: str, data: bytes, mode: int) -> list[TarEntry]:
    path = normalize_path(image_path)
    parts = path.split("/")
    return [TarEntry("/".join(parts[:i]), DIR, 0o755) for i in range(1, len(parts))] + [
        TarEntry.file(path, data, mode)
    ]


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    out = [e for e in env if e.partition("=")[0] != key]
    out.append(f"{key}={value}")
    return out


def _store_metadata(layers_dir: Path, bp: GroupElement) -> dict[str, Any] | None:
    store = _read_toml(layers_dir / escape_id(bp.id) / "store.toml")
    return {"metadata": store.get("metadata", {})} if store else None


def check_default_process(build: BuildOutput, requested: str | None) -> None:
    """The lifecycle exporter refuses a ``-process-type`` no buildpack defined (the image could not
    start); checked before anything is written."""
    if requested and requested not in {p.type for p in build.processes}:
        raise ExportError(f"tried to set {requested} to default but it doesn't exist "
                          f"(process types: {', '.join(sorted(p.type for p in build.processes)) or 'none'})")


def export(
    target: Store,
    tag: str | None,
    run: RunImageSource,
    options: ExportOptions,
    *,
    previous: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Assemble and write the app image into ``target`` (tagged ``tag`` and ``options.extra_tags``).

    ``previous`` is the ``io.buildpacks.lifecycle.metadata`` of the previous image: a launch layer
    the buildpack kept without content (only ``<layer>.toml``) is reused from it by diffID.
    """
    say = progress or (lambda _msg: None)
    build = read_build_output(options.layers_dir, options.exec_env)
    check_default_process(build, options.default_process)
    run_desc, run_manifest, run_config = _run_image(run)
    work = Path(tempfile.mkdtemp(prefix="ocibuild-export-", dir=options.tmp_dir))
    present = _Presence(target)
    layer_type = mt.layer_type("gzip", run_manifest.is_docker)
    memo = LayerMemo(options.layer_memo_dir) if options.layer_memo_dir is not None else None
    asm = _Assembly(build, options, _LayerMaker(work, layer_type, memo, present), target, say)
    try:
        asm.launch_layers(_previous_layers(previous))
        asm.sbom_layer()
        asm.app_layers()
        default = asm.launcher_layers()
        asm.lifecycle_md["runImage"], asm.lifecycle_md["stack"] = _run_image_md(run, run_desc.digest, run_config)
        config = ImageConfig.build(asm.config_doc(run_config, default),
                                   mt.DOCKER_CONFIG if run_manifest.is_docker else mt.OCI_CONFIG)
        manifest = Manifest.build(config.descriptor(), [*run_manifest.layers, *(x.descriptor for x in asm.added)],
                                  media_type=mt.DOCKER_MANIFEST if run_manifest.is_docker else mt.OCI_MANIFEST)
        uploaded = _write_image(target, present, run, run_manifest, asm.added, config, say)
        desc = manifest.descriptor()
        tags = [t for t in (tag, *options.extra_tags) if t]
        target.put_manifest(desc, manifest.raw, tag=tags[0] if tags else None)
        for extra in tags[1:]:
            target.tag(desc, extra)
        return ExportResult(desc, manifest, config, tuple(asm.added), tuple(uploaded), default)
    finally:
        for layer in asm.added:
            if layer.path is not None:
                layer.path.unlink(missing_ok=True)
        for leftover in work.glob("*"):
            leftover.unlink(missing_ok=True)
        work.rmdir()


def _run_image(run: RunImageSource) -> tuple[Descriptor, Manifest, ImageConfig]:
    run_desc, run_manifest = load_manifest(run.store, run.identifier)
    if not isinstance(run_manifest, Manifest):
        raise ExportError(f"run image {run.name} is an index; pick a platform before exporting")
    run_config = load_config(run.store, run_manifest.config)
    if len(run_config.diff_ids) != len(run_manifest.layers):
        raise ManifestError(f"run image {run.name}: {len(run_config.diff_ids)} diff_ids for "
                            f"{len(run_manifest.layers)} layers")
    return run_desc, run_manifest, run_config


def _run_image_md(run: RunImageSource, digest: Digest, run_config: ImageConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``runImage`` and the legacy ``stack`` of the lifecycle metadata."""
    mirrors = {"mirrors": list(run.mirrors)} if run.mirrors else {}
    run_image_md = {
        "topLayer": str(run_config.diff_ids[-1]) if run_config.diff_ids else "",
        "reference": run_reference(run.read_as or run.name, digest),
        "image": run.name, **mirrors,
    }
    return run_image_md, {"runImage": {"image": run.name, **mirrors}}


class _Assembly:
    """The layers the exporter adds, in the lifecycle's order, and the metadata that describes them."""

    def __init__(self, build: BuildOutput, options: ExportOptions, maker: _LayerMaker, target: Store,
                 say: Callable[[str], None]):
        self.build, self.options, self.maker, self.target, self.say = build, options, maker, target, say
        self.added: list[BuiltLayer] = []
        self.lifecycle_md: dict[str, Any] = {"buildpacks": []}

    def _add(self, layer: BuiltLayer) -> BuiltLayer:
        self.added.append(layer)
        return layer

    def launch_layers(self, prev_layers: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        """Each buildpack's launch layers, in group order; one kept without content is reused."""
        opts, build = self.options, self.build
        for bp in build.buildpacks:
            bp_md: dict[str, Any] = {"key": bp.id, "version": bp.version, "layers": {}}
            for lay in (x for x in build.layers if x.buildpack == bp and x.launch):
                created_by = f"Layer: '{lay.name}', Created by buildpack: {bp.id}@{bp.version}"
                if lay.has_content:
                    self.say(f"Adding layer '{bp.id}:{lay.name}'")
                    layer = self.maker.make(_dir_entries(lay.path, f"{opts.image_layers_dir}/{escape_id(bp.id)}/"
                                                         f"{lay.name}", opts.uid, opts.gid), created_by)
                else:
                    reused = prev_layers.get((bp.id, lay.name))
                    if reused is None:
                        raise ExportError(f"buildpack {bp.id}: launch layer {lay.name!r} has no content and "
                                          "no previous image holds it")
                    self.say(f"Reusing layer '{bp.id}:{lay.name}'")
                    layer = reused_layer(self.target, reused, created_by)
                self._add(layer)
                bp_md["layers"][lay.name] = {"sha": str(layer.diff_id), "data": dict(lay.metadata),
                                             "build": lay.build, "launch": lay.launch, "cache": lay.cache}
            store_md = _store_metadata(build.layers_dir, bp)
            if store_md is not None:
                bp_md["store"] = store_md
            self.lifecycle_md["buildpacks"].append(bp_md)

    def sbom_layer(self) -> None:
        sbom = _sbom_entries(self.build, self.options.image_layers_dir)
        if sbom:
            layer = self._add(self.maker.make(sbom, "Software Bill-of-Materials"))
            self.lifecycle_md["sbom"] = {"sha": str(layer.diff_id)}

    def app_layers(self) -> None:
        opts = self.options
        groups = _slice_entries(opts.app_dir, opts.image_app_dir, self.build.slices, opts.uid, opts.gid,
                                opts.app_include)
        self.lifecycle_md["app"] = []
        for i, entries in enumerate(groups):
            name = "Application Layer" if i == len(groups) - 1 else f"Application Slice: {i + 1}"
            layer = self._add(self.maker.make(entries, name))
            self.lifecycle_md["app"].append({"sha": str(layer.diff_id)})

    def launcher_layers(self) -> str | None:
        """The launcher, its config (metadata.toml, process table) and the process-type links;
        returns the default process type the image starts."""
        opts, build, md = self.options, self.build, self.lifecycle_md
        data = opts.launcher.read_bytes() if opts.launcher is not None else launcher_bytes()
        md["launcher"] = {"sha": str(self._add(self.maker.make(
            _file_entries(LAUNCHER_PATH, data, 0o755), "Buildpacks Application Launcher")).diff_id)}
        types = {p.type for p in build.processes}
        default = opts.default_process or build.default_process
        if default is not None and default not in types:
            self.say(f"Warning: default process type '{default}' not present in list {sorted(types)}")
            default = None
        config_dir = f"{normalize_path(opts.image_layers_dir)}/config"
        bps = [(escape_id(b.id), b.api) for b in build.buildpacks]
        entries = [
            TarEntry(normalize_path(opts.image_layers_dir), DIR, 0o755, uid=0, gid=0),
            TarEntry(config_dir, DIR, 0o755, uid=opts.uid, gid=opts.gid),
            TarEntry.file(f"{config_dir}/metadata.toml", _metadata_toml(build, build.default_process), 0o644,
                          uid=opts.uid, gid=opts.gid),
            TarEntry.file(f"{config_dir}/{PROCESS_TABLE_NAME}",
                          render_process_table(bps, list(build.processes), default), 0o644,
                          uid=opts.uid, gid=opts.gid),
        ]
        md["config"] = {"sha": str(self._add(self.maker.make(entries, "Buildpacks Launcher Config")).diff_id)}
        if build.processes:
            links = [TarEntry("cnb", DIR, 0o755), TarEntry("cnb/process", DIR, 0o755)] + [
                TarEntry.symlink(f"cnb/process/{t}", LAUNCHER_PATH) for t in sorted(types)]
            md["process-types"] = {"sha": str(self._add(self.maker.make(links, "Buildpacks Process Types")).diff_id)}
        return default

    def build_md(self) -> dict[str, Any]:
        """``io.buildpacks.build.metadata``: buildpacks, launcher, processes."""
        build, opts = self.build, self.options
        md: dict[str, Any] = {
            "buildpacks": [{"id": b.id, "version": b.version} | ({"homepage": b.homepage} if b.homepage else {})
                           for b in build.buildpacks],
            "launcher": {"version": opts.launcher_version or ("ocibuild-sh" if opts.launcher is None else ""),
                         "source": {"git": {"repository": "", "commit": ""}}},
            "processes": [
                {"type": p.type, "command": list(p.command), "args": list(p.args), "direct": p.direct,
                 "buildpackID": p.buildpack_id} | ({"working-dir": p.working_dir} if p.working_dir else {})
                | ({"exec-env": list(p.exec_env)} if p.exec_env else {})
                for p in build.processes
            ],
        }
        if build.default_process:
            md["buildpack-default-process-type"] = build.default_process
        return md

    def config_doc(self, run_config: ImageConfig, default: str | None) -> dict[str, Any]:
        """The run image's config with our layers, env, entrypoint and labels."""
        opts = self.options
        created = created_time(opts.creation_time)
        doc = run_config.to_dict()
        doc.pop("container", None)
        doc.pop("container_config", None)
        cfg = doc.setdefault("config", {}) or {}
        doc["config"] = cfg
        env = list(cfg.get("Env") or [])
        run_path = next((e.partition("=")[2] for e in env if e.startswith("PATH=")), "")
        for key, value in (("CNB_LAYERS_DIR", opts.image_layers_dir), ("CNB_APP_DIR", opts.image_app_dir),
                           ("CNB_PLATFORM_API", opts.platform_api), ("CNB_DEPRECATION_MODE", "quiet"),
                           ("PATH", ":".join(p for p in (PROCESS_DIR, "/cnb/lifecycle", run_path) if p))):
            env = _set_env(env, key, value)
        cfg["Env"] = env
        cfg["WorkingDir"] = opts.image_app_dir
        cfg["Entrypoint"] = [f"{PROCESS_DIR}/{default}" if default else LAUNCHER_PATH]
        cfg["Cmd"] = None
        labels = dict(cfg.get("Labels") or {})
        labels.update(dict(self.build.labels))
        labels[LIFECYCLE_LABEL] = canonical_json(self.lifecycle_md).decode()
        labels[BUILD_LABEL] = canonical_json(self.build_md()).decode()
        labels[PROJECT_LABEL] = canonical_json(dict(opts.project_metadata or {})).decode()
        labels[EXEC_ENV_LABEL] = opts.exec_env
        labels[APIS_LABEL] = apis_label()
        cfg["Labels"] = labels
        doc["created"] = created
        history = [dict(h) for h in (doc.get("history") or [])]
        for h in history:
            h["created"] = created
        if not history:
            history = [{"created": created} for _ in run_config.diff_ids]
        history += [{"created": created, "created_by": layer.created_by} for layer in self.added]
        doc["history"] = history
        doc["rootfs"] = {"type": "layers",
                         "diff_ids": [str(d) for d in run_config.diff_ids] + [str(x.diff_id) for x in self.added]}
        return doc


def strip_tag(name: str) -> str:
    """An image name without its tag or digest (``reg:5000/a/b:1@sha256:…`` -> ``reg:5000/a/b``;
    ``oci:DIR:TAG`` -> ``oci:DIR``, where the first ``:`` after the directory starts the tag, as skopeo reads it)."""
    if name.startswith("oci:"):
        return "oci:" + name[4:].split("@", 1)[0].split(":", 1)[0]
    repo = name.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    return repo[: len(repo) - len(last)] + last.split(":", 1)[0]


def run_reference(name: str, run_digest: Digest) -> str:
    """``runImage.reference``: the run image by digest (``<repo>@sha256:…`` for registries)."""
    return f"{strip_tag(name)}@{run_digest}"


def _previous_layers(previous: Mapping[str, Any] | None) -> dict[tuple[str, str], Mapping[str, Any]]:
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for bp in (previous or {}).get("buildpacks", []) or []:
        for name, md in (bp.get("layers") or {}).items():
            if md.get("launch") and md.get("sha"):
                out[(bp.get("key", ""), name)] = md
    return out


def reused_layer(target: Store, layer_md: Mapping[str, Any], created_by: str) -> BuiltLayer:
    """A launch layer reused from the previous image: found by diffID among that image's layers."""
    desc = layer_md.get("_descriptor")
    if not isinstance(desc, Descriptor):
        raise ExportError(f"cannot reuse layer {layer_md.get('sha')}: the previous image is not available")
    return BuiltLayer(desc, Digest.parse(str(layer_md["sha"])), created_by, None)


def previous_metadata(store: Store, identifier: str) -> dict[str, Any] | None:
    """The previous app image's lifecycle metadata, each layer annotated with its descriptor for reuse."""
    import json

    from ocibuild.errors import NotFound

    try:
        _desc, manifest = load_manifest(store, identifier)
    except NotFound:
        return None
    if not isinstance(manifest, Manifest):
        return None
    config = load_config(store, manifest.config)
    raw = config.labels.get(LIFECYCLE_LABEL)
    if not raw:
        return None
    md = json.loads(raw)
    by_diff = dict(zip((str(d) for d in config.diff_ids), manifest.layers))
    for bp in md.get("buildpacks", []) or []:
        for layer_md in (bp.get("layers") or {}).values():
            found = by_diff.get(layer_md.get("sha"))
            if found is not None:
                layer_md["_descriptor"] = found
    return md


def _write_image(target: Store, present: _Presence, run: RunImageSource, run_manifest: Manifest,
                 added: list[BuiltLayer], config: ImageConfig, say: Callable[[str], None]) -> list[Digest]:
    """Run layers by mount/copy (skipped when present), new layers from their files, then the config."""
    from ocibuild.transfer.copy import GraphCopier

    uploaded: list[Digest] = []
    lock = getattr(target, "writer_lock", None)
    ctx = lock() if lock is not None else _null()
    with ctx:
        copier = GraphCopier(run.store, target)
        for blob in run_manifest.layers:
            if copier.copy_blob(blob) == "copied":
                uploaded.append(blob.digest)
        seen: set[Digest] = set()
        for layer in added:
            if layer.descriptor.digest in seen or present(layer.descriptor):
                continue
            seen.add(layer.descriptor.digest)
            if layer.path is None:
                raise ExportError(f"layer {layer.diff_id} to reuse is missing from {target.name}")
            put_file = getattr(target, "put_blob_file", None)
            if put_file is not None and hasattr(target, "tmp_dir"):
                tmp = Path(target.tmp_dir) / layer.path.name  # type: ignore[attr-defined]
                try:
                    os.link(layer.path, tmp)
                except OSError:
                    tmp = None  # type: ignore[assignment]
                if tmp is not None:
                    put_file(layer.descriptor, tmp)
                    uploaded.append(layer.descriptor.digest)
                    continue
            with open(layer.path, "rb") as fh:
                target.put_blob(layer.descriptor, fh)
            uploaded.append(layer.descriptor.digest)
        if not present(config.descriptor()):
            target.put_blob(config.descriptor(), io.BytesIO(config.raw))
            uploaded.append(config.digest)
    say(f"Wrote {len(uploaded)} new blobs")
    return uploaded


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
