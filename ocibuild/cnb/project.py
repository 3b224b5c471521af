"""project.toml (project descriptor, schema 0.1 and 0.2): what pack reads before a build.

What ocibuild takes from it: the files that make up the app (``include`` / ``exclude``, gitignore
patterns), build-time env, the buildpack group and its pre/post additions, the builder, and the
``io.buildpacks.project.metadata`` label. A relative ``uri`` is read against project.toml's own
directory (as pack does), whatever the current directory; ``docker://``, ``http(s)://`` and
``urn:cnb:builder:`` URIs are kept as they are. What ocibuild cannot honour (inline ``script``
buildpacks) is refused, not ignored.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ocibuild.cnb.execenv import DEFAULT as DEFAULT_EXEC_ENV
from ocibuild.cnb.execenv import applies
from ocibuild.errors import UsageError

SCHEMA_VERSIONS = frozenset({"0.1", "0.2", "0.3"})  # 0.3: exec-env on group and build env entries


@dataclass(frozen=True)
class Project:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    buildpacks: tuple[str, ...] = ()  # id@version, or a uri
    metadata_label: Mapping[str, Any] = field(default_factory=dict)
    pre_buildpacks: tuple[str, ...] = ()  # [[io.buildpacks.pre.group]]: before every group
    post_buildpacks: tuple[str, ...] = ()  # [[io.buildpacks.post.group]]: after every group
    builder: str | None = None  # [io.buildpacks] builder: used when --builder is not given

    def includes(self, rel_path: str, is_dir: bool) -> bool:
        """Whether an app-relative path belongs to the app (pack: include wins over exclude; only one may be set)."""
        if self.include:
            return is_dir or _matches(self.include, rel_path, is_dir)
        return not _matches(self.exclude, rel_path, is_dir)


def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], re.Pattern[str], bool]:
    """A gitignore pattern as regexes over '/'-separated relative paths: the path itself, anything
    below it, and whether the pattern names directories only (a trailing ``/``)."""
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = pattern.startswith("/") or "/" in pattern
    pattern = pattern.lstrip("/")
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    body = "".join(out)
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{body}$"), re.compile(f"^{prefix}{body}/.*$"), dir_only


def _matches(patterns: tuple[str, ...], rel_path: str, is_dir: bool) -> bool:
    matched = False
    for raw in patterns:
        negate = raw.startswith("!")
        exact, below, dir_only = _pattern_regex(raw[1:] if negate else raw)
        if below.match(rel_path) or (exact.match(rel_path) and (is_dir or not dir_only)):
            matched = not negate
    return matched


def load_project(path: Path, exec_env: str = DEFAULT_EXEC_ENV) -> Project:
    """project.toml; entries whose ``exec-env`` (schema 0.3) is not ``exec_env`` are left out."""
    try:
        doc = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read project descriptor {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    if "_" in doc or "io" in doc:  # schema 0.2
        meta = doc.get("_") or {}
        schema = str(meta.get("schema-version", "0.2"))
        if schema not in SCHEMA_VERSIONS:
            raise UsageError(f"{path}: unsupported project.toml schema-version {schema!r} "
                             f"(supported: {', '.join(sorted(SCHEMA_VERSIONS))})")
        build = (doc.get("io") or {}).get("buildpacks") or {}
        groups = build.get("group") or []
        # [[io.buildpacks.build.env]]; [[io.buildpacks.env.build]] is its deprecated spelling.
        env_tables = [*((build.get("env") or {}).get("build") or []), *((build.get("build") or {}).get("env") or [])]
        source_url = meta.get("source-url", "")
        version = meta.get("version", "")
    else:  # schema 0.1
        meta = doc.get("project") or {}
        build = doc.get("build") or {}
        groups = build.get("buildpacks") or []
        env_tables = build.get("env") or []
        source_url = meta.get("source-url", "")
        version = meta.get("version", "")
    include, exclude = build.get("include") or [], build.get("exclude") or []
    for name, value in (("include", include), ("exclude", exclude)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{path}: {name} must be a list of strings")
    if include and exclude:
        raise UsageError(f"{path}: project.toml may set include or exclude, not both")
    env: dict[str, str] = {}
    for table in env_tables:
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            raise UsageError(f"{path}: every build env entry needs a name")
        if applies(_exec_envs(table, path), exec_env):
            env[table["name"]] = str(table.get("value", ""))
    base = path.parent.absolute()
    buildpacks = _group(groups, path, base, "group", exec_env)
    pre = _group(_addition(build, "pre", path), path, base, "pre.group", exec_env)
    post = _group(_addition(build, "post", path), path, base, "post.group", exec_env)
    builder = build.get("builder")
    if builder is not None and (not isinstance(builder, str) or not builder):
        raise UsageError(f"{path}: builder must be an image reference")
    label: dict[str, Any] = {}
    if version or source_url:
        label = {"source": {"type": "project", "version": {"declared": version} if version else {},
                            "metadata": {"url": source_url} if source_url else {}}}
    return Project(tuple(include), tuple(exclude), env, buildpacks, label, pre, post, builder or None)


def _addition(build: Mapping[str, Any], name: str, path: Path) -> list[Any]:
    table = build.get(name) or {}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: {name} must be a table with a group list")
    return table.get("group") or []


def _exec_envs(table: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    """An entry's ``exec-env``: one name (RFC 0128's project.toml) or a list of names."""
    value = table.get("exec-env")
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise UsageError(f"{path}: exec-env must be a name or a list of names")
    return tuple(names)


def _group(tables: Any, path: Path, base: Path, where: str, exec_env: str = DEFAULT_EXEC_ENV) -> tuple[str, ...]:
    if not isinstance(tables, list):
        raise UsageError(f"{path}: {where} must be a list of buildpack tables")
    out: list[str] = []
    for table in tables:
        if not isinstance(table, dict):
            raise UsageError(f"{path}: buildpack entries must be tables")
        if not applies(_exec_envs(table, path), exec_env):
            continue
        if table.get("script"):
            raise UsageError(f"{path}: {where} entry {table.get('id') or '?'}: inline script buildpacks "
                             "are not supported by ocibuild")
        if table.get("uri"):
            out.append(resolve_uri(str(table["uri"]), base))
        elif table.get("id"):
            out.append(f"{table['id']}@{table['version']}" if table.get("version") else str(table["id"]))
        else:
            raise UsageError(f"{path}: a buildpack entry needs an id or a uri")
    return tuple(out)


def resolve_uri(uri: str, base: Path) -> str:
    """A project.toml ``uri``: ``file://`` and relative paths against project.toml's directory (when
    that path exists: ``bpkg:1`` may be an image); other schemes and references as they are."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri or uri.startswith(("urn:", "oci:")):
        return uri
    candidate = Path(uri).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return str(candidate) if candidate.exists() else uri
