"""Build and launch environments as the lifecycle computes them (env/env.go, env/build.go).

Env files are read verbatim (no newline stripping: ``printf``, not ``echo``). A file name up to its
first ``.`` is the variable; the suffix is the action: ``.override``, ``.default``, ``.prepend``,
``.append`` (joined with ``<VAR>.delim`` when present, else nothing), unsuffixed = override
(API ≥ 0.5); unknown suffixes and ``.delim`` files are ignored. Layer ``bin/``, ``lib/``, … are
prepended to the path variables with ``:``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

#: Variables of the caller's environment that reach buildpacks (lifecycle BuildEnvIncludelist + path vars).
INCLUDE_LIST: tuple[str, ...] = (
    "CNB_STACK_ID",
    "HOSTNAME",
    "HOME",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
)
#: Layer sub-directories prepended to path variables during build (POSIXBuildEnv).
BUILD_ROOT_DIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bin", ("PATH",)),
    ("lib", ("LD_LIBRARY_PATH", "LIBRARY_PATH")),
    ("include", ("CPATH",)),
    ("pkgconfig", ("PKG_CONFIG_PATH",)),
)
#: ... and at launch (POSIXLaunchEnv).
LAUNCH_ROOT_DIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bin", ("PATH",)),
    ("lib", ("LD_LIBRARY_PATH",)),
)
PATH_VARS = frozenset(v for _, names in BUILD_ROOT_DIRS for v in names)
ACTIONS = frozenset({"override", "default", "prepend", "append"})


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def env_files(directory: Path) -> Iterator[tuple[str, str, Path]]:
    """``(file name, content, path)`` of each regular file (or symlink to one) in name order."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        path = Path(entry.path)
        if path.is_dir():  # follows symlinks, as the lifecycle does
            continue
        yield entry.name, _read(path), path


@dataclass(frozen=True)
class EnvOp:
    """One modification: ``action`` in override/default/prepend/append; ``delim`` joins for the last two."""

    name: str
    action: str
    value: str
    delim: str = ""
    process: str | None = None

    def apply(self, env: dict[str, str]) -> None:
        current = env.get(self.name, "")
        if self.action == "override":
            env[self.name] = self.value
        elif self.action == "default":
            if not current:
                env[self.name] = self.value
        elif self.action == "prepend":
            env[self.name] = self.value + (self.delim + current if current else "")
        elif self.action == "append":
            env[self.name] = (current + self.delim if current else "") + self.value


def env_dir_ops(directory: Path, process: str | None = None) -> list[EnvOp]:
    """The operations an env directory (``env/``, ``env.build/``, ``env.launch/<proc>/``) stands for."""
    ops = []
    for fname, value, _ in env_files(directory):
        name, _, action = fname.partition(".")
        action = action or "override"
        if action not in ACTIONS or not name:
            continue
        delim = ""
        if action in ("prepend", "append"):
            delim_file = directory / f"{name}.delim"
            if delim_file.is_file():
                delim = _read(delim_file)
        ops.append(EnvOp(name, action, value, delim, process))
    return ops


def root_dir_ops(
    layer_dir: Path, visible_dir: str, roots: Iterable[tuple[str, tuple[str, ...]]], process: str | None = None
) -> list[EnvOp]:
    """Prepend ``<visible_dir>/bin`` etc. for each sub-directory that exists in ``layer_dir`` (host path)."""
    ops = []
    for sub, names in roots:
        if (layer_dir / sub).is_dir():
            ops.extend(EnvOp(n, "prepend", f"{visible_dir}/{sub}", ":", process) for n in names)
    return ops


def include_listed(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a buildpack may see (lifecycle ``NewBuildEnv``)."""
    return {k: v for k, v in environ.items() if k in INCLUDE_LIST or k in PATH_VARS}


class BuildEnv:
    """The environment buildpacks accumulate during build: later buildpacks see earlier build layers."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.vars = include_listed(os.environ if environ is None else environ)

    def apply(self, ops: Iterable[EnvOp]) -> None:
        for op in ops:
            op.apply(self.vars)

    def with_overrides(self, platform_dir: Path | None, build_config_dir: Path | None = None) -> dict[str, str]:
        """The env for one bin/detect or bin/build: user platform env (skipped for ``clear-env``),
        then the builder's ``build-config/env`` with suffix rules (lifecycle ``WithOverrides``)."""
        out = dict(self.vars)
        if platform_dir is not None:
            for name, value, _ in env_files(platform_dir / "env"):
                if name in PATH_VARS:
                    out[name] = value + (":" + out[name] if out.get(name) else "")
                else:
                    out[name] = value
        if build_config_dir is not None:
            for op in env_dir_ops(build_config_dir / "env"):
                op.apply(out)
        return out


@dataclass(frozen=True)
class LaunchEnv:
    """The ordered env modifications of every launch layer, for the exporter/launcher.

    Order is the launcher's: buildpacks in group order, layers by name, and per layer ``bin/``+``lib/``,
    ``env/``, ``env.launch/``, then ``env.launch/<process>/`` (those ops carry ``process``).
    """

    ops: tuple[EnvOp, ...] = ()

    def resolve(self, base: Mapping[str, str], process: str | None = None) -> dict[str, str]:
        env = dict(base)
        for op in self.ops:
            if op.process is None or op.process == process:
                op.apply(env)
        return env

    @property
    def processes(self) -> frozenset[str]:
        return frozenset(op.process for op in self.ops if op.process is not None)


def launch_layer_ops(layer_dir: Path, visible_dir: str) -> list[EnvOp]:
    """The launch env contributions of one launch layer (host ``layer_dir``, seen as ``visible_dir``)."""
    ops = root_dir_ops(layer_dir, visible_dir, LAUNCH_ROOT_DIRS)
    ops += env_dir_ops(layer_dir / "env")
    ops += env_dir_ops(layer_dir / "env.launch")
    launch_dir = layer_dir / "env.launch"
    if launch_dir.is_dir():
        for sub in sorted(p for p in launch_dir.iterdir() if p.is_dir()):
            ops += env_dir_ops(sub, process=sub.name)
    return ops


def build_layer_ops(layer_dir: Path, visible_dir: str) -> list[EnvOp]:
    """What a build layer adds to the build env of the buildpacks that follow."""
    ops = root_dir_ops(layer_dir, visible_dir, BUILD_ROOT_DIRS)
    ops += env_dir_ops(layer_dir / "env")
    ops += env_dir_ops(layer_dir / "env.build")
    return ops
