"""The cache phase: the cache layers the build left, saved for the next build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocibuild.cnb.cache import LayerCache


@dataclass(frozen=True)
class CachePhase:
    cache: LayerCache
    image_layers_dir: str
    uid: int
    gid: int
    tmp_dir: Path

    def run(self, layers: Path) -> None:
        self.cache.save(layers, image_layers_dir=self.image_layers_dir, uid=self.uid, gid=self.gid,
                        tmp_dir=self.tmp_dir)
