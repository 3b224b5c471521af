"""The extend phase: the build.Dockerfiles applied to the build image, before any buildpack runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ocibuild.cnb.environment import BuildEnvironment
from ocibuild.cnb.extend import ExtendedImage, Extender
from ocibuild.cnb.generate import GenerateResult
from ocibuild.cnb.rootfs import RootFS
from ocibuild.oci.manifest import ImageConfig


@dataclass(frozen=True)
class ExtendPhase:
    environment: BuildEnvironment
    rootfs: RootFS
    config: ImageConfig
    work: Path
    base_image: str  # the build image's name (``${base_image}``)
    say: Callable[[str], None] = lambda _m: None

    def run(self, generated: GenerateResult) -> ExtendedImage:
        env = self.environment
        extender = Extender(self.rootfs, self.config, env.sandbox, self.work, self.base_image, env.uid, env.gid,
                            say=self.say)
        return extender.apply(generated.build_dockerfiles)
