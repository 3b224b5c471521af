"""The build's phases, as the lifecycle's ``phase/`` package has them: one module and one typed object
per phase, with explicit inputs and outputs. Every phase that runs buildpack code is handed the one
``BuildEnvironment`` (``cnb.environment``); ``cnb.pipeline`` only wires them together."""

from ocibuild.cnb.phase.build import BuildPhase
from ocibuild.cnb.phase.cache import CachePhase
from ocibuild.cnb.phase.detect import DetectPhase
from ocibuild.cnb.phase.export import ExportPhase
from ocibuild.cnb.phase.extend import ExtendPhase
from ocibuild.cnb.phase.generate import GeneratePhase
from ocibuild.cnb.phase.restore import RestorePhase

__all__ = ["BuildPhase", "CachePhase", "DetectPhase", "ExportPhase", "ExtendPhase", "GeneratePhase", "RestorePhase"]
