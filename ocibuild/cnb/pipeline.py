"""``ocibuild build``: the whole Cloud Native Buildpacks build, with no daemon.

resolve builder (identity = digest, captured once) -> compose an ephemeral builder only when
buildpacks, env or a run image are given -> extract only the buildpacks the order needs -> detect
-> restore cache -> build (buildpacks see /layers and /workspace) -> export -> save cache ->
finally: release the lease and garbage-collect the scratch layout, however the build ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ocibuild.cnb.errors import BuildpackNotFound
from ocibuild.cnb.workspace import prepared as prepared_workspace
from ocibuild.errors import UsageError
from ocibuild.oci.descriptor import Platform

Say = Callable[[str], None]
ROLE_EPHEMERAL_BUILDER = "ephemeral-builder"
ROLE_APP_IMAGE = "app-image"
ROLE_DEFAULT_BUILDER = "default-builder"


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``ocibuild build`` takes; pack's flag names and meanings."""

    image: str
    path: Path = Path(".")
    builder: str | None = None
    buildpacks: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    run_image: str | None = None
    tags: tuple[str, ...] = ()
    cache_image: str | None = None
    cache_dir: Path | None = None
    clear_cache: bool = False
    default_process: str | None = None
    creation_time: int | None = None
    platform: Platform | None = None
    sbom_output_dir: Path | None = None
    scratch: Path | None = None
    descriptor: Path | None = None  # project.toml; default: <path>/project.toml when present
    layers_dir: str = "/layers"  # where buildpacks (and the image) see the layers
    workspace: str = "/workspace"  # where buildpacks (and the image) see the app
    default_registry: str | None = None
    registry_options: Any = None
    sign_key: str | None = None  # issue 11: a key path or env://NAME; the image is signed as the last step


@dataclass(frozen=True)
class BuildOutcome:
    image: str
    digest: str
    builder_digest: str
    ephemeral_builder: str | None
    group: tuple[str, ...]
    uploaded: int  # blobs written to the target (everything else was there already, or mounted)
    uploaded_bytes: int
    phases: Mapping[str, float]
    gc: Mapping[str, Any] | None


class _Phases:
    def __init__(self, say: Say):
        self.say = say
        self.times: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.say(f"===> {name.upper()}")
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times[name] = round(time.perf_counter() - start, 4)


def build(opts: BuildOptions, say: Say = lambda _m: None) -> BuildOutcome:
    from ocibuild.ledger import Lease, Scratch
    from ocibuild.ledger.gc import release_and_collect

    app = Path(opts.path).absolute()
    if not app.is_dir():
        raise UsageError(f"app directory {opts.path} does not exist")
    dest = destinations(opts)  # every name checked before anything is built or pushed
    scratch = Scratch.resolve(opts.scratch).ensure()
    lease = Lease(scratch).acquire()
    outcome: BuildOutcome | None = None
    try:
        outcome = _build(opts, dest, app, scratch, lease, say)
    finally:
        report = release_and_collect(lease, scratch, registry_options=opts.registry_options)
        if report is not None and outcome is not None:
            outcome = BuildOutcome(**{**outcome.__dict__, "gc": report.to_dict()})
    assert outcome is not None
    return outcome


def _open(text: str, opts: BuildOptions, *, for_write: bool = False):  # noqa: ANN202
    from ocibuild.store.open import open_reference

    return open_reference(text, opts.default_registry, opts.registry_options, for_write=for_write)


@dataclass(frozen=True)
class Destinations:
    """Where the app image goes: IMAGE (tag ``latest`` when it names none), more tags in its own
    repository or layout, and other repositories of the same registry (``-t team/app:1``)."""

    image: Any  # Reference | LayoutReference
    same_tags: tuple[str, ...] = ()
    other_repositories: tuple[Any, ...] = ()  # Reference, each with its tag


