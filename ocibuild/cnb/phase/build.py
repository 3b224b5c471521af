"""The build phase: each detected buildpack's ``bin/build`` in the build environment, in group order."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ocibuild.cnb.build import BuildResult, build
from ocibuild.cnb.descriptor import GroupElement, Target, escape_id
from ocibuild.cnb.environment import BuildEnvironment
from ocibuild.cnb.execenv import DEFAULT as DEFAULT_EXEC_ENV
from ocibuild.cnb.plan import Plan


@dataclass(frozen=True)
class BuildPhase:
    environment: BuildEnvironment
    target: Target
    exec_env: str = DEFAULT_EXEC_ENV  # CNB_EXEC_ENV; processes for other environments are not exported

    def run(self, group: tuple[GroupElement, ...], plan: Plan) -> BuildResult:
        env = self.environment
        return build(group, plan, env.layers, env.workspace, env.platform, buildpacks_dir=env.buildpacks,
                     env=env.image_env, target=self.target, build_config_dir=env.build_config, exec_env=self.exec_env,
                     sandbox=env.sandbox, tmp_dir=env.io, owner=env.owner)


def write_sboms(built: BuildResult, out: Path) -> None:
    """pack's ``--sbom-output-dir``: ``{launch,build}/<bp>/[<layer>/]sbom.<ext>``, as the lifecycle lays them out."""
    for bp in built.buildpacks:
        for sbom in bp.sbom_files:
            if sbom.layer_type not in ("launch", "build"):
                continue
            dest = out / sbom.layer_type / escape_id(sbom.buildpack_id)
            if sbom.layer_name:
                dest = dest / sbom.layer_name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sbom.path, dest / f"sbom.{sbom.extension}")
