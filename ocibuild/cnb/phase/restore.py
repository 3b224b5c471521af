"""The restore phase: cached layers and the previous image's launch-layer metadata back in ``<layers>``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ocibuild.cnb.cache import LayerCache, Restored, restore
from ocibuild.cnb.descriptor import GroupElement
from ocibuild.cnb.environment import BuildEnvironment, chown_tree


@dataclass(frozen=True)
class RestorePhase:
    environment: BuildEnvironment
    cache: LayerCache | None
    previous: Mapping[str, Any] | None  # io.buildpacks.lifecycle.metadata of the previous image
    image_layers_dir: str = "/layers"

    def run(self, group: tuple[GroupElement, ...]) -> Restored:
        env = self.environment
        restored = restore(self.cache, env.layers, list(group), previous=self.previous,
                           image_layers_dir=self.image_layers_dir)
        if env.owns_files:  # the lifecycle's restorer runs as the build user: what it writes is that user's
            chown_tree(env.layers, env.uid, env.gid)
        return restored
