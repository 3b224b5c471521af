"""The Dockerfiles image extensions generate (``build.Dockerfile``, ``run.Dockerfile``): parsed and checked.

Extension spec (buildpacks/spec extension.md, Platform API 0.13): a Dockerfile starts with
``ARG base_image`` and ``FROM ${base_image}`` (a ``run.Dockerfile`` may name another image instead:
the run-image switch), has one ``FROM`` (no stages), and uses only ``ADD``, ``ARG``, ``COPY``,
``ENV``, ``LABEL``, ``RUN``, ``SHELL``, ``USER`` and ``WORKDIR``. ocibuild runs ``ARG``, ``ENV``,
``LABEL``, ``RUN``, ``SHELL``, ``USER``, ``WORKDIR`` and ``COPY`` from the extension's context;
``ADD`` (URLs, archive unpacking) is refused, and a ``run.Dockerfile`` may only switch the run
image (``FROM``): extending the run image is not done. Anything refused is one line naming the
file, the line and the instruction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ocibuild.errors import UsageError

ALLOWED = frozenset({"ADD", "ARG", "COPY", "ENV", "LABEL", "RUN", "SHELL", "USER", "WORKDIR"})
NOT_RUN = {"ADD": "ADD is not supported by ocibuild (use COPY from the extension's context)"}
BASE_IMAGE_ARG = "base_image"
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(UsageError):
    """A generated Dockerfile the extension spec (or ocibuild) does not allow; one line."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    text: str  # the arguments as written (continuations joined)
    line: int
    exec_form: tuple[str, ...] | None = None  # ["a", "b"] (RUN, SHELL)

    def words(self) -> list[str]:
        return self.text.split()


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    kind: str  # "build" or "run"
    base: str  # FROM's image as written (``${base_image}`` when not switched)
    instructions: tuple[Instruction, ...]  # after FROM
    args_before_from: tuple[tuple[str, str | None], ...] = ()

    @property
    def switches_image(self) -> bool:
        """Whether ``FROM`` names an image other than ``${base_image}``."""
        return substitute(self.base, {BASE_IMAGE_ARG: "\0"}) != "\0"

    def image(self, base_image: str) -> str:
        """The image ``FROM`` names, with ``base_image`` (and earlier ARG defaults) substituted."""
        values = {name: default or "" for name, default in self.args_before_from}
        values[BASE_IMAGE_ARG] = base_image
        return substitute(self.base, values)


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:+alternative}`` as Docker expands them."""
    def expand(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = values.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(expand, text)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: comments dropped, ``\\`` continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending.strip()))
    return out


def _exec_form(args: str) -> tuple[str, ...] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def parse_dockerfile(path: Path, kind: str) -> Dockerfile:
    """Read and check one generated Dockerfile (``kind``: ``build`` or ``run``)."""
    where = f"{path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DockerfileError(f"{where}: not UTF-8 text") from None
    before: list[tuple[str, str | None]] = []
    base: str | None = None
    instructions: list[Instruction] = []
    for number, line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        at = f"{where}:{number}"
        if keyword == "FROM":
            if base is not None:
                raise DockerfileError(f"{at}: a second FROM (multi-stage builds are not allowed in extensions)")
            words = args.split()
            if len(words) != 1:
                raise DockerfileError(f"{at}: FROM takes one image (no --platform, no AS stage)")
            base = words[0]
            continue
        if base is None:
            if keyword != "ARG":
                raise DockerfileError(f"{at}: {keyword} before FROM (only ARG may come first)")
            before.append(_arg(args, at))
            continue
        if keyword not in ALLOWED:
            raise DockerfileError(f"{at}: {keyword} is not allowed in a {kind}.Dockerfile by the extension spec "
                                  f"(allowed: {', '.join(sorted(ALLOWED))})")
        if keyword in NOT_RUN:
            raise DockerfileError(f"{at}: {NOT_RUN[keyword]}")
        exec_form = _exec_form(args) if keyword in ("RUN", "SHELL") else None
        if keyword == "SHELL" and not exec_form:
            raise DockerfileError(f"{at}: SHELL takes a JSON array")
        if not args:
            raise DockerfileError(f"{at}: {keyword} needs arguments")
        instructions.append(Instruction(keyword, args, number, exec_form))
    if base is None:
        raise DockerfileError(f"{where}: no FROM (a generated Dockerfile starts with ARG base_image, "
                              "FROM ${base_image})")
    if kind == "build" and [name for name, _ in before] != [BASE_IMAGE_ARG]:
        raise DockerfileError(f"{where}: build.Dockerfile did not start with required ARG command "
                              "(exactly ARG base_image before FROM)")
    df = Dockerfile(path, kind, base, tuple(instructions), tuple(before))
    if kind == "build" and df.switches_image:
        raise DockerfileError(f"{where}: FROM {base}: a build.Dockerfile extends the build image "
                              "(FROM ${base_image}); it cannot switch it")
    if kind == "run" and instructions:
        first = instructions[0]
        raise DockerfileError(f"{where}:{first.line}: {first.keyword}: extending the run image is not supported "
                              "by ocibuild; a run.Dockerfile may only switch the run image (FROM)")
    return df


def _arg(args: str, at: str) -> tuple[str, str | None]:
    name, eq, default = args.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise DockerfileError(f"{at}: ARG {args!r}: expected NAME or NAME=default")
    return name, (_unquote(default.strip()) if eq else None)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_arg(instruction: Instruction) -> tuple[str, str | None]:
    return _arg(instruction.text, f"{instruction.line}")


def parse_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """``ENV``/``LABEL`` pairs: ``K=V [K2=V2...]`` (values may be quoted) or the legacy ``K V``."""
    import shlex

    text = instruction.text
    if "=" not in text.split()[0]:
        key, _, value = text.partition(" ")
        return [(key, value.strip())]
    try:
        words = shlex.split(text, posix=True)
    except ValueError:
        raise DockerfileError(f"line {instruction.line}: {instruction.keyword} {text!r}: unbalanced quotes") from None
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise DockerfileError(f"line {instruction.line}: {instruction.keyword}: expected KEY=VALUE, got {word!r}")
        out.append((key, value))
    return out
