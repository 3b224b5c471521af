"""Execution environments (Platform API 0.15, Buildpack API 0.12; RFC 0128).

The platform names the environment the image is built for (``CNB_EXEC_ENV``, pack's ``--exec-env``;
``production`` when unset). Buildpacks, group entries, processes and project.toml build variables
may declare the environments they are for (``exec-env``); an empty list, ``*`` or ``all`` means
every environment. What does not apply is left out: a group entry is skipped, a buildpack fails
detection, a process is not exported, a variable is not set.
"""

from __future__ import annotations

import re

DEFAULT = "production"
EVERY = frozenset({"*", "all"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def applies(declared: tuple[str, ...] | list[str], current: str) -> bool:
    """Whether something declaring ``declared`` environments is for ``current``."""
    return not declared or current in declared or any(d in EVERY for d in declared)


def check_name(name: str) -> str:
    """A valid environment name, or ``UsageError`` in one line (it becomes a variable's value)."""
    from ocibuild.errors import UsageError

    if not _NAME.match(name) or name in EVERY:
        raise UsageError(f"--exec-env {name!r}: expected a name such as production, test or development")
    return name