def destinations(opts: BuildOptions) -> Destinations:
    """pack's IMAGE and ``--tag``: every tag parsed with the same default registry; a tag on another
    registry or in another layout is refused (pack: "tag ... must be on the same registry")."""
    from ocibuild.oci.reference import LayoutReference, parse_reference

    image = parse_reference(opts.image, opts.default_registry)
    if image.digest is not None:
        raise UsageError(f"IMAGE {opts.image}: name a tag, not a digest (the digest is what the build makes)")
    if image.identifier is None:  # bare oci:DIR: like a registry name without a tag
        image = image.with_tag("latest")
    same: list[str] = []
    others: list[Any] = []
    for text in opts.tags:
        if isinstance(image, LayoutReference):
            if text.startswith(("oci:", "ocidir://")):
                ref = parse_reference(text)
                assert isinstance(ref, LayoutReference)
                if os.path.realpath(ref.path) != os.path.realpath(image.path):
                    raise UsageError(f"--tag {text}: not in the layout {image.path} that IMAGE names")
                if ref.tag is None:
                    raise UsageError(f"--tag {text}: name a tag (oci:{image.path}:TAG)")
                tag = ref.tag
            else:
                tag = image.with_tag(text).tag or ""
            if tag != image.tag and tag not in same:
                same.append(tag)
            continue
        ref = parse_reference(text, opts.default_registry)
        if isinstance(ref, LayoutReference):
            raise UsageError(f"--tag {text}: a layout tag for a registry IMAGE {image}")
        if ref.registry != image.registry:
            raise UsageError(f"--tag {text}: on registry {ref.registry}, not {image.registry} where IMAGE goes")
        if ref.digest is not None or not ref.tag:
            raise UsageError(f"--tag {text}: name a tag, not a digest")
        if ref.repository == image.repository:
            if ref.tag != image.tag and ref.tag not in same:
                same.append(ref.tag)
        elif ref not in others:
            others.append(ref)
    return Destinations(image, tuple(same), tuple(others))


def _tag_other_repositories(dest: Destinations, source: Any, result: Any, opts: BuildOptions,
                            lease: Any) -> None:
    """The image under ``-t`` tags in other repositories: blobs mounted across repositories (copied
    when the registry refuses), then the manifest."""
    from ocibuild.store.open import open_parsed
    from ocibuild.transfer.copy import GraphCopier

    blobs = [result.manifest.config, *result.manifest.layers]
    for ref in dest.other_repositories:
        store = _Recorded(open_parsed(ref, opts.registry_options, for_write=True), lease)
        GraphCopier(source, store).copy_blobs(blobs)
        store.put_manifest(result.descriptor, result.manifest.raw, tag=ref.tag)


