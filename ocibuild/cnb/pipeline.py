"""``ocibuild build``: the whole Cloud Native Buildpacks build, with no daemon. This module only wires.

resolve the builder (identity = digest, captured once) -> compose an ephemeral builder only when
buildpacks, env or a run image are given -> its layers as the build image's root file system
(extracted once each) -> the build environment -> detect -> restore -> build -> export -> cache ->
finally: release the lease and garbage-collect the scratch layout, however the build ended.
Each phase is one object of ``cnb.phase`` with explicit inputs and outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ocibuild.cnb.errors import BuildpackNotFound
from ocibuild.errors import UsageError
from ocibuild.oci.descriptor import Platform

if TYPE_CHECKING:
    from ocibuild.cnb.builder import Builder
    from ocibuild.cnb.cache import LayerCache
    from ocibuild.cnb.compose import ComposeResult
    from ocibuild.cnb.descriptor import Order
    from ocibuild.cnb.destinations import Destinations
    from ocibuild.cnb.environment import BuildEnvironment
    from ocibuild.cnb.export import RunImageSource
    from ocibuild.cnb.project import Project
    from ocibuild.cnb.rootfs import RootFS
    from ocibuild.ledger import Lease, Scratch
    from ocibuild.store.base import Store
    from ocibuild.store.layout import LayoutStore

Say = Callable[[str], None]
T = TypeVar("T")
ROLE_EPHEMERAL_BUILDER = "ephemeral-builder"
ROLE_DEFAULT_BUILDER = "default-builder"
ROLE_BUILD_IMAGE = "build-image"
BUILD_IMAGE_TAG_PREFIX = "ocibuild.local/build-image/"


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``ocibuild build`` takes; pack's flag names and meanings."""

    image: str
    path: Path = Path(".")
    builder: str | None = None
    buildpacks: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()  # --extension: directories/.tgz or id[@version] on the builder
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
    registry_options: Any = None  # a RegistryOptions (kept lazy: most builds never import requests)
    uid: int | None = None  # pack's --uid: the build user instead of the builder's CNB_USER_ID
    gid: int | None = None
    network: str = "host"  # pack's --network: host, or none (loopback only)
    volumes: tuple[str, ...] = ()  # pack's --volume HOST:TARGET[:ro|:rw]
    isolation: str = "namespace"  # or none: only inside the builder image itself
    # pack's flags (parsed in ocibuild.cnb.packflags):
    publish: bool = False  # IMAGE must be a registry reference
    previous_image: str | None = None  # launch layers reused from this image instead of IMAGE
    report_output_dir: Path | None = None  # report.toml: [image] tags, digest, manifest-size
    pull_policy: str | None = None  # always | never | if-not-present: builder and run image via the scratch layout
    cache_volume: str | None = None  # --cache format=volume: a named cache directory in the scratch dir
    pre_buildpacks: tuple[str, ...] = ()  # before every group (replaces project.toml's pre group)
    post_buildpacks: tuple[str, ...] = ()  # after every group (replaces project.toml's post group)
    sign_key: str | None = None  # a key path or env://NAME: the image is signed as the last step
    attest: bool = False  # SBOMs and provenance attached as OCI referrers (implied by sign_key)
    exec_env: str = "production"  # pack's --exec-env: CNB_EXEC_ENV, and what exec-env filters keep
    system_buildpacks: bool = True  # the builder's /cnb/system.toml pre/post buildpacks (pack: --disable-system-buildpacks)


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
    extended_build_image: str | None = None  # the ephemeral build image extensions made (collected after)


class _Phases:
    def __init__(self, say: Say):
        self.say = say
        self.times: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        self.say(f"===> {name.upper()}")
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times[name] = round(time.perf_counter() - start, 4)


