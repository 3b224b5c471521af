"""External tools the tests drive for real (registry, skopeo, umoci, podman, ...).

A missing tool is a broken test environment, not a reason to skip: ``require_tool`` fails the test
with one line that names the tool and points at ``.ci/run``, which installs every one of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

DEFAULT_TIMEOUT = 120.0

#: Debian package that provides each tool, for the failure message.
PACKAGES: Mapping[str, str] = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "oci-image-tool": "oci-image-tool",
    "podman": "podman",
    "runc": "runc",
    "busybox": "busybox-static",
    "pigz": "pigz",
    "jq": "jq",
    "openssl": "openssl",
    "curl": "curl",
    "git": "git",
    "setpriv": "util-linux",
    "bwrap": "bubblewrap",
    "crun": "crun",
}


def missing_tool_message(name: str) -> str:
    package = PACKAGES.get(Path(name).name, Path(name).name)
    return (
        f"required tool {name!r} is not installed (Debian package {package!r}); "
        "run .ci/run (or ./run-tests as root), which installs it"
    )


def require_tool(name: str) -> str:
    """Return the absolute path of ``name`` (a command name or path), or fail the test."""
    if os.sep in name:
        if os.access(name, os.X_OK) and Path(name).is_file():
            return name
        pytest.fail(missing_tool_message(name), pytrace=False)
    found = shutil.which(name)
    if found is None:
        pytest.fail(missing_tool_message(name), pytrace=False)
    return found


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | str | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` with captured stdout/stderr and a timeout.

    The first element is resolved with ``require_tool`` so a missing program fails clearly.
    With ``check=True`` a non-zero exit fails the test with the command and its output.
    ``env`` entries are added to (not substituted for) the current environment.
    """
    argv = [os.fspath(c) for c in cmd]
    if not argv:
        raise ValueError("empty command")
    argv[0] = require_tool(argv[0])
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    if isinstance(input, str) and not text:
        input = input.encode()
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            input=input,
            text=text,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"command timed out after {timeout:g}s: {' '.join(argv)}", pytrace=False)
        raise AssertionError from exc  # unreachable; keeps type checkers happy
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed with exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}",
            pytrace=False,
        )
    return proc


def read_with_peers(ref: str, work: Path) -> tuple[dict, Path]:
    """The image at plain-HTTP registry ``ref`` as the peers read it: skopeo's ``inspect`` JSON, and the
    umoci bundle of skopeo's copy into an OCI layout (``work/skopeo-copy``, ``work/umoci-bundle``).
    Each step failing fails the test with its output."""
    import json

    inspected = json.loads(run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True).stdout)
    layout, bundle = work / "skopeo-copy", work / "umoci-bundle"
    run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:app"], check=True)
    run(["umoci", "unpack", "--rootless", "--image", f"{layout}:app", bundle], check=True)
    return inspected, bundle


def _tail(out: str | bytes | None, limit: int = 4000) -> str:
    if out is None:
        return ""
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    return out[-limit:]
