"""The export phase: the layers directory and the run image become the app image in the target store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ocibuild.cnb.export import ExportOptions, ExportResult, RunImageSource, export
from ocibuild.store.base import Store


@dataclass(frozen=True)
class ExportPhase:
    target: Store  # a store that records every blob in the ledger before it is visible (cnb.recorded)
    tag: str | None
    run_image: RunImageSource
    options: ExportOptions
    previous: Mapping[str, Any] | None = None  # the previous image's lifecycle metadata (layer reuse)

    def run(self, progress: Callable[[str], None] | None = None) -> ExportResult:
        return export(self.target, self.tag, self.run_image, self.options, previous=self.previous,
                      progress=progress)