def _build(opts: BuildOptions, dest: Destinations, app: Path, scratch: Any, lease: Any, say: Say) -> BuildOutcome:
    from ocibuild.cnb.builder import builder_from_parts, open_builder
    from ocibuild.cnb.compose import compose_builder
    from ocibuild.cnb.defaults import DEFAULT_BUILDER, ensure_default_builder

    phases = _Phases(say)
    scratch_store = scratch.open_layout()
    work = scratch.work_path / lease.id
    work.mkdir(parents=True)
    cleanup = contextlib.ExitStack()
    try:
        # 1. The builder: identity is the digest read here, before anything is composed.
        run_image_store = None
        if opts.builder in (None, DEFAULT_BUILDER):
            hook = lease.publish_hook(scratch_store, ROLE_DEFAULT_BUILDER)
            builder_id, run_tag = ensure_default_builder(scratch_store, hook)
            builder_store = scratch_store
            run_image_store = scratch_store
        else:
            builder_store, builder_id = _open(opts.builder, opts)
        builder = phases.run("resolving builder", lambda: open_builder(builder_store, builder_id or "latest",
                                                                       platform=opts.platform))
        original_digest = builder.digest

        project = _project(opts, app)
        env = {**project.env, **opts.env}  # pack: --env overrides project.toml
        extra, order = _requested_buildpacks(opts.buildpacks or project.buildpacks, opts, builder)
        composed = phases.run("composing builder", lambda: compose_builder(
            builder,
            buildpacks=extra,
            order=order,
            env=env,
            run_image=opts.run_image,
            scratch_store=scratch_store,
            before_publish=lease.publish_hook(scratch_store, ROLE_EPHEMERAL_BUILDER, ephemeral=True),
            ledger=lease.ledger,
            tag=None,
        ))
        if composed.ephemeral:
            say(f"ephemeral builder {composed.digest.short()} (from {builder.name} {original_digest.short()})")
        assert builder.digest == original_digest  # the caller's builder is never touched

        # 2. Only the buildpacks the order needs, from the (composed) builder's layers.
        bp_dir = work / "cnb" / "buildpacks"
        bp_dir.mkdir(parents=True)
        # The builder the build really uses: parsed once from what compose wrote.
        effective = builder_from_parts(builder.name, composed.descriptor, composed.manifest, composed.config,
                                       store=builder_store) if composed.ephemeral else builder
        group_order = _effective_order(effective)
        phases.run("extracting buildpacks", lambda: _extract_buildpacks(
            group_order, effective, scratch_store, bp_dir))

        # 3. Detect, restore, build.
        layers = work / "layers"
        platform_dir = work / "platform"
        layers.mkdir()
        (platform_dir / "env").mkdir(parents=True)
        for key in sorted(env):
            (platform_dir / "env" / key).write_text(env[key])
        include = (project.includes if project.include or project.exclude else None)
        workspace = phases.run("preparing workspace", lambda: cleanup.enter_context(
            prepared_workspace(app, scratch.root, work / "workspace", include)))
        run_name = opts.run_image or next((r.image for r in effective.run_images), "")
        if run_image_store is not None and not opts.run_image:
            run_store, run_id = run_image_store, run_tag
        else:
            if not run_name:
                raise UsageError(f"builder {builder.name} names no run image: pass --run-image")
            run_store, run_id = _open(run_name, opts)
        run_id = _platform_manifest(run_store, run_id or "latest", opts.platform)
        target = _target_of(run_store, run_id)
        sandbox = _sandbox({layers: opts.layers_dir, workspace: opts.workspace, platform_dir: "/platform",
                            bp_dir: "/cnb/buildpacks"})
        detected = phases.run("detecting", lambda: _detect(group_order, bp_dir, workspace, platform_dir, target,
                                                            sandbox))
        group_names = tuple(f"{e.id}@{e.version}" for e in detected.group)
        say("group: " + ", ".join(group_names))
        _write_group(layers, detected.group)

        from ocibuild.store.open import open_parsed

        target_store = open_parsed(dest.image, opts.registry_options, for_write=True)
        target_id = dest.image.identifier
        from ocibuild.cnb.cache import restore
        from ocibuild.cnb.export import previous_metadata

        previous = _previous(previous_metadata, target_store, target_id)
        cache = _cache(opts, scratch, target_store)
        if not opts.clear_cache:
            phases.run("restoring", lambda: restore(cache, layers, list(detected.group), previous=previous,
                                                    image_layers_dir=opts.layers_dir))

        from ocibuild.cnb.build import build as run_build

        built = phases.run("building", lambda: run_build(detected.group, detected.plan, layers, workspace,
                                                         platform_dir, buildpacks_dir=bp_dir, target=target,
                                                         sandbox=sandbox))

        # 4. Export, then cache.
        from ocibuild.cnb.export import ExportOptions, RunImageSource, export

        launcher = phases.run("finding launcher", lambda: _builder_launcher(
            effective, scratch_store, work / "launcher"))
        export_opts = ExportOptions(
            launcher=launcher, layers_dir=layers, app_dir=workspace, uid=builder.uid or 1000, gid=builder.gid or 1000,
            default_process=opts.default_process, creation_time=opts.creation_time,
            tmp_dir=getattr(target_store, "tmp_dir", None) or work, extra_tags=dest.same_tags,
            project_metadata=project.metadata_label, image_layers_dir=opts.layers_dir,
            layer_memo_dir=scratch.cache_path / "layer-memo",
            image_app_dir=opts.workspace,
        )
        recorded = _Recorded(target_store, lease)
        recorded_name, mirrors = _run_image_record(builder, run_name, opts) if run_name else (run_id, ())
        run_source = RunImageSource(run_store, run_id, recorded_name, mirrors,
                                    read_as=_qualified(run_name, opts) if run_name else None)
        result = phases.run("exporting", lambda: export(recorded, target_id, run_source, export_opts,
                                                        previous=previous))
        _tag_other_repositories(dest, target_store, result, opts, lease)
        if cache is not None:
            phases.run("caching", lambda: cache.save(layers, image_layers_dir=opts.layers_dir, uid=export_opts.uid,
                                                     gid=export_opts.gid, tmp_dir=work))
        if opts.sbom_output_dir is not None:
            _write_sboms(built, Path(opts.sbom_output_dir))
        from ocibuild.attest.build import attach_build_attestations, provenance_inputs  # issue 11
        phases.run("attesting", lambda: attach_build_attestations(target_store, result.descriptor, built, provenance_inputs(opts.image, builder, original_digest, effective, detected.group, run_store, run_id, run_name, app), sign_key=opts.sign_key, lease=lease, say=say))  # issue 11: SBOM + provenance referrers, then the signature
        sizes = {d.digest: d.size for d in (*result.manifest.layers, result.manifest.config)}
        return BuildOutcome(
            image=opts.image, digest=str(result.descriptor.digest), builder_digest=str(original_digest),
            ephemeral_builder=str(composed.digest) if composed.ephemeral else None, group=group_names,
            uploaded=len(result.uploaded), uploaded_bytes=sum(sizes.get(d, 0) for d in result.uploaded),
            phases=dict(phases.times), gc=None,
        )
    finally:
        cleanup.close()
        shutil.rmtree(work, ignore_errors=True)