def build(opts: BuildOptions, say: Say = lambda _m: None) -> BuildOutcome:
    from ocibuild.cnb.destinations import destinations
    from ocibuild.cnb.packflags import check_publish
    from ocibuild.ledger import Lease, Scratch
    from ocibuild.ledger.gc import release_and_collect

    app = Path(opts.path).absolute()
    if not app.is_dir():
        raise UsageError(f"app directory {opts.path} does not exist")
    check_publish(opts.image, opts.publish)
    if opts.builder is None:  # pack: --builder, else project.toml's builder, else the default
        opts = replace(opts, builder=_project(opts, app).builder)
    dest = destinations(opts.image, opts.tags, opts.default_registry)  # checked before anything is built
    volumes = _volumes(opts)
    scratch = Scratch.resolve(opts.scratch).ensure()
    lease = Lease(scratch).acquire()
    outcome: BuildOutcome | None = None
    try:
        outcome = _Build(opts, dest, app, scratch, lease, say, volumes).run()
    finally:
        report = release_and_collect(lease, scratch, registry_options=opts.registry_options)
        if report is not None and outcome is not None:
            outcome = replace(outcome, gc=report.to_dict())
    assert outcome is not None
    if opts.report_output_dir is not None:
        _write_report(opts, dest, outcome)
    return outcome


def _write_report(opts: BuildOptions, dest: Destinations, outcome: BuildOutcome) -> None:
    """pack's ``--report-output-dir``: the manifest's size read back from where it was written."""
    from ocibuild.cnb.packflags import report_tags, write_report
    from ocibuild.store.open import open_parsed

    written = open_parsed(dest.image, opts.registry_options).resolve(dest.image.identifier or "latest")
    if str(written.digest) != outcome.digest:
        raise UsageError(f"{opts.image} changed while the report was written ({written.digest})")
    write_report(Path(opts.report_output_dir), report_tags(dest), outcome.digest, written.size)


def _volumes(opts: BuildOptions) -> tuple[Any, ...]:
    from ocibuild.cnb.environment import Volume, check_choices

    check_choices(opts.network, opts.isolation, opts.uid, opts.gid)
    return tuple(Volume.parse(v) for v in opts.volumes)


@dataclass(frozen=True)
class _Builders:
    """The builder as given (never changed), the one the build uses, and where the run image is."""

    original: Builder
    composed: ComposeResult
    effective: Builder
    default_run: tuple[Store, str] | None  # the embedded builder's run image, in the scratch layout


