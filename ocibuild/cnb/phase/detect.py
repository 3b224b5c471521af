"""The detect phase: the first group of the order that passes, its plan, and ``<layers>/group.toml``."""

from __future__ import annotations

from dataclasses import dataclass

import tomli_w

from ocibuild.cnb.descriptor import GroupElement, Order, Target
from ocibuild.cnb.detect import DetectResult, detect
from ocibuild.cnb.environment import BuildEnvironment
from ocibuild.cnb.execenv import DEFAULT as DEFAULT_EXEC_ENV
from ocibuild.cnb.sandbox import give


@dataclass(frozen=True)
class DetectPhase:
    environment: BuildEnvironment
    order: Order
    target: Target  # buildpack [[targets]] are checked against it (Platform API 0.12)
    exec_env: str = DEFAULT_EXEC_ENV  # CNB_EXEC_ENV (Platform API 0.15): entries for other environments are skipped
    order_extensions: Order = Order()  # tried ahead of every group (image extensions, Platform API 0.13)

    def run(self) -> DetectResult:
        env = self.environment
        result = detect(self.order, env.buildpacks, env.workspace, env.platform, env=env.image_env,
                        target=self.target, build_config_dir=env.build_config, exec_env=self.exec_env,
                        sandbox=env.sandbox, check_targets=True,
                        tmp_dir=env.io, owner=env.owner, extensions=env.extensions,
                        order_extensions=self.order_extensions)
        write_group(env, result.group, result.group_extensions)
        return result


def write_group(env: BuildEnvironment, group: tuple[GroupElement, ...],
                extensions: tuple[GroupElement, ...] = ()) -> None:
    """``<layers>/group.toml``: ``[[group]]`` and, when extensions passed, ``[[group-extensions]]``."""
    def entry(e: GroupElement) -> dict[str, str]:
        return {k: v for k, v in (("id", e.id), ("version", e.version), ("api", str(e.api or "")),
                                  ("homepage", e.homepage or "")) if v}

    doc: dict[str, list[dict[str, str]]] = {"group": [entry(e) for e in group]}
    if extensions:
        doc["group-extensions"] = [entry(e) for e in extensions]
    path = env.layers / "group.toml"
    path.write_text(tomli_w.dumps(doc))
    give(path, env.owner)