def _write_sboms(built: Any, out: Path) -> None:
    """pack's ``--sbom-output-dir``: ``{launch,build}/<bp>/[<layer>/]sbom.<ext>``, as the lifecycle lays them out."""
    from ocibuild.cnb.descriptor import escape_id

    for bp in built.buildpacks:
        for sbom in bp.sbom_files:
            if sbom.layer_type not in ("launch", "build"):
                continue
            dest = out / sbom.layer_type / escape_id(sbom.buildpack_id)
            if sbom.layer_name:
                dest = dest / sbom.layer_name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sbom.path, dest / f"sbom.{sbom.extension}")


def _project(opts: BuildOptions, app: Path) -> Any:
    from ocibuild.cnb.project import Project, load_project

    path = opts.descriptor if opts.descriptor is not None else app / "project.toml"
    if opts.descriptor is None and not path.is_file():
        return Project()
    return load_project(Path(path))


BUILDER_URN = "urn:cnb:builder:"


def _on_builder(source: str, builder: Any) -> bool:
    """``id`` or ``id@version`` of a buildpack the builder holds (pack's ID locator)."""
    bp_id, _, version = source.partition("@")
    versions = (builder.buildpack_layers or {}).get(bp_id) if builder is not None else None
    return bool(versions) and (not version or version in versions)


def _is_builder_ref(source: str, builder: Any = None) -> bool:
    """Whether a ``--buildpack`` names a buildpack on the builder rather than a path or an image.

    Precedence, as pack's locators (``urn:cnb:builder:ID[@VERSION]`` always names the builder's
    buildpack): an existing path; then an id[@version] the builder holds (ids
    may contain ``/``: ``ocibuild/procfile``); then an image reference (``team/bp:1``, ``bpkg:1``,
    ``oci:DIR:TAG``). An ``id@version`` the builder lacks (``@`` but no ``:``, so not an image digest)
    stays an id, so that the error names the builder rather than a registry.
    """
    if os.path.exists(source):
        return False
    if _on_builder(source, builder):
        return True
    return "@" in source and ":" not in source