class _Build:
    """One build's wiring; every step is a phase object or one helper below."""

    def __init__(self, opts: BuildOptions, dest: Destinations, app: Path, scratch: Scratch, lease: Lease,
                 say: Say, volumes: tuple[Any, ...]):
        self.opts, self.dest, self.app, self.scratch, self.lease, self.say = opts, dest, app, scratch, lease, say
        self.volumes = volumes
        self.phases = _Phases(say)
        self.extended_build_image: str | None = None
        self.scratch_store = scratch.open_layout()
        self.work = scratch.work_path / lease.id

    def run(self) -> BuildOutcome:
        from ocibuild.cnb.rootfs import remove_tree

        self.work.mkdir(parents=True)
        try:
            with contextlib.ExitStack() as cleanup:
                return self._run(cleanup)
        finally:
            remove_tree(self.work)

    def _run(self, cleanup: contextlib.ExitStack) -> BuildOutcome:
        from ocibuild.cnb.phase import BuildPhase, CachePhase, DetectPhase, ExportPhase, RestorePhase
        from ocibuild.cnb.phase.build import write_sboms
        from ocibuild.cnb.recorded import Recorded
        from ocibuild.cnb.runimage import with_build_os_release
        from ocibuild.cnb.system import PATH as SYSTEM_TOML
        from ocibuild.cnb.system import read_system_toml
        from ocibuild.store.open import open_parsed

        opts, phases = self.opts, self.phases
        project = _project(opts, self.app)
        builders = self._builders(project)
        rootfs = phases.run("extracting build image", lambda: self._rootfs(builders))
        env = self._environment(builders.effective, rootfs, project, cleanup)
        run_source, target = self._run_image(builders)
        os_release = rootfs.read_text("/etc/os-release") or rootfs.read_text("/usr/lib/os-release")
        target = with_build_os_release(target, os_release)
        order = _effective_order(builders.effective)
        if opts.system_buildpacks:
            order = read_system_toml(rootfs.read_text(SYSTEM_TOML)).around(order)
        detected = phases.run("detecting", DetectPhase(env, order, target, opts.exec_env,
                                                       _effective_order(builders.effective, extensions=True)).run)
        group_names = tuple(f"{e.id}@{e.version}" for e in detected.group)
        self.say("group: " + ", ".join(group_names))
        plan = detected.plan
        if detected.group_extensions:
            self.say("extensions: " + ", ".join(str(e) for e in detected.group_extensions))
            env, run_source, target, plan = self._extensions(builders, rootfs, env, detected, run_source, target)

        target_store = Recorded(open_parsed(self.dest.image, opts.registry_options, for_write=True), self.lease)
        previous = _previous(target_store, self.dest.image.identifier, opts)
        cache = _cache(opts, self.scratch)
        if not opts.clear_cache:
            phases.run("restoring", lambda: RestorePhase(env, cache, previous, opts.layers_dir).run(detected.group))
        built = phases.run("building", lambda: BuildPhase(env, target, opts.exec_env).run(detected.group, plan))

        export = ExportPhase(target_store, self.dest.image.identifier, run_source,
                             self._export_options(env, rootfs, project, target_store), previous)
        result = phases.run("exporting", export.run)
        _tag_other_repositories(self.dest, target_store, result, opts, self.lease)
        if cache is not None:
            phases.run("caching", lambda: CachePhase(cache, opts.layers_dir, env.uid, env.gid, self.work).run(env.layers))
        if opts.sbom_output_dir is not None:
            write_sboms(built, Path(opts.sbom_output_dir))
        if opts.attest or opts.sign_key is not None:
            phases.run("attesting", lambda: self._attest(target_store, result.descriptor, built, builders,
                                                         run_source, detected.group))
        sizes = {d.digest: d.size for d in (*result.manifest.layers, result.manifest.config)}
        composed = builders.composed
        return BuildOutcome(
            image=opts.image, digest=str(result.descriptor.digest), builder_digest=str(builders.original.digest),
            ephemeral_builder=str(composed.digest) if composed.ephemeral else None, group=group_names,
            uploaded=len(result.uploaded), uploaded_bytes=sum(sizes.get(d, 0) for d in result.uploaded),
            phases=dict(phases.times), gc=None, extended_build_image=self.extended_build_image,
        )

    def _attest(self, target: Any, image: Any, built: Any, builders: _Builders, run: RunImageSource,
                group: Any) -> None:
        """SBOMs and provenance as referrers of the image, then the signature (``ocibuild.attest``)."""
        from ocibuild.attest.build import attach_build_attestations, other_repositories, provenance_inputs

        inputs = provenance_inputs(self.opts.image, builders.original, builders.original.digest, builders.effective,
                                   group, run.store, run.identifier, run.name, self.app)
        attach_build_attestations(target, image, built, inputs, sign_key=self.opts.sign_key, lease=self.lease,
                                  say=self.say, also=other_repositories(self.dest, self.opts.registry_options,
                                                                        self.lease))

    # -- image extensions (Platform API 0.13) ----------------------------------------------------------------
    def _extensions(self, builders: _Builders, rootfs: RootFS, env: BuildEnvironment, detected: Any,
                    run_source: RunImageSource, target: Any) -> tuple[BuildEnvironment, RunImageSource, Any, Any]:
        """generate, then the run-image switch (run.Dockerfile ``FROM``) and the build-image extension
        (build.Dockerfile, run in the build environment, kept as an ephemeral build image)."""
        from ocibuild.cnb.phase import ExtendPhase, GeneratePhase
        from ocibuild.cnb.rootfs import ExtractedLayers

        current = run_source.read_as or run_source.name
        generated = self.phases.run("generating", lambda: GeneratePhase(
            env, target, self.work / "generated", current).run(detected))
        if generated.run_image is not None:
            self.say(f"run image switched by an extension: {generated.run_image}")
            known = {n for r in builders.effective.run_images for n in (r.image, *(r.mirrors or ()))}
            if generated.run_image not in known:  # the lifecycle warns too: rebase will need --force
                self.say(f"warning: {generated.run_image} is not a run image of the builder (run.toml)")
            run_source, target = self._switched_run_image(generated.run_image)
        if not generated.build_dockerfiles:
            return env, run_source, target, generated.plan
        if env.sandbox.mode == "direct":  # a RUN would change this machine, not an image
            raise UsageError("--isolation none cannot apply an extension's build.Dockerfile (its RUN would change "
                             "this machine); drop --isolation none")
        b = builders.effective
        extended = self.phases.run("extending", lambda: ExtendPhase(
            env, rootfs, b.config, self.work / "extend", b.name, self.say).run(generated))
        manifest, config = self._publish_extended(b, extended)
        stores = [self.scratch_store, builders.original.store]
        new_rootfs = ExtractedLayers(self.scratch.root).ensure(manifest, config, stores, self.lease, name=b.name)
        return self._prepare(new_rootfs, config), run_source, target, generated.plan

    def _switched_run_image(self, name: str) -> tuple[RunImageSource, Any]:
        from ocibuild.cnb.export import RunImageSource
        from ocibuild.cnb.runimage import platform_manifest, qualified, target_of

        store, ident = _open(name, self.opts)
        ident = platform_manifest(store, ident or "latest", self.opts.platform)
        full = qualified(name, self.opts.default_registry)
        return RunImageSource(store, ident, full, (), read_as=full), target_of(store, ident)

    def _publish_extended(self, builder: Builder, extended: Any) -> tuple[Any, Any]:
        """The extended build image into the scratch layout, untagged and ephemeral under the lease:
        ``ocibuild gc`` (and the collection after this build) removes it once the build is over."""
        import io

        from ocibuild.cnb.buildpack import LayerBlob
        from ocibuild.cnb.extend import ROLE_EXTENDED_BUILD_IMAGE
        from ocibuild.oci.manifest import Manifest

        store, lease = self.scratch_store, self.lease
        blobs = [LayerBlob.from_result(layer.result) for layer in extended.layers]
        docker = builder.is_docker
        descs = [b.descriptor(docker) for b in blobs]
        manifest = Manifest.build(extended.config.descriptor(), [*builder.manifest.layers, *descs],
                                  media_type=builder.manifest.media_type)
        for blob, layer in zip(blobs, descs):
            with blob.open() as stream:
                lease.put_blob(store, layer, stream, ephemeral=True)
        lease.put_blob(store, extended.config.descriptor(), io.BytesIO(extended.config.raw), ephemeral=True)
        desc = lease.put_manifest(store, manifest.descriptor(), manifest.raw, role=ROLE_EXTENDED_BUILD_IMAGE,
                                  ephemeral=True)
        self.say(f"extended build image {desc.digest.short()} ({len(descs)} layer(s) from extensions)")
        self.extended_build_image = str(desc.digest)
        return manifest, extended.config

    # -- the builder -----------------------------------------------------------------------------------
    def _builders(self, project: Project) -> _Builders:
        from ocibuild.cnb.builder import builder_from_parts, open_builder
        from ocibuild.cnb.compose import compose_builder
        from ocibuild.cnb.defaults import DEFAULT_BUILDER, ensure_default_builder
        from ocibuild.cnb.sources import requested_buildpacks

        opts, lease, scratch_store = self.opts, self.lease, self.scratch_store
        default_run = None
        if opts.builder in (None, DEFAULT_BUILDER):
            hook = lease.publish_hook(scratch_store, ROLE_DEFAULT_BUILDER)
            builder_id, run_tag = ensure_default_builder(scratch_store, hook)
            store: Store = scratch_store
            default_run = (scratch_store, run_tag)
        else:
            store, builder_id = _open(opts.builder, opts)
        original = self.phases.run("resolving builder", lambda: open_builder(
            store, builder_id or "latest", platform=opts.platform))
        digest = original.digest  # identity, captured before anything is composed
        extra, order = requested_buildpacks(opts, project, original)
        extensions, order_extensions = _requested_extensions(opts.extensions, original)
        composed = self.phases.run("composing builder", lambda: compose_builder(
            original, buildpacks=extra, order=order, env={**project.env, **opts.env},
            extensions=extensions, order_extensions=order_extensions,
            run_image=opts.run_image, scratch_store=scratch_store,
            before_publish=lease.publish_hook(scratch_store, ROLE_EPHEMERAL_BUILDER, ephemeral=True),
            ledger=lease.ledger, tag=None,
        ))
        assert original.digest == digest  # the caller's builder is never touched (pack#2255)
        if composed.ephemeral:
            self.say(f"ephemeral builder {composed.digest.short()} (from {original.name} {digest.short()})")
        _keep_build_image(original, scratch_store, lease)
        effective = builder_from_parts(original.name, composed.descriptor, composed.manifest, composed.config,
                                       store=store) if composed.ephemeral else original
        return _Builders(original, composed, effective, default_run)

    def _rootfs(self, builders: _Builders) -> RootFS:
        from ocibuild.cnb.rootfs import ExtractedLayers

        b = builders.effective
        stores = [self.scratch_store, builders.original.store]
        return ExtractedLayers(self.scratch.root).ensure(b.manifest, b.config, stores, self.lease, name=b.name)

    # -- the environment -------------------------------------------------------------------------------
    def _environment(self, builder: Builder, rootfs: RootFS, project: Project,
                     cleanup: contextlib.ExitStack) -> BuildEnvironment:
        from ocibuild.cnb.environment import check_in_builder
        from ocibuild.cnb.workspace import prepared as prepared_workspace
        from ocibuild.cnb.workspace import sync

        opts = self.opts
        uid = opts.uid if opts.uid is not None else builder.uid
        gid = opts.gid if opts.gid is not None else builder.gid
        if uid is None or gid is None:
            raise UsageError(f"builder {builder.name} is missing required env var CNB_USER_ID or CNB_GROUP_ID "
                             "(or pass --uid and --gid)")
        owner = (uid, gid) if _is_root() and opts.isolation != "none" else None
        include = project.includes if project.include or project.exclude else None
        platform, io = self.work / "platform", self.work / "io"
        (platform / "env").mkdir(parents=True)
        io.mkdir()
        env_vars = {**project.env, **opts.env}  # pack: --env overrides project.toml
        for key in sorted(env_vars):
            (platform / "env" / key).write_text(env_vars[key])
        if opts.isolation == "none":  # the lifecycle's own paths, as a CI job in the builder image has them
            check_in_builder(rootfs)
            layers, workspace = _unisolated_dirs(opts)
            sync(self.app, workspace, include)
        else:
            layers = self.work / "layers"
            layers.mkdir()
            workspace = self.phases.run("preparing workspace", lambda: cleanup.enter_context(
                prepared_workspace(self.app, self.scratch.root, self.work / "workspace", include, owner)))
        self._env_args = dict(uid=uid, gid=gid, layers=layers, workspace=workspace, platform=platform, io=io,
                              image_layers=opts.layers_dir, image_workspace=opts.workspace, volumes=self.volumes,
                              network=opts.network, isolation=opts.isolation)
        return self._prepare(rootfs, builder.config)

    def _prepare(self, rootfs: RootFS, config: Any) -> BuildEnvironment:
        """The build environment on ``rootfs`` (the builder's, or the extended build image's)."""
        from ocibuild.cnb.environment import prepare

        return prepare(rootfs=rootfs, config=config, **self._env_args)

    # -- the run image -----------------------------------------------------------------------------------
    def _run_image(self, builders: _Builders) -> tuple[RunImageSource, Any]:
        from ocibuild.cnb.export import RunImageSource
        from ocibuild.cnb.runimage import platform_manifest, qualified, run_image_record, target_of

        opts = self.opts
        if builders.default_run is not None and not opts.run_image:
            run_name = next((r.image for r in builders.effective.run_images), "")
            run_store, run_id = builders.default_run
            run_id = platform_manifest(run_store, run_id, opts.platform)
        else:
            run_name, run_store, run_id = self._readable_run_image(builders)
        target = target_of(run_store, run_id)
        if run_name:
            name, mirrors = run_image_record(builders.original, run_name, opts.default_registry)
            source = RunImageSource(run_store, run_id, name, mirrors,
                                    read_as=qualified(run_name, opts.default_registry))
        else:
            source = RunImageSource(run_store, run_id, run_id)
        return source, target

    def _readable_run_image(self, builders: _Builders) -> tuple[str, Store, str]:
        """``--run-image``, else the first readable of run.toml's image and mirrors, the app
        registry's first (``run_image_candidates``); the first one's error when none can be read."""
        from ocibuild.cnb.runimage import platform_manifest, run_image_candidates
        from ocibuild.errors import OCIBuildError

        opts = self.opts
        entries = builders.effective.run_images
        if opts.run_image:
            names: tuple[str, ...] = (opts.run_image,)
        elif entries:
            names = run_image_candidates(entries[0], getattr(self.dest.image, "registry", None), opts.default_registry)
        else:
            names = ()
        if not names:
            raise UsageError(f"builder {builders.original.name} names no run image: pass --run-image")
        first: OCIBuildError | None = None
        for name in names:
            try:
                store, ident = _open(name, opts)
                return name, store, platform_manifest(store, ident or "latest", opts.platform)
            except OCIBuildError as exc:
                first = first or exc
                if len(names) > 1:
                    self.say(f"run image {name} cannot be read ({exc}); trying the next")
        assert first is not None
        raise first

    def _export_options(self, env: BuildEnvironment, rootfs: RootFS, project: Project, target_store: Any) -> Any:
        from ocibuild.cnb.export import ExportOptions

        opts = self.opts
        return ExportOptions(
            launcher=rootfs.find("/cnb/lifecycle/launcher"), layers_dir=env.layers, app_dir=env.workspace,
            uid=env.uid, gid=env.gid, default_process=opts.default_process, creation_time=opts.creation_time,
            exec_env=opts.exec_env,
            tmp_dir=getattr(target_store, "tmp_dir", None) or self.work, extra_tags=self.dest.same_tags,
            project_metadata=project.metadata_label, image_layers_dir=opts.layers_dir,
            layer_memo_dir=self.scratch.cache_path / "layer-memo", image_app_dir=opts.workspace,
        )


