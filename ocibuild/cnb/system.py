"""System buildpacks (Platform API 0.15, RFC 0101): what a builder runs around every group.

A builder's ``/cnb/system.toml`` (pack writes it from builder.toml's ``[system]``, with the label
``io.buildpacks.buildpack.system``) names ``pre`` buildpacks put before, and ``post`` buildpacks put
after, the members of each order group. Detection treats them as any other member: an optional one
may fail; a required one that fails fails the group. pack's ``--disable-system-buildpacks`` leaves
them out.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping

import tomli_w

from ocibuild.cnb.descriptor import Group, GroupElement, Order, parse_group_element
from ocibuild.errors import UsageError

PATH = "/cnb/system.toml"
LABEL = "io.buildpacks.buildpack.system"


@dataclass(frozen=True)
class SystemBuildpacks:
    pre: tuple[GroupElement, ...] = ()
    post: tuple[GroupElement, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pre or self.post)

    def around(self, order: Order) -> Order:
        """Every group of ``order`` with the pre members first and the post members last; a system
        buildpack the group already names keeps the group's place (detection runs an id once)."""
        def members(group: Group) -> tuple[GroupElement, ...]:
            own = {el.id for el in group}
            return (*(el for el in self.pre if el.id not in own), *group,
                    *(el for el in self.post if el.id not in own))

        return Order(tuple(Group(members(g)) for g in order)) if self else order

    def check_present(self, have: set[tuple[str, str]]) -> None:
        """Every system buildpack is one of ``have`` (id, version), or ``UsageError`` naming it."""
        for el in (*self.pre, *self.post):
            if (el.id, el.version) not in have:
                raise UsageError(f"system buildpack {el.full_name} is not on the builder: add it to [[buildpacks]]")

    def to_dict(self) -> dict[str, Any]:
        """The ``[system]`` table of system.toml; the same shape is the label's JSON."""
        return {phase: {"buildpacks": [el.to_dict() for el in els]}
                for phase, els in (("pre", self.pre), ("post", self.post)) if els}

    def toml(self) -> str:
        return tomli_w.dumps({"system": self.to_dict()})

    def label(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def parse_system(table: Any, where: str) -> SystemBuildpacks:
    """``[system] [system.pre] buildpacks = [{id, version, optional}]`` and ``[system.post]``."""
    if table is None:
        return SystemBuildpacks()
    if not isinstance(table, Mapping):
        raise UsageError(f"{where}: [system] must be a table")
    unknown = sorted(set(table) - {"pre", "post"})
    if unknown:
        raise UsageError(f"{where}: system.{unknown[0]} is not supported (expected system.pre, system.post)")
    return SystemBuildpacks(_elements(table.get("pre"), f"{where}: system.pre"),
                            _elements(table.get("post"), f"{where}: system.post"))


def _elements(table: Any, where: str) -> tuple[GroupElement, ...]:
    if table is None:
        return ()
    if not isinstance(table, Mapping) or not isinstance(table.get("buildpacks", []), list):
        raise UsageError(f"{where}: expected a table with a buildpacks list")
    elements = tuple(parse_group_element(el, where) for el in table.get("buildpacks", []))  # DescriptorError: exit 2
    for el in elements:
        if not el.version:
            raise UsageError(f"{where}: system buildpack {el.id} needs a version")
    return elements


def read_system_toml(text: str | None, where: str = PATH) -> SystemBuildpacks:
    """A builder's system.toml (``None`` when the builder has none)."""
    if text is None:
        return SystemBuildpacks()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: invalid TOML: {exc}") from None
    return parse_system(doc.get("system"), where)
