"""The generate phase: each detected extension's generate, its Dockerfiles read and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocibuild.cnb.descriptor import Target
from ocibuild.cnb.detect import DetectResult
from ocibuild.cnb.environment import BuildEnvironment
from ocibuild.cnb.generate import GenerateResult, generate


@dataclass(frozen=True)
class GeneratePhase:
    environment: BuildEnvironment
    target: Target
    out_dir: Path  # where each extension's output is copied (``<out_dir>/<extension id>/``)
    run_image: str  # the run image before any run.Dockerfile switches it

    def run(self, detected: DetectResult) -> GenerateResult:
        env = self.environment
        assert env.extensions is not None
        return generate(detected.group_extensions, detected.plan, env.extensions, self.out_dir, env.workspace,
                        env.platform, run_image=self.run_image, env=env.image_env, target=self.target,
                        build_config_dir=env.build_config, sandbox=env.sandbox, tmp_dir=env.io, owner=env.owner)
