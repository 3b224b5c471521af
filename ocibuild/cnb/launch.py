"""What bin/build leaves in its layers directory: ``<layer>.toml``, launch.toml, build.toml, store.toml, SBOMs.

Each reader takes the buildpack's API (format differences: API < 0.9 process ``command`` is one
string with ``direct`` defaulting to false; API ≥ 0.9 it is an array and ``direct`` is refused) and
raises ``BuildError`` naming the buildpack for what the lifecycle refuses.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ocibuild.cnb.descriptor import ApiVersion
from ocibuild.cnb.errors import BuildError

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_PROCESS_TYPE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Files in a buildpack's layers dir that are not layer metadata.
RESERVED_TOML = frozenset({"launch.toml", "build.toml", "store.toml"})
SBOM_EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {
        "cdx.json": "application/vnd.cyclonedx+json",
        "spdx.json": "application/spdx+json",
        "syft.json": "application/vnd.syft+json",
    }
)


def _load(path: Path, buildpack: str) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return None
    except tomllib.TOMLDecodeError as err:
        raise BuildError(f"buildpack {buildpack}: invalid {path.name}: {err}", buildpack=buildpack) from None


@dataclass(frozen=True)
class LayerMetadata:
    """A ``<layer>.toml``: ``[types]`` flags (unset = false) and ``[metadata]``."""

    launch: bool = False
    build: bool = False
    cache: bool = False
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def any_type(self) -> bool:
        return self.launch or self.build or self.cache


def read_layer_metadata(path: Path, buildpack: str) -> LayerMetadata:
    data = _load(path, buildpack) or {}
    top = sorted(k for k in ("launch", "build", "cache") if k in data)
    if top:
        raise BuildError(
            f"buildpack {buildpack}: {path.name}: the launch, cache and build flags should be in the "
            f"types table (found top-level {', '.join(top)})",
            buildpack=buildpack,
        )
    types = data.get("types") or {}
    metadata = data.get("metadata") or {}
    if not isinstance(types, dict) or not all(isinstance(types.get(k, False), bool) for k in ("launch", "build", "cache")):
        raise BuildError(f"buildpack {buildpack}: {path.name}: [types] flags must be booleans", buildpack=buildpack)
    if not isinstance(metadata, dict):
        raise BuildError(f"buildpack {buildpack}: {path.name}: metadata must be a table", buildpack=buildpack)
    return LayerMetadata(
        launch=types.get("launch", False),
        build=types.get("build", False),
        cache=types.get("cache", False),
        metadata=MappingProxyType(metadata),
    )


@dataclass(frozen=True)
class Process:
    """A process type as the exporter records it (``io.buildpacks.build.metadata`` / metadata.toml)."""

    type: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    direct: bool = True
    default: bool = False
    working_dir: str = ""
    buildpack_id: str = ""
    exec_env: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "command": list(self.command),
            "args": list(self.args),
            "direct": self.direct,
            "buildpackID": self.buildpack_id,
        }
        if self.working_dir:
            out["working-dir"] = self.working_dir
        if self.exec_env:
            out["exec-env"] = list(self.exec_env)
        return out


@dataclass(frozen=True)
class Label:
    key: str
    value: str


@dataclass(frozen=True)
class Slice:
    paths: tuple[str, ...]


@dataclass(frozen=True)
class LaunchTOML:
    processes: tuple[Process, ...] = ()
    labels: tuple[Label, ...] = ()
    slices: tuple[Slice, ...] = ()


def _strings(value: Any, what: str, buildpack: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"buildpack {buildpack}: launch.toml: {what} must be an array of strings", buildpack=buildpack)
    return tuple(value)


def _tables(data: Mapping[str, Any], key: str, buildpack: str, fname: str) -> list[Mapping[str, Any]]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BuildError(f"buildpack {buildpack}: {fname}: [[{key}]] must be an array of tables", buildpack=buildpack)
    return value


def parse_process(table: Mapping[str, Any], api: ApiVersion, buildpack: str) -> Process:
    def fail(msg: str) -> BuildError:
        return BuildError(f"buildpack {buildpack}: launch.toml: {msg}", buildpack=buildpack)

    ptype = table.get("type")
    if not isinstance(ptype, str) or not _PROCESS_TYPE_RE.match(ptype):
        raise fail(f"process type {ptype!r} must be letters, digits, '.', '_' or '-'")
    raw = table.get("command")
    if api < ApiVersion(0, 9):
        if not isinstance(raw, str):
            raise fail(f"process {ptype}: command must be a string for buildpack API {api}")
        command: tuple[str, ...] = (raw,) if raw else ()
        direct = table.get("direct", False)
        if not isinstance(direct, bool):
            raise fail(f"process {ptype}: direct must be true or false")
    else:
        if "direct" in table:
            raise fail("process.direct is not supported on this buildpack version")
        command = _strings(raw, f"process {ptype} command", buildpack)
        direct = True
    if not command:
        raise fail(f"process {ptype}: command is required")
    default = table.get("default", False)
    working_dir = table.get("working-dir", "")
    if not isinstance(default, bool) or not isinstance(working_dir, str):
        raise fail(f"process {ptype}: default must be a boolean and working-dir a string")
    if api < ApiVersion(0, 8):
        working_dir = ""  # unsupported before 0.8: the lifecycle warns and ignores it
    return Process(
        type=ptype,
        command=command,
        args=_strings(table.get("args"), f"process {ptype} args", buildpack),
        direct=direct,
        default=default,
        working_dir=working_dir,
        buildpack_id=buildpack,
        exec_env=_strings(table.get("exec-env"), f"process {ptype} exec-env", buildpack),
    )


def read_launch_toml(path: Path, api: ApiVersion, buildpack: str) -> LaunchTOML:
    data = _load(path, buildpack)
    if data is None:
        return LaunchTOML()
    processes = tuple(parse_process(t, api, buildpack) for t in _tables(data, "processes", buildpack, "launch.toml"))
    if sum(p.default for p in processes) > 1:
        raise BuildError(
            f"buildpack {buildpack}: launch.toml: multiple default process types aren't allowed", buildpack=buildpack
        )
    labels = []
    for t in _tables(data, "labels", buildpack, "launch.toml"):
        if not isinstance(t.get("key"), str) or not isinstance(t.get("value", ""), str) or not t["key"]:
            raise BuildError(f"buildpack {buildpack}: launch.toml: labels need a string key and value", buildpack=buildpack)
        labels.append(Label(t["key"], t.get("value", "")))
    slices = tuple(
        Slice(_strings(t.get("paths"), "slices.paths", buildpack)) for t in _tables(data, "slices", buildpack, "launch.toml")
    )
    return LaunchTOML(processes, tuple(labels), slices)


def read_build_toml_unmet(path: Path, buildpack: str, planned: set[str]) -> tuple[str, ...]:
    """The ``[[unmet]]`` names of build.toml; each must name an entry of the buildpack's plan."""
    data = _load(path, buildpack) or {}
    out = []
    for t in _tables(data, "unmet", buildpack, "build.toml"):
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise BuildError(f"buildpack {buildpack}: build.toml: unmet.name is required", buildpack=buildpack)
        if name not in planned:
            raise BuildError(
                f"buildpack {buildpack}: build.toml: unmet.name '{name}' must match a requested dependency",
                buildpack=buildpack,
            )
        out.append(name)
    return tuple(out)


