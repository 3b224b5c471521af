"""ocibuild's own launcher: a POSIX sh script, and the process table it reads.

The lifecycle's launcher is a Go binary that parses ``<layers>/config/metadata.toml``. When the
builder ships no launcher, ocibuild puts ``launcher.sh`` at ``/cnb/lifecycle/launcher``; sh cannot
parse TOML, so the exporter also writes ``<layers>/config/launch.sh``, the same processes as
shell assignments (every value single-quoted: nothing in it is ever evaluated as code).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from importlib import resources

LAUNCHER_RESOURCE = "launcher.sh"
PROCESS_TABLE_NAME = "launch.sh"


def launcher_bytes() -> bytes:
    """The launcher script exactly as shipped in the package."""
    return resources.files(__name__).joinpath(LAUNCHER_RESOURCE).read_bytes()


@dataclass(frozen=True)
class LaunchProcess:
    """One process as the launcher runs it (the ``[[processes]]`` of metadata.toml)."""

    type: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    direct: bool = False
    default: bool = False
    buildpack_id: str = ""
    working_dir: str = ""
    exec_env: tuple[str, ...] = ()  # Buildpack API 0.12: the environments it is for (empty: every one)


def _q(value: str) -> str:
    return shlex.quote(value)


def render_process_table(
    buildpacks: list[tuple[str, str]],
    processes: list[LaunchProcess],
    default_type: str | None,
) -> bytes:
    """``launch.sh``: buildpacks (escaped id, API) in group order and one ``case`` arm per process.

    Each arm keeps ``command`` and ``args`` apart and carries the API of the buildpack that
    contributed the process, because the launcher decides from both how user arguments combine
    with the process's own (``cnb_api`` is empty when that buildpack is not in the group).
    """
    apis = dict(buildpacks)
    lines = [
        "# Written by ocibuild's exporter; read by /cnb/lifecycle/launcher (ocibuild's sh launcher).",
        f"CNB_DEFAULT_PROCESS={_q(default_type or '')}",
        "CNB_BUILDPACKS=" + _q("".join(f"{bp_id} {api}\n" for bp_id, api in buildpacks)),
        "cnb_process() {",
        '\tcase "$1" in',
    ]
    for proc in processes:
        escaped_bp = proc.buildpack_id.replace("/", "_")
        lines.append(f"\t{_q(proc.type)})")
        lines.append(f"\t\tcnb_cmd={_q(' '.join(_q(w) for w in proc.command))}")
        lines.append(f"\t\tcnb_args={_q(' '.join(_q(w) for w in proc.args))}")
        lines.append(f"\t\tcnb_direct={'true' if proc.direct else 'false'}")
        lines.append(f"\t\tcnb_workdir={_q(proc.working_dir)}")
        lines.append(f"\t\tcnb_bp={_q(proc.buildpack_id)}")
        lines.append(f"\t\tcnb_api={_q(apis.get(escaped_bp, ''))}")
        lines.append("\t\t;;")
    lines += ["\t*) return 1 ;;", "\tesac", "}", ""]
    return "\n".join(lines).encode("utf-8")
