"""buildpack.toml, order.toml and group elements: parsed once, validated, frozen.

Buildpack API 0.7–0.12 (the range the current lifecycle speaks). Parsing is strict where the spec
is (ids, API, types) and lenient where real buildpacks vary (``[[targets.distros]]`` vs the
lifecycle's older ``distributions``, ``exec-env`` as strings or ``{name=…}`` tables).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ocibuild.cnb.errors import (
    BuildpackNotFound,
    DescriptorError,
    IncompatibleBuildpackAPI,
)
from ocibuild.errors import UsageError

SUPPORTED_APIS: tuple[str, ...] = ("0.7", "0.8", "0.9", "0.10", "0.11", "0.12")
EXTENSION_APIS: tuple[str, ...] = ("0.9", "0.10", "0.11", "0.12")  # extensions came with Buildpack API 0.9
KIND_BUILDPACK, KIND_EXTENSION = "buildpack", "extension"
DESCRIPTOR_FILES = {KIND_BUILDPACK: "buildpack.toml", KIND_EXTENSION: "extension.toml"}
RESERVED_IDS = frozenset({"app", "config", "generated", "sbom"})
_ID_RE = re.compile(r"^[A-Za-z0-9./-]+$")
_API_RE = re.compile(r"^(\d+)\.(\d+)$")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, order=True)
class ApiVersion:
    """A ``major.minor`` Buildpack API version, ordered numerically (0.10 > 0.9)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ApiVersion:
        m = _API_RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise DescriptorError(f"invalid buildpack API version {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def at_least(self, other: str) -> bool:
        return self >= ApiVersion.parse(other)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def escape_id(buildpack_id: str) -> str:
    """The directory name of a buildpack id (lifecycle ``launch.EscapeID``): ``/`` becomes ``_``."""
    return buildpack_id.replace("/", "_")


def validate_id(buildpack_id: str, where: str = "buildpack") -> str:
    if not isinstance(buildpack_id, str) or not buildpack_id:
        raise DescriptorError(f"{where}: id is required")
    if not _ID_RE.match(buildpack_id):
        raise DescriptorError(
            f"{where}: id {buildpack_id!r} may contain only letters, digits, '.', '/' and '-'"
        )
    if buildpack_id in RESERVED_IDS:
        raise DescriptorError(f"{where}: id {buildpack_id!r} is reserved")
    return buildpack_id


def check_api(text: Any, where: str, supported: tuple[str, ...] | None = SUPPORTED_APIS) -> ApiVersion:
    """A well-formed API version, one of ``supported`` (``None``: any; the builder's lifecycle decides)."""
    if not isinstance(text, str):
        raise DescriptorError(f"{where}: api is required")
    version = ApiVersion.parse(text)
    if supported is not None and str(version) not in supported:
        raise IncompatibleBuildpackAPI(
            f"{where}: buildpack API {text} is not supported (supported: {', '.join(supported)})",
            buildpack=where,
        )
    return version


@dataclass(frozen=True)
class GroupElement:
    """One entry of an order group or of the detected group (id@version, optional, api, homepage)."""

    id: str
    version: str = ""
    optional: bool = False
    api: str = ""
    homepage: str = ""
    exec_env: tuple[str, ...] = ()
    extension: bool = False  # an image extension (order-extensions), not a buildpack

    @classmethod
    def parse(cls, text: str, optional: bool = False) -> GroupElement:
        """``id`` or ``id@version`` (as typed on a command line)."""
        bp_id, _, version = text.partition("@")
        if not bp_id:
            raise UsageError(f"invalid buildpack reference {text!r}: expected id[@version]")
        return cls(validate_id(bp_id, f"buildpack reference {text!r}"), version, optional)

    def to_dict(self) -> dict[str, Any]:
        """An order entry as pack writes it (``dist.ModuleRef``: id, then version and optional if set)."""
        out: dict[str, Any] = {"id": self.id}
        if self.version:
            out["version"] = self.version
        if self.optional:
            out["optional"] = True
        if self.exec_env:  # Buildpack API 0.12 / builder.toml [[order.group]] exec-env
            out["exec-env"] = list(self.exec_env)
        return out

    @property
    def full_name(self) -> str:
        return f"{self.id}@{self.version}" if self.version else self.id

    def __str__(self) -> str:
        return f"{self.id}@{self.version}"

    def no_opt(self) -> GroupElement:
        return replace(self, optional=False)

    @property
    def api_version(self) -> ApiVersion:
        return ApiVersion.parse(self.api)


@dataclass(frozen=True)
class Group:
    elements: tuple[GroupElement, ...]

    def __iter__(self):
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self.elements)