def read_store_toml(path: Path, buildpack: str) -> Mapping[str, Any] | None:
    """``store.toml`` ``[metadata]`` (persisted across builds), or None when absent."""
    data = _load(path, buildpack)
    if data is None:
        return None
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BuildError(f"buildpack {buildpack}: store.toml: metadata must be a table", buildpack=buildpack)
    return MappingProxyType(metadata)


@dataclass(frozen=True)
class SBOMFile:
    """An SBOM a buildpack wrote: ``launch``/``build`` (buildpack level) or for one layer and type."""

    path: Path
    buildpack_id: str
    layer_type: str  # "launch" | "build" | "cache"
    layer_name: str  # "" for buildpack-level SBOMs
    extension: str

    @property
    def media_type(self) -> str:
        return SBOM_EXTENSIONS[self.extension]


def collect_sbom_files(
    layers_dir: Path, buildpack: str, layers: Mapping[str, LayerMetadata], sbom_formats: tuple[str, ...]
) -> tuple[SBOMFile, ...]:
    """``launch.sbom.<ext>``, ``build.sbom.<ext>`` and ``<layer>.sbom.<ext>`` files, validated."""
    out = []
    for path in sorted(layers_dir.glob("*.sbom.*")):
        if not path.is_file():
            continue
        stem, _, ext = path.name.partition(".sbom.")
        if ext not in SBOM_EXTENSIONS:
            raise BuildError(f"buildpack {buildpack}: unsupported SBOM format {path.name}", buildpack=buildpack)
        media = SBOM_EXTENSIONS[ext]
        if sbom_formats and media not in sbom_formats:
            raise BuildError(
                f"buildpack {buildpack}: SBOM {path.name} is {media}, not declared in buildpack.toml sbom-formats",
                buildpack=buildpack,
            )
        if stem in ("launch", "build"):
            out.append(SBOMFile(path, buildpack, stem, "", ext))
            continue
        meta = layers.get(stem)
        if meta is None:
            continue  # an SBOM for a layer that does not exist: the lifecycle drops it
        for kind in ("launch", "build", "cache"):
            if getattr(meta, kind):
                out.append(SBOMFile(path, buildpack, kind, stem, ext))
    return tuple(out)