# -- small steps -------------------------------------------------------------------------------------------
def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _unisolated_dirs(opts: BuildOptions) -> tuple[Path, Path]:
    layers, workspace = Path(opts.layers_dir), Path(opts.workspace)
    for path in (layers, workspace):
        if not path.is_dir():
            raise UsageError(f"--isolation none needs {path} (the builder image has it): not found")
    if any(layers.iterdir()):
        raise UsageError(f"--isolation none: {layers} is not empty")
    return layers, workspace


def _keep_build_image(builder: Builder, scratch_store: LayoutStore, lease: Lease) -> None:
    """The builder's manifest and config (never its layers) tagged in the scratch layout, so that its
    extracted layers stay while it is the builder of that name (``ocibuild gc`` keeps what a tagged
    image lists) and go when a newer builder of the name replaces the tag."""
    import io

    from ocibuild.ledger.scratch import layout_location

    if _same_layout(builder.store, scratch_store):
        return
    tag = BUILD_IMAGE_TAG_PREFIX + hashlib.sha256(builder.name.encode()).hexdigest()[:20]
    entries = {e.ref_name: e.digest for e in scratch_store.index_entries()}
    if entries.get(tag) == builder.digest:
        return
    source = getattr(builder.store, "path", None)
    location = layout_location(source) if source is not None else \
        f"{getattr(builder.store, 'registry')}/{getattr(builder.store, 'repository')}"
    for layer in builder.manifest.layers:
        lease.ledger.record_source(layer.digest, location)
    config = builder.manifest.config
    lease.put_blob(scratch_store, config, io.BytesIO(builder.config.raw), role="config")
    lease.put_manifest(scratch_store, builder.descriptor, builder.manifest.raw, role=ROLE_BUILD_IMAGE, tag=tag)