@dataclass(frozen=True)
class Order:
    groups: tuple[Group, ...] = ()

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __bool__(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class Distro:
    name: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, str]:
        out = {}
        if self.name:
            out["name"] = self.name
        if self.version:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class TargetSpec:
    """A ``[[targets]]`` entry of buildpack.toml; empty fields and ``*`` match anything."""

    os: str = ""
    arch: str = ""
    variant: str = ""
    distros: tuple[Distro, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """pack's ``dist.Target`` JSON (``io.buildpacks.buildpack.layers``)."""
        out: dict[str, Any] = {"os": self.os, "arch": self.arch}
        if self.variant:
            out["variant"] = self.variant
        if self.distros:
            out["distros"] = [d.to_dict() for d in self.distros]
        return out


@dataclass(frozen=True)
class Stack:
    """A ``[[stacks]]`` entry (deprecated since Buildpack API 0.10, still read and relayed)."""

    id: str
    mixins: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.mixins:
            out["mixins"] = list(self.mixins)
        return out


@dataclass(frozen=True)
class License:
    type: str = ""
    uri: str = ""


@dataclass(frozen=True)
class Target:
    """The target a build runs for (from the run image); exported to buildpacks as ``CNB_TARGET_*``."""

    os: str = "linux"
    arch: str = "amd64"
    arch_variant: str = ""
    distro_name: str = ""
    distro_version: str = ""

    def env(self) -> dict[str, str]:
        """The lifecycle's ``EnvVarsFor``: OS and arch always, the rest only when known."""
        out = {"CNB_TARGET_OS": self.os, "CNB_TARGET_ARCH": self.arch}
        if self.arch_variant:
            out["CNB_TARGET_ARCH_VARIANT"] = self.arch_variant
        if self.distro_name:
            out["CNB_TARGET_DISTRO_NAME"] = self.distro_name
        if self.distro_version:
            out["CNB_TARGET_DISTRO_VERSION"] = self.distro_version
        return out

    def satisfies(self, spec: TargetSpec) -> bool:
        def ok(want: str, have: str) -> bool:
            return want in ("", "*") or not have or want == have

        if not (ok(spec.os, self.os) and ok(spec.arch, self.arch) and ok(spec.variant, self.arch_variant)):
            return False
        if not spec.distros or not self.distro_name:
            return True
        return any(
            ok(d.name, self.distro_name) and ok(d.version, self.distro_version) for d in spec.distros
        )


@dataclass(frozen=True)
class BuildpackDescriptor:
    """A parsed buildpack.toml; ``path`` is the buildpack's root directory (``CNB_BUILDPACK_DIR``)."""

    api: str
    id: str
    version: str
    path: Path
    name: str = ""
    homepage: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    clear_env: bool = False
    sbom_formats: tuple[str, ...] = ()
    exec_env: tuple[str, ...] = ()
    licenses: tuple[License, ...] = ()
    order: Order = Order()
    targets: tuple[TargetSpec, ...] = ()
    """The targets the lifecycle matches: as declared, else inferred from the stacks or bin/."""
    declared_targets: tuple[TargetSpec, ...] = ()
    """``[[targets]]`` as written (what distribution labels relay)."""
    stacks: tuple[Stack, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    kind: str = KIND_BUILDPACK  # or KIND_EXTENSION: an extension.toml (Platform API 0.13)

    @property
    def api_version(self) -> ApiVersion:
        return ApiVersion.parse(self.api)

    @property
    def is_composite(self) -> bool:
        return bool(self.order)

    @property
    def is_extension(self) -> bool:
        return self.kind == KIND_EXTENSION

    def element(self, optional: bool = False) -> GroupElement:
        return GroupElement(
            id=self.id, version=self.version, optional=optional, api=self.api, homepage=self.homepage,
            extension=self.is_extension,
        )

    def __str__(self) -> str:
        return f"{self.id}@{self.version}"


def _str(table: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise DescriptorError(f"{where}: {key} must be a string")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise DescriptorError(f"{where}: {key} must be true or false")
    return value


def _tables(value: Any, key: str, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DescriptorError(f"{where}: {key} must be an array of tables")
    return value


def _exec_env(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DescriptorError(f"{where}: exec-env must be an array")
    out = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name:
            raise DescriptorError(f"{where}: exec-env entries must be non-empty names")
        out.append(name)
    return tuple(out)


def parse_group_element(table: Mapping[str, Any], where: str) -> GroupElement:
    if not isinstance(table, dict):
        raise DescriptorError(f"{where}: group entries must be tables")
    element_id = validate_id(table.get("id"), where)
    return GroupElement(
        id=element_id,
        version=_str(table, "version", where),
        optional=_bool(table, "optional", where),
        api=_str(table, "api", where),
        homepage=_str(table, "homepage", where),
        exec_env=_exec_env(table.get("exec-env"), where),
    )


def parse_order(value: Any, where: str = "order") -> Order:
    """``[[order]] [[order.group]]`` (order.toml, or a composite's buildpack.toml)."""
    groups = []
    for i, table in enumerate(_tables(value, "order", where)):
        elements = tuple(
            parse_group_element(el, f"{where}[{i}]") for el in _tables(table.get("group"), "group", where)
        )
        if not elements:
            raise DescriptorError(f"{where}[{i}]: a group must name at least one buildpack")
        groups.append(Group(elements))
    return Order(tuple(groups))


def order_to_json(order: Order) -> list[dict[str, Any]]:
    """The ``io.buildpacks.buildpack.order`` label shape (``[{"group": [{id, version, optional}]}]``)."""
    return [{"group": [el.to_dict() for el in group]} for group in order]


def load_order(path: str | Path) -> Order:
    """Read an ``order.toml`` (as in ``/cnb/order.toml``)."""
    data = _read_toml(Path(path))
    return parse_order(data.get("order"), str(path))


def parse_targets(value: Any, where: str) -> tuple[TargetSpec, ...]:
    """``[[targets]]`` (TOML) or a label's ``targets``; older spellings (``distributions``,
    ``arch-variant``, ``versions = [...]``) are read too."""
    out = []
    for t in _tables(value, "targets", where):
        distros = []
        for d in _tables(t.get("distros", t.get("distributions")), "targets.distros", where):
            version = d.get("version")
            if version is None and isinstance(d.get("versions"), list):
                version = (d["versions"] or [""])[0]
            if not isinstance(version or "", str):
                raise DescriptorError(f"{where}: targets.distros.version must be a string")
            distros.append(Distro(_str(d, "name", where), version or ""))
        variant = t.get("variant", t.get("arch-variant", ""))
        if not isinstance(variant, str):
            raise DescriptorError(f"{where}: targets.variant must be a string")
        out.append(TargetSpec(_str(t, "os", where), _str(t, "arch", where), variant, tuple(distros)))
    return tuple(out)


def parse_stacks(value: Any, where: str) -> tuple[Stack, ...]:
    out = []
    for s in _tables(value, "stacks", where):
        mixins = s.get("mixins") or []
        if not isinstance(mixins, list) or not all(isinstance(m, str) for m in mixins):
            raise DescriptorError(f"{where}: stacks.mixins must be an array of strings")
        stack_id = _str(s, "id", where)
        if not stack_id:
            raise DescriptorError(f"{where}: every stack needs an id")
        out.append(Stack(stack_id, tuple(mixins)))
    return tuple(out)


def _header(data: Mapping[str, Any], kind: str, where: str, supported_apis: tuple[str, ...] | None
            ) -> tuple[Mapping[str, Any], str, ApiVersion, str, str]:
    """The ``[buildpack]`` (or ``[extension]``) table, its id, the api and the version, checked;
    ``where`` becomes ``<kind> <id>`` for the messages that follow."""
    info = data.get(kind)
    if not isinstance(info, dict):
        raise DescriptorError(f"{where}: [{kind}] table is required")
    module_id = validate_id(info.get("id"), where)
    where = f"{kind} {module_id}"
    api = check_api(data.get("api"), where, supported_apis)
    version = _str(info, "version", where)
    if not version:
        raise DescriptorError(f"{where}: version is required")
    return info, module_id, api, version, where


def parse_descriptor(
    data: Mapping[str, Any],
    root: Path,
    *,
    has_file: Callable[[str], bool] | None = None,
    supported_apis: tuple[str, ...] | None = SUPPORTED_APIS,
    where: str | None = None,
) -> BuildpackDescriptor:
    """Validate a buildpack.toml document whose buildpack lives in ``root``.

    ``has_file(rel)`` says whether ``bin/build`` etc. exist (default: look in ``root`` on disk; an
    archive passes its member names). ``supported_apis=None`` accepts any well-formed API: when
    distributing, the builder's lifecycle decides which APIs it speaks.
    """
    exists = has_file or (lambda rel: (root / rel).exists())
    info, bp_id, api, version, where = _header(data, KIND_BUILDPACK, where or str(root / "buildpack.toml"),
                                               supported_apis)
    order = parse_order(data.get("order"), f"{where} order")
    if order and exists("bin/detect"):
        raise DescriptorError(f"{where}: a composite buildpack (with [[order]]) must not have bin/detect")
    if not order and not exists("bin/build") and not exists("bin/build.bat"):
        raise DescriptorError(f"{where}: bin/build is missing")
    declared = parse_targets(data.get("targets"), where)
    stacks = parse_stacks(data.get("stacks"), where)
    if order and (declared or stacks):
        raise DescriptorError(f"{where}: a composite buildpack cannot have both targets/stacks and an order")
    targets = declared
    if not targets and not order:
        # The lifecycle infers a target from the stack (bionic) or the bin/ layout.
        if any(s.id == "io.buildpacks.stacks.bionic" for s in stacks):
            targets = (TargetSpec("linux", "amd64", "", (Distro("ubuntu", "18.04"),)),)
        elif exists("bin/build"):
            targets = (TargetSpec("linux"),)
        else:
            targets = (TargetSpec("windows"),)
    keywords = info.get("keywords") or []
    sbom = info.get("sbom-formats") or []
    if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in (keywords, sbom)):
        raise DescriptorError(f"{where}: keywords and sbom-formats must be arrays of strings")
    licenses = tuple(
        License(_str(lic, "type", where), _str(lic, "uri", where))
        for lic in _tables(info.get("licenses"), "licenses", where)
    )
    metadata = data.get("metadata") or {}
    return BuildpackDescriptor(
        api=str(api),
        id=bp_id,
        version=version,
        path=root,
        name=_str(info, "name", where),
        homepage=_str(info, "homepage", where),
        description=_str(info, "description", where),
        keywords=tuple(keywords),
        clear_env=_bool(info, "clear-env", where),
        sbom_formats=tuple(sbom),
        exec_env=_exec_env(info.get("exec-env"), where),
        licenses=licenses,
        order=order,
        targets=targets,
        declared_targets=declared,
        stacks=stacks,
        metadata=MappingProxyType(dict(metadata)) if isinstance(metadata, dict) else _EMPTY,
    )


def load_descriptor(root: str | Path) -> BuildpackDescriptor:
    """Read ``<root>/buildpack.toml``."""
    root = Path(root).absolute()
    return parse_descriptor(_read_toml(root / "buildpack.toml"), root)


def parse_extension_descriptor(
    data: Mapping[str, Any],
    root: Path,
    *,
    supported_apis: tuple[str, ...] | None = EXTENSION_APIS,
    where: str | None = None,
) -> BuildpackDescriptor:
    """Validate an ``extension.toml``: ``api``, ``[extension]`` id/version (name, homepage...),
    ``[[targets]]``. An extension has no order, no stacks and no ``clear-env``; ``bin/detect`` and
    ``bin/generate`` are optional (``detect/plan.toml`` and ``generate/*.Dockerfile`` stand in)."""
    info, ext_id, api, version, where = _header(data, KIND_EXTENSION, where or str(root / "extension.toml"),
                                                supported_apis)
    for key in ("order", "stacks"):
        if data.get(key) is not None:
            raise DescriptorError(f"{where}: an extension cannot have [[{key}]]")
    declared = parse_targets(data.get("targets"), where)
    keywords = info.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(x, str) for x in keywords):
        raise DescriptorError(f"{where}: keywords must be an array of strings")
    licenses = tuple(License(_str(lic, "type", where), _str(lic, "uri", where))
                     for lic in _tables(info.get("licenses"), "licenses", where))
    metadata = data.get("metadata") or {}
    return BuildpackDescriptor(
        api=str(api), id=ext_id, version=version, path=root, name=_str(info, "name", where),
        homepage=_str(info, "homepage", where), description=_str(info, "description", where),
        keywords=tuple(keywords), licenses=licenses, targets=declared or (TargetSpec("linux"),),
        declared_targets=declared,
        metadata=MappingProxyType(dict(metadata)) if isinstance(metadata, dict) else _EMPTY,
        kind=KIND_EXTENSION,
    )


def load_extension_descriptor(root: str | Path) -> BuildpackDescriptor:
    """Read ``<root>/extension.toml``."""
    root = Path(root).absolute()
    return parse_extension_descriptor(_read_toml(root / "extension.toml"), root)


def decode_text(data: bytes, where: str) -> str:
    """TOML files are UTF-8; anything else is a one-line descriptor error, not a traceback."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DescriptorError(f"{where}: not UTF-8 text") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(decode_text(path.read_bytes(), str(path)))
    except FileNotFoundError:
        raise DescriptorError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise DescriptorError(f"{path}: invalid TOML: {err}") from None


class BuildpackStore:
    """Buildpacks extracted as the lifecycle expects them: ``<dir>/<escaped id>/<version>/``.

    ``locate`` (optional) maps ``(id, version)`` to the host directory holding that buildpack, for
    a store whose buildpacks sit in a build image's extracted layers rather than under one root."""

    def __init__(self, root: str | Path, locate: "Callable[[str, str], Path | None] | None" = None,
                 kind: str = KIND_BUILDPACK):
        self.root = Path(root).absolute()
        self._locate = locate
        self.kind = kind
        self._cache: dict[tuple[str, str], BuildpackDescriptor] = {}

    def path(self, buildpack_id: str, version: str) -> Path | None:
        if self._locate is not None:
            return self._locate(buildpack_id, version)
        return self.root / escape_id(buildpack_id) / version

    def lookup(self, buildpack_id: str, version: str) -> BuildpackDescriptor:
        key = (buildpack_id, version)
        if key not in self._cache:
            path = self.path(buildpack_id, version)
            name = DESCRIPTOR_FILES[self.kind]
            if path is None or not (path / name).is_file():
                raise BuildpackNotFound(
                    f"{self.kind} {buildpack_id}@{version} not found in {self.root}", buildpack=buildpack_id
                )
            desc = load_extension_descriptor(path) if self.kind == KIND_EXTENSION else load_descriptor(path)
            if desc.id != buildpack_id or desc.version != version:
                raise DescriptorError(
                    f"{path}/{name} declares {desc} but is stored as {buildpack_id}@{version}",
                    buildpack=buildpack_id,
                )
            self._cache[key] = desc
        return self._cache[key]