def _requested_buildpacks(sources: tuple[str, ...], opts: BuildOptions, builder: Any = None) -> tuple[list[Any], Any]:
    """pack's ``--buildpack``: one group, in the order given; sources that are not on the builder
    are fetched (a composite brings its dependencies, which are added but not put in the group)."""
    from ocibuild.cnb.buildpack import load_buildpacks
    from ocibuild.cnb.compose import parse_order

    if not sources:
        return [], None
    extra: list[Any] = []
    members: list[str] = []
    for source in sources:
        if source.startswith(BUILDER_URN):  # pack's explicit ID locator
            members.append(source[len(BUILDER_URN):])
            continue
        if source.startswith("urn:cnb:registry:"):
            raise UsageError(f"--buildpack {source}: the Buildpack Registry is not supported; "
                             "give an image reference instead")
        if _is_builder_ref(source, builder):
            members.append(source)
            continue
        loaded = load_buildpacks(source, platform=opts.platform, options=opts.registry_options,
                                 default_registry=opts.default_registry)
        members.append(f"{loaded[0].id}@{loaded[0].version}")
        extra += loaded
    return extra, parse_order([members])


def _qualified(name: str, opts: BuildOptions) -> str:
    """A run image name as the image records it: registry/repository:tag, or the ``oci:`` form."""
    from ocibuild.errors import InvalidReference
    from ocibuild.oci.reference import parse_reference

    try:
        return str(parse_reference(name, opts.default_registry))
    except InvalidReference:
        return name


def _run_image_record(builder: Any, run_name: str, opts: BuildOptions) -> tuple[str, tuple[str, ...]]:
    """``runImage.image`` and ``mirrors`` as the lifecycle records them (platform GetRunImageForExport):
    the builder's run-image entry whose image or a mirror is the run image used, else just that name.
    Names are qualified (``registry/repository:tag``; layouts keep ``oci:``) so rebase can match them."""
    used = _qualified(run_name, opts)
    for entry in builder.run_images or ():
        names = [_qualified(n, opts) for n in (entry.image, *(entry.mirrors or ())) if n]
        if used in names:
            return names[0] if entry.image else used, tuple(names[1:] if entry.image else names)
    return used, ()


def _effective_order(b: Any) -> Any:
    """The builder's order with every version resolved (a bare id must name one version on the builder)."""
    from dataclasses import replace

    from ocibuild.cnb.descriptor import Group, Order

    def resolved(el: Any) -> Any:
        if el.version:
            return el
        versions = sorted((b.buildpack_layers.get(el.id) or {}).keys())
        if len(versions) != 1:
            raise BuildpackNotFound(f"buildpack {el.id} is not on the builder (or is ambiguous)", buildpack=el.id)
        return replace(el, version=versions[0])

    return Order(tuple(Group(tuple(resolved(el) for el in group)) for group in b.order))


def _layers_for(order: Any, layers_md: Mapping[str, Any]) -> set[str]:
    """diffIDs of every buildpack reachable from ``order`` (composites followed through the label)."""
    need: set[str] = set()
    seen: set[tuple[str, str]] = set()
    stack = [(el.id, el.version) for group in order for el in group]
    while stack:
        bp_id, version = stack.pop()
        if (bp_id, version) in seen:
            continue
        seen.add((bp_id, version))
        info = (layers_md.get(bp_id) or {}).get(version)
        if info is None:
            raise BuildpackNotFound(f"buildpack {bp_id}@{version} is not on the builder", buildpack=bp_id)
        need.add(str(info["layerDiffID"]))
        for group in info.get("order") or []:
            for el in group.get("group", []):
                stack.append((el["id"], el.get("version", "")))
    return need


