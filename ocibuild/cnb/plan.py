"""Build plans: what bin/detect writes, how a group's plan is resolved, what each bin/build receives.

Resolution follows the lifecycle's DefaultDetectResolver: every combination of ``[[or]]``
alternatives is tried in order (an optional member may be dropped only once its last alternative
is tried); a require must be met by a provide of the same or an earlier member, and every provide
must be required by the same or a later member. An unmet require or unused provide fails a
required member and drops an optional one.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import tomli_w

from ocibuild.cnb.descriptor import GroupElement

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class PlanError(ValueError):
    """A plan file that breaks the contract; the caller attributes it to a buildpack."""


@dataclass(frozen=True)
class Require:
    name: str
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class PlanSections:
    provides: tuple[str, ...] = ()
    requires: tuple[Require, ...] = ()


@dataclass(frozen=True)
class BuildPlan:
    """The build plan one bin/detect wrote: sections plus ``[[or]]`` alternatives."""

    main: PlanSections = PlanSections()
    alternatives: tuple[PlanSections, ...] = ()

    def options(self) -> tuple[PlanSections, ...]:
        return (self.main, *self.alternatives)


def _sections(table: Mapping[str, Any]) -> PlanSections:
    provides, requires = [], []
    for p in table.get("provides") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise PlanError("every [[provides]] needs a name")
        provides.append(p["name"])
    for r in table.get("requires") or []:
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"]:
            raise PlanError("every [[requires]] needs a name")
        if "version" in r:
            if isinstance(r.get("metadata"), dict) and "version" in r["metadata"]:
                raise PlanError(
                    'has a "version" key and a "metadata.version" which cannot be specified together. '
                    '"metadata.version" should be used instead'
                )
            raise PlanError('has a "version" key which is not supported. "metadata.version" should be used instead')
        metadata = r.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise PlanError("requires.metadata must be a table")
        requires.append(Require(r["name"], MappingProxyType(metadata)))
    return PlanSections(tuple(provides), tuple(requires))


def parse_build_plan(data: Mapping[str, Any]) -> BuildPlan:
    alternatives = data.get("or") or []
    if not isinstance(alternatives, list) or not all(isinstance(t, dict) for t in alternatives):
        raise PlanError("[[or]] must be an array of tables")
    return BuildPlan(_sections(data), tuple(_sections(t) for t in alternatives))


def read_build_plan(path: Path) -> BuildPlan:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return BuildPlan()
    except tomllib.TOMLDecodeError as err:
        raise PlanError(f"invalid build plan TOML: {err}") from None
    return parse_build_plan(data)


@dataclass(frozen=True)
class PlanEntry:
    """One resolved dependency: who provides it and every require (with metadata) it satisfies."""

    providers: tuple[GroupElement, ...]
    requires: tuple[Require, ...]

    @property
    def name(self) -> str:
        return self.requires[0].name if self.requires else ""


@dataclass(frozen=True)
class Plan:
    """The resolved plan (lifecycle ``plan.toml``)."""

    entries: tuple[PlanEntry, ...] = ()

    def find(self, buildpack_id: str, extension: bool = False) -> tuple[Require, ...]:
        """The bp-plan of one buildpack (or extension): the requires of every entry it provides.
        What an extension provides goes to the extension's generate, not to a buildpack."""
        out: list[Require] = []
        for entry in self.entries:
            if any(p.id == buildpack_id and p.extension == extension for p in entry.providers):
                out.extend(entry.requires)
        return tuple(out)

    def filter(self, met: set[str] | frozenset[str]) -> Plan:
        """Drop the entries a buildpack met, so later providers do not receive them again."""
        return Plan(tuple(e for e in self.entries if not any(r.name in met for r in e.requires)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": [
                {
                    "providers": [{"id": p.id, "version": p.version, **({"extension": True} if p.extension else {})}
                                  for p in e.providers],
                    "requires": [r.to_dict() for r in e.requires],
                }
                for e in self.entries
            ]
        }


def write_bp_plan(path: Path, requires: tuple[Require, ...]) -> None:
    """The ``[[entries]] name/metadata`` file handed to bin/build."""
    parts = []
    for r in requires:
        # ``[[entries]]`` tables (not inline arrays): what bash buildpacks grep for.
        parts.append("[[entries]]\n" + tomli_w.dumps({"name": r.name}))
        parts.append(tomli_w.dumps({"entries": {"metadata": dict(r.metadata)}}).replace("[entries]\n", ""))
    path.write_text("\n".join(p for p in parts if p.strip()))


class Unresolvable(Exception):
    """No combination of alternatives gives a viable plan."""


@dataclass
class _Dep:
    providers: list[GroupElement] = field(default_factory=list)
    requires: list[Require] = field(default_factory=list)
    early_requires: list[GroupElement] = field(default_factory=list)
    extra_provides: list[GroupElement] = field(default_factory=list)


_Option = tuple[GroupElement, PlanSections]


def _dep_map(trial: list[_Option]) -> dict[str, _Dep]:
    deps: dict[str, _Dep] = {}
    for element, sections in trial:
        for name in sections.provides:
            deps.setdefault(name, _Dep()).extra_provides.append(element)
        for req in sections.requires:
            dep = deps.setdefault(req.name, _Dep())
            dep.providers.extend(dep.extra_provides)
            dep.extra_provides = []
            if dep.providers:
                dep.requires.append(req)
            else:
                dep.early_requires.append(element)
    return deps


def _run_trial(trial: list[_Option], log: Callable[[str], None]) -> tuple[dict[str, _Dep], list[_Option]]:
    while True:
        deps = _dep_map(trial)
        retry = False
        for kind, attr in (("requires", "early_requires"), ("provides unused", "extra_provides")):
            for name, dep in list(deps.items()):
                for element in getattr(dep, attr):
                    retry = True
                    if not element.optional:
                        log(f"fail: {element} {kind} {name}")
                        raise Unresolvable(f"{element} {kind} {name}")
                    log(f"skip: {element} {kind} {name}")
                    trial = [o for o in trial if o[0] != element]
        if not retry:
            break
    if not trial:
        log("fail: no viable buildpacks in group")
        raise Unresolvable("no viable buildpacks in group")
    return deps, trial


def resolve(
    passed: list[tuple[GroupElement, BuildPlan]], log: Callable[[str], None] = lambda _: None
) -> tuple[tuple[GroupElement, ...], Plan]:
    """Resolve the plan of the members that passed detection, in group order.

    Returns the participating members (optional flag cleared) and the plan; raises ``Unresolvable``.
    """
    options: list[list[_Option]] = []
    for element, build_plan in passed:
        alts = build_plan.options()
        per = []
        for i, sections in enumerate(alts):
            el = element if (element.optional and i == len(alts) - 1) else element.no_opt()
            per.append((el, sections))
        options.append(per)

    def trials(prefix: list[_Option], rest: list[list[_Option]]):
        if not rest:
            yield prefix
            return
        for option in rest[0]:
            yield from trials([*prefix, option], rest[1:])

    last: Unresolvable | None = None
    for n, trial in enumerate(trials([], options), 1):
        log(f"Resolving plan... (try #{n})")
        try:
            deps, kept = _run_trial(trial, log)
        except Unresolvable as err:
            last = err
            continue
        entries = tuple(
            PlanEntry(tuple(p.no_opt() for p in d.providers), tuple(d.requires)) for d in deps.values()
        )
        return tuple(el.no_opt() for el, _ in kept), Plan(entries)
    raise last or Unresolvable("no viable buildpacks in group")