def _same_layout(store: Any, layout: LayoutStore) -> bool:
    import os

    path = getattr(store, "path", None)
    return store is layout or (path is not None and os.path.realpath(path) == os.path.realpath(layout.path))


def _open(text: str, opts: BuildOptions, *, for_write: bool = False) -> tuple[Store, str | None]:
    """A store for a name; ``ocibuild.local/...`` (the embedded images) opens in the scratch layout,
    and with ``--pull-policy`` images are read through their kept copy there."""
    from ocibuild.cnb.local import local_tag, open_image

    if opts.pull_policy and not for_write and local_tag(text) is None:
        from ocibuild.cnb.packflags import read_through

        kept = read_through(text, opts.pull_policy, default_registry=opts.default_registry,
                            options=opts.registry_options, scratch=opts.scratch, platform=opts.platform)
        if kept is not None:
            return kept
    return open_image(text, opts.default_registry, opts.registry_options, scratch=opts.scratch,
                      for_write=for_write)


def _tag_other_repositories(dest: Destinations, source: Any, result: Any, opts: BuildOptions, lease: Lease) -> None:
    """The image under ``-t`` tags in other repositories: blobs mounted across repositories (copied
    when the registry refuses), then the manifest."""
    from ocibuild.cnb.recorded import Recorded
    from ocibuild.store.open import open_parsed
    from ocibuild.transfer.copy import GraphCopier

    blobs = [result.manifest.config, *result.manifest.layers]
    for ref in dest.other_repositories:
        store = Recorded(open_parsed(ref, opts.registry_options, for_write=True), lease)
        GraphCopier(source, store).copy_blobs(blobs)
        store.put_manifest(result.descriptor, result.manifest.raw, tag=ref.tag)