def _extract_buildpacks(order: Any, b: Any, scratch_store: Any, dest: Path) -> int:
    """Fetch and unpack just the layers holding the buildpacks ``order`` needs (safe extraction)."""
    from ocibuild.layer.compress import decompressor
    from ocibuild.layer.extract import safe_extract
    from ocibuild.oci import mediatype as mt

    wanted = _layers_for(order, b.buildpack_layers)
    by_diff = dict(zip((str(d) for d in b.config.diff_ids), b.manifest.layers))
    count = 0
    for diff_id in sorted(wanted):
        desc = by_diff.get(diff_id)
        if desc is None:
            raise BuildpackNotFound(f"builder has no layer with diffID {diff_id}")
        store = scratch_store if scratch_store.has_blob(desc) else b.store
        with store.open_blob(desc) as blob:
            stream = decompressor(blob, mt.compression_of(desc.media_type))
            count += safe_extract(stream, dest, "cnb/buildpacks/")
            stream.read()  # drain to EOF so the digest is verified
    return count


LAUNCHER_IN_LAYER = "cnb/lifecycle/launcher"
# pack's dirs layer (Builder.Save step 1): only these directories, a few hundred bytes.
_DIRS_LAYER_ENTRIES = frozenset({"workspace", "layers", "cnb", "cnb/buildpacks", "cnb/extensions", "platform",
                                 "platform/env", "cnb/build-config", "cnb/build-config/env"})
_MAX_DIRS_LAYER = 64 << 10


def _entry_name(info: Any) -> str:
    return info.name.lstrip("/").removeprefix("./").rstrip("/")


def _scan_layer(store: Any, desc: Any, visit: Callable[[Any, Any], bool]) -> bool:
    """Stream one layer's tar entries to ``visit(info, tar)`` until it returns True; verifies the blob."""
    import tarfile

    from ocibuild.layer.compress import decompressor
    from ocibuild.oci import mediatype as mt

    found = False
    with store.open_blob(desc) as blob:
        stream = decompressor(blob, mt.compression_of(desc.media_type))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if visit(info, tar):
                    found = True
                    break
        while stream.read(1 << 20):  # to EOF, where the blob's digest is verified
            pass
    return found


def _builder_launcher(b: Any, scratch_store: Any, dest: Path) -> Path | None:
    """The builder's ``/cnb/lifecycle/launcher``, extracted to ``dest``; None when it has no lifecycle.

    pack writes a builder as base layers, the dirs layer, the lifecycle layer, then buildpack layers
    (then order/stack/run/env). So the lifecycle is the layer just below the lowest buildpack layer,
    and it is one only if the layer below it is the tiny dirs layer. Only those two layers are read;
    base-image layers never are.
    """
    if not b.metadata.lifecycle_version:
        return None
    buildpack_layers = {str(info.get("layerDiffID")) for versions in b.buildpack_layers.values()
                        for info in versions.values()}
    pairs = list(zip((str(d) for d in b.config.diff_ids), b.manifest.layers))
    lowest = next((i for i, (diff_id, _) in enumerate(pairs) if diff_id in buildpack_layers), None)
    if lowest is None or lowest < 2:
        return None
    dirs, candidate = pairs[lowest - 2][1], pairs[lowest - 1][1]

    def store_of(desc: Any) -> Any:
        return scratch_store if scratch_store.has_blob(desc) else b.store

    def foreign(info: Any, _tar: Any) -> bool:
        return not info.isdir() or _entry_name(info) not in _DIRS_LAYER_ENTRIES

    if dirs.size > _MAX_DIRS_LAYER or _scan_layer(store_of(dirs), dirs, foreign):
        return None

    def extract(info: Any, tar: Any) -> bool:
        if not (info.isreg() and _entry_name(info) == LAUNCHER_IN_LAYER):
            return False
        with open(dest, "wb") as out:
            shutil.copyfileobj(tar.extractfile(info), out, 1 << 20)
        dest.chmod(0o755)
        return True

    return dest if _scan_layer(store_of(candidate), candidate, extract) else None


