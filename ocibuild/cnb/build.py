"""Build: run each buildpack's bin/build in group order and collect what the exporter needs.

Per buildpack (lifecycle buildpack/build.go, phase/builder.go): ``<layers>/<escaped id>/`` and a
bp-plan with only the entries it provides; ``bin/build <layers>/<esc-id> <platform> <bp-plan>``
(cwd = app dir, CNB_* variables per API); then every ``<layer>.toml`` is read (flags outside
``[types]`` refused; no type true → the directory becomes ``<layer>.ignore``), build layers' env
dirs and ``bin/``, ``lib/``… apply to the buildpacks that follow, and launch.toml, build.toml,
store.toml and SBOM files are collected. Paths handed to buildpacks are as the sandbox shows them
(``/layers``, ``/workspace`` in the image); files are read through the host paths.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TextIO

from ocibuild.cnb.descriptor import BuildpackDescriptor, BuildpackStore, GroupElement, Target, escape_id
from ocibuild.cnb.env import BuildEnv, EnvOp, LaunchEnv, build_layer_ops, launch_layer_ops
from ocibuild.cnb.errors import BuildpackError
from ocibuild.cnb.execenv import DEFAULT as DEFAULT_EXEC_ENV
from ocibuild.cnb.execenv import applies
from ocibuild.cnb.launch import (
    RESERVED_TOML,
    Label,
    LayerMetadata,
    Process,
    SBOMFile,
    Slice,
    collect_sbom_files,
    read_build_toml_unmet,
    read_launch_toml,
    read_layer_metadata,
    read_store_toml,
)
from ocibuild.cnb.plan import Plan, Require, write_bp_plan
from ocibuild.cnb.sandbox import DIRECT, Owner, Sandbox, exit_reason, give, phase_dir


@dataclass(frozen=True)
class Layer:
    """One layer a buildpack declared. ``path`` is on the host, ``visible_path`` as in the image."""

    name: str
    path: Path
    visible_path: str
    metadata: LayerMetadata

    @property
    def launch(self) -> bool:
        return self.metadata.launch

    @property
    def build(self) -> bool:
        return self.metadata.build

    @property
    def cache(self) -> bool:
        return self.metadata.cache


@dataclass(frozen=True)
class BuildpackResult:
    element: GroupElement
    layers_dir: Path
    layers: tuple[Layer, ...]
    processes: tuple[Process, ...]
    labels: tuple[Label, ...]
    slices: tuple[Slice, ...]
    met_requires: tuple[str, ...]
    store: Mapping[str, Any] | None
    sbom_files: tuple[SBOMFile, ...]

    @property
    def launch_layers(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.launch)


@dataclass(frozen=True)
class BuildResult:
    buildpacks: tuple[BuildpackResult, ...]
    processes: tuple[Process, ...]  # merged, sorted by type
    default_process: str | None
    labels: tuple[Label, ...]
    slices: tuple[Slice, ...]
    launch_env: LaunchEnv
    unmet_plan: Plan  # entries no buildpack met
    build_env: Mapping[str, str]

    def process(self, ptype: str) -> Process | None:
        return next((p for p in self.processes if p.type == ptype), None)


def build(
    group: tuple[GroupElement, ...],
    plan: Plan,
    layers_dir: Path | str,
    app_dir: Path | str,
    platform_dir: Path | str,
    *,
    buildpacks_dir: Path | str | BuildpackStore,
    env: Mapping[str, str] | None = None,
    target: Target | None = None,
    build_config_dir: Path | str | None = None,
    exec_env: str = "production",
    sandbox: Sandbox | None = None,
    output: TextIO | None = None,
    tmp_dir: Path | None = None,
    owner: Owner | None = None,
) -> BuildResult:
    """Run the detected ``group``'s bin/build in order; see the module docstring.

    ``output`` receives the buildpacks' stdout and stderr (default: this process's stderr).
    ``tmp_dir`` holds each buildpack's plan (a directory the sandbox shows; default: the system's)
    and ``owner`` is who what ocibuild creates for buildpacks belongs to (the build user, as root).
    Raises ``BuildpackError`` (exit 51) when a bin/build fails and ``BuildError`` (52) for outputs
    the lifecycle refuses; both name the buildpack.
    """
    store = buildpacks_dir if isinstance(buildpacks_dir, BuildpackStore) else BuildpackStore(buildpacks_dir)
    runner = _Runner(sandbox or DIRECT, Path(platform_dir).absolute(), Path(app_dir).absolute(),
                     Path(build_config_dir).absolute() if build_config_dir is not None else None,
                     target or Target(), exec_env, output if output is not None else sys.stderr, tmp_dir, owner)
    acc = _Accumulated(BuildEnv(env), plan, exec_env)
    layers_dir = Path(layers_dir).absolute()
    for element in group:
        desc = store.lookup(element.id, element.version)
        bp_dir = layers_dir / escape_id(desc.id)
        bp_dir.mkdir(parents=True, exist_ok=True)
        give(bp_dir, owner)
        bp_plan = acc.remaining.find(desc.id)
        runner.run(desc, bp_dir, bp_plan, acc.build_env)
        acc.add(element, desc, bp_dir, bp_plan, runner.sandbox)
    return acc.result()


class _Runner:
    """One ``bin/build`` in the sandbox, with its plan, environment and arguments per Buildpack API."""

    def __init__(self, sandbox: Sandbox, platform_dir: Path, app_dir: Path, config_dir: Path | None,
                 target: Target, exec_env: str, output: TextIO, tmp_dir: Path | None, owner: Owner | None):
        self.sandbox, self.platform_dir, self.app_dir, self.config_dir = sandbox, platform_dir, app_dir, config_dir
        self.target, self.exec_env, self.output, self.tmp_dir, self.owner = target, exec_env, output, tmp_dir, owner

    def run(self, desc: BuildpackDescriptor, bp_dir: Path, bp_plan: tuple[Require, ...], build_env: BuildEnv) -> None:
        sb, bp, api = self.sandbox, desc.id, desc.api_version
        with phase_dir(f"ocibuild-{escape_id(bp)}-", self.tmp_dir, self.owner) as tmp:
            plan_path = tmp / escape_id(bp) / "plan.toml"
            plan_path.parent.mkdir()
            give(plan_path.parent, self.owner)
            write_bp_plan(plan_path, bp_plan)
            give(plan_path, self.owner)
            run_env = build_env.with_overrides(None if desc.clear_env else self.platform_dir, self.config_dir)
            run_env["CNB_BUILDPACK_DIR"] = sb.visible(desc.path)
            if api.at_least("0.8"):
                run_env["CNB_PLATFORM_DIR"] = sb.visible(self.platform_dir)
                run_env["CNB_BP_PLAN_PATH"] = sb.visible(plan_path)
                run_env["CNB_LAYERS_DIR"] = sb.visible(bp_dir)
            if api.at_least("0.10"):
                run_env.update(self.target.env())
            if api.at_least("0.12"):
                run_env["CNB_EXEC_ENV"] = self.exec_env
            argv = [f"{sb.visible(desc.path)}/bin/build", sb.visible(bp_dir), sb.visible(self.platform_dir),
                    sb.visible(plan_path)]
            try:
                proc = sb.run(argv, cwd=sb.visible(self.app_dir), env=run_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
            except OSError as err:
                raise BuildpackError(f"buildpack {bp}@{desc.version}: cannot run bin/build: {err}", buildpack=bp) from None
        self.output.write(proc.stdout.decode("utf-8", "replace"))
        self.output.flush()
        if proc.returncode != 0:
            raise BuildpackError(f"buildpack {bp}@{desc.version}: bin/build failed ({exit_reason(proc.returncode)})",
                                 buildpack=bp)


class _Accumulated:
    """What the buildpacks built so far: the build env later ones see, the plan left, the results."""

    def __init__(self, build_env: BuildEnv, plan: Plan, exec_env: str = DEFAULT_EXEC_ENV):
        self.build_env, self.remaining, self.exec_env = build_env, plan, exec_env
        self.results: list[BuildpackResult] = []
        self.processes: dict[str, Process] = {}
        self.default_type: str | None = None
        self.labels: dict[str, Label] = {}
        self.slices: list[Slice] = []
        self.launch_ops: list[EnvOp] = []

    def add(self, element: GroupElement, desc: BuildpackDescriptor, bp_dir: Path, bp_plan: tuple[Require, ...],
            sb: Sandbox) -> None:
        """Read back what one bin/build left (lifecycle rules) and fold it in."""
        bp, api = desc.id, desc.api_version
        layers = _process_layers(bp_dir, bp, sb)
        for layer in layers:
            if layer.build and layer.path.is_dir():
                self.build_env.apply(build_layer_ops(layer.path, layer.visible_path))
            if layer.launch and layer.path.is_dir():
                self.launch_ops.extend(launch_layer_ops(layer.path, layer.visible_path))
        unmet = set(read_build_toml_unmet(bp_dir / "build.toml", bp, {r.name for r in bp_plan}))
        met = tuple(r.name for r in bp_plan if r.name not in unmet)
        self.remaining = self.remaining.filter(frozenset(met))
        sbom = collect_sbom_files(bp_dir, bp, {layer.name: layer.metadata for layer in layers}, desc.sbom_formats)
        launch = read_launch_toml(bp_dir / "launch.toml", api, bp)
        processes = tuple(p for p in launch.processes if applies(p.exec_env, self.exec_env))  # others not exported
        for proc in processes:
            if proc.default:
                self.default_type = proc.type
            elif proc.type == self.default_type:
                self.default_type = None  # a non-default redefinition drops the default (lifecycle warns)
            self.processes[proc.type] = proc
        for label in launch.labels:
            self.labels.pop(label.key, None)
            self.labels[label.key] = label
        self.slices.extend(launch.slices)
        self.results.append(BuildpackResult(
            element=element, layers_dir=bp_dir, layers=layers, processes=processes, labels=launch.labels,
            slices=launch.slices, met_requires=met, store=read_store_toml(bp_dir / "store.toml", bp),
            sbom_files=sbom,
        ))

    def result(self) -> BuildResult:
        return BuildResult(
            buildpacks=tuple(self.results),
            processes=tuple(self.processes[k] for k in sorted(self.processes)),
            default_process=self.default_type,
            labels=tuple(self.labels.values()),
            slices=tuple(self.slices),
            launch_env=LaunchEnv(tuple(self.launch_ops)),
            unmet_plan=self.remaining,
            build_env=dict(self.build_env.vars),
        )


def _process_layers(bp_dir: Path, bp: str, sb: Sandbox) -> tuple[Layer, ...]:
    """Read every ``<layer>.toml``; rename type-less layers to ``<layer>.ignore`` (lifecycle rules)."""
    layers = []
    for toml_path in sorted(bp_dir.glob("*.toml")):
        if toml_path.name in RESERVED_TOML or not toml_path.is_file():
            continue
        name = toml_path.name[: -len(".toml")]
        meta = read_layer_metadata(toml_path, bp)
        path = bp_dir / name
        if not meta.any_type:
            if path.exists():
                ignored = bp_dir / f"{name}.ignore"
                if ignored.exists():
                    shutil.rmtree(ignored)
                path.rename(ignored)
            continue
        layers.append(Layer(name, path, sb.visible(path), meta))
    return tuple(layers)