def _project(opts: BuildOptions, app: Path) -> Project:
    from ocibuild.cnb.project import Project, load_project

    path = opts.descriptor if opts.descriptor is not None else app / "project.toml"
    if opts.descriptor is None and not path.is_file():
        return Project()
    return load_project(Path(path), opts.exec_env)


def _effective_order(b: Builder, *, extensions: bool = False) -> Order:
    """The builder's order (or order-extensions) with every version resolved (a bare id must name
    one version on the builder)."""
    from ocibuild.cnb.descriptor import Group, GroupElement, Order

    layers = b.extension_layers if extensions else b.buildpack_layers
    kind = "extension" if extensions else "buildpack"

    def resolved(el: GroupElement) -> GroupElement:
        if el.version:
            return el
        versions = sorted((layers.get(el.id) or {}).keys())
        if len(versions) != 1:
            raise BuildpackNotFound(f"{kind} {el.id} is not on the builder (or is ambiguous)", buildpack=el.id)
        return replace(el, version=versions[0])

    order = b.order_extensions if extensions else b.order
    return Order(tuple(Group(tuple(resolved(el) for el in group)) for group in order))


def _requested_extensions(texts: tuple[str, ...], builder: Builder) -> tuple[list[Any], Order | None]:
    """``--extension``: extensions to add (paths) and the one order-extensions group they make."""
    import os

    from ocibuild.cnb.buildpack import load_extensions
    from ocibuild.cnb.descriptor import Group, GroupElement, Order

    if not texts:
        return [], None
    added, group = [], []
    for text in texts:
        if os.path.exists(text.removeprefix("file://")):
            ext = load_extensions(text)[0]
            added.append(ext)
            group.append(GroupElement(ext.id, ext.version, extension=True))
            continue
        ref = GroupElement.parse(text)
        versions = sorted((builder.extension_layers.get(ref.id) or {}).keys())
        if ref.version and ref.version not in versions or not versions or (not ref.version and len(versions) > 1):
            raise UsageError(f"--extension {text}: not a directory or archive, and not an extension on the builder"
                             f" ({', '.join(versions) or 'it has none of that id'})")
        group.append(GroupElement(ref.id, ref.version or versions[0], extension=True))
    return added, Order((Group(tuple(group)),))