def _platform_manifest(store: Any, identifier: str, platform: Platform | None) -> str:
    """A run image given as an index becomes the digest of its manifest for ``platform`` (default: the host's)."""
    from ocibuild.errors import ManifestError
    from ocibuild.oci.manifest import Index
    from ocibuild.store.base import load_manifest

    _, manifest = load_manifest(store, identifier)
    if not isinstance(manifest, Index):
        return identifier
    from ocibuild.cnb.buildpack import host_platform

    want = platform or host_platform()
    entry = manifest.select(want)
    if entry is None:
        raise ManifestError(f"run image {identifier} has no manifest for {want}")
    return str(entry.digest)


def _target_of(store: Any, identifier: str) -> Any:
    from ocibuild.cnb.descriptor import Target
    from ocibuild.store.base import load_config, load_manifest

    _, manifest = load_manifest(store, identifier)
    config = load_config(store, manifest.config)
    labels = config.labels
    return Target(os=config.os or "linux", arch=config.architecture or "amd64",
                  arch_variant=config.get("variant") or "",
                  distro_name=labels.get("io.buildpacks.base.distro.name", ""),
                  distro_version=labels.get("io.buildpacks.base.distro.version", ""))


def _sandbox(mounts: Mapping[Path, str]) -> Any:
    from ocibuild.cnb.sandbox import prepare_sandbox

    return prepare_sandbox(mounts)


def _detect(order: Any, bp_dir: Path, workspace: Path, platform_dir: Path, target: Any, sandbox: Any) -> Any:
    from ocibuild.cnb.detect import detect

    # Platform API 0.12: a buildpack whose [[targets]] the run image does not satisfy does not pass.
    return detect(order, bp_dir, workspace, platform_dir, target=target, sandbox=sandbox, check_targets=True)


def _write_group(layers: Path, group: Any) -> None:
    doc = {"group": [{k: v for k, v in (("id", e.id), ("version", e.version), ("api", str(e.api or "")),
                                          ("homepage", e.homepage or "")) if v} for e in group]}
    (layers / "group.toml").write_text(tomli_w.dumps(doc))


def _previous(previous_metadata: Callable[..., Any], store: Any, identifier: str | None) -> Any:
    from ocibuild.errors import NotFound

    if not identifier:
        return None
    try:
        return previous_metadata(store, identifier)
    except NotFound:
        return None


def _cache(opts: BuildOptions, scratch: Any, target_store: Any) -> Any:
    from ocibuild.cnb.cache import DirCache, ImageCache

    if opts.cache_image:
        store, ident = _open(opts.cache_image, opts, for_write=True)
        return ImageCache(store, ident or "latest")
    if opts.cache_dir is not None:
        return DirCache(opts.cache_dir)
    key = hashlib.sha256(opts.image.encode()).hexdigest()[:16]
    return DirCache(scratch.cache_path / key)


class _Recorded:
    """The export target with a ledger row written before each blob or manifest becomes visible there.

    Everything else is delegated, so the copy code still sees a layout or a registry repository
    (``registry``, ``mount_blob``, ``tmp_dir``...). Rows are not ephemeral: the user asked for the image.
    """

    def __init__(self, store: Any, lease: Any):
        from ocibuild.ledger.scratch import layout_location

        self._store = store
        self._lease = lease
        self._location = layout_location(store.path) if hasattr(store, "path") \
            else f"{store.registry}/{store.repository}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _record(self, desc: Any) -> None:
        from ocibuild.oci import mediatype as mt

        role = ROLE_APP_IMAGE if mt.is_manifest_like(desc.media_type) else (
            "config" if desc.media_type in mt.CONFIG_TYPES else "layer")
        self._lease.ledger.record(desc, location=self._location, lease_id=self._lease.id, role=role,
                                  ephemeral=False)

    def put_blob(self, desc: Any, stream: Any, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_blob(desc, stream, *args, **kwargs)

    def put_blob_file(self, desc: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_blob_file(desc, path, *args, **kwargs)

    def put_manifest(self, desc: Any, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_manifest(desc, raw, *args, **kwargs)

    def mount_blob(self, desc: Any, from_repository: str) -> bool:
        self._record(desc)
        return self._store.mount_blob(desc, from_repository)