def _previous(store: Store, identifier: str | None, opts: BuildOptions) -> dict[str, Any] | None:
    """The previous image's metadata: IMAGE's, or ``--previous-image``'s (pack). Launch layers of
    another image are brought into IMAGE's store (mounted or copied) so export can reuse them."""
    from ocibuild.cnb.export import previous_metadata
    from ocibuild.errors import NotFound

    if opts.previous_image:
        prev_store, prev_id = _open(opts.previous_image, opts)
        try:
            md = previous_metadata(prev_store, prev_id or "latest")
        except NotFound:
            return None
        if md is not None:
            from ocibuild.transfer.copy import GraphCopier

            descs = [layer["_descriptor"] for bp in md.get("buildpacks") or []
                     for layer in (bp.get("layers") or {}).values() if layer.get("launch") and "_descriptor" in layer]
            GraphCopier(prev_store, store).copy_blobs(descs)
        return md
    if not identifier:
        return None
    try:
        return previous_metadata(store, identifier)
    except NotFound:
        return None


def _cache(opts: BuildOptions, scratch: Scratch) -> LayerCache | None:
    from ocibuild.cnb.cache import DirCache, ImageCache

    if opts.cache_image:
        store, ident = _open(opts.cache_image, opts, for_write=True)
        return ImageCache(store, ident or "latest")
    if opts.cache_dir is not None:
        return DirCache(opts.cache_dir)
    if opts.cache_volume is not None:
        from ocibuild.cnb.packflags import volume_path

        return DirCache(volume_path(scratch.cache_path, opts.cache_volume, opts.image))
    key = hashlib.sha256(opts.image.encode()).hexdigest()[:16]
    return DirCache(scratch.cache_path / key)
