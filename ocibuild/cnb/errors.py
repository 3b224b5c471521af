"""Buildpack-phase failures, each carrying the lifecycle's exit code and naming the buildpack at fault.

The codes are the lifecycle's (platform/exit.go, default exiter): a CI script that checks ``$?`` after
``pack build`` keeps working with ``ocibuild build``.
"""

from __future__ import annotations

from ocibuild.errors import OCIBuildError


class CNBError(OCIBuildError):
    """Base class of every buildpack-contract failure."""

    def __init__(self, message: str, *, buildpack: str | None = None):
        super().__init__(message)
        self.buildpack = buildpack


class DescriptorError(CNBError):
    """A buildpack.toml or order.toml that breaks the spec (bad id, missing field, bad type)."""

    exit_code = 2


class IncompatibleBuildpackAPI(DescriptorError):
    """A buildpack declares an API this implementation does not speak (lifecycle code 12)."""

    exit_code = 12


class BuildpackNotFound(DescriptorError):
    """An order names a buildpack id@version that is not in the buildpacks directory."""


class DetectFailed(CNBError):
    """No group passed detection and no buildpack errored (lifecycle code 20)."""

    exit_code = 20

    def __init__(self, message: str, *, log: tuple[str, ...] = (), buildpack: str | None = None):
        super().__init__(message, buildpack=buildpack)
        self.log = log


class DetectErrored(DetectFailed):
    """No group passed detection and at least one bin/detect errored (lifecycle code 21).

    ``report`` is what the lifecycle shows of it without ``-v``: each errored buildpack's output and
    its ``err:`` result line."""

    exit_code = 21

    def __init__(self, message: str, *, log: tuple[str, ...] = (), report: str = "", buildpack: str | None = None):
        super().__init__(message, log=log, buildpack=buildpack)
        self.report = report


class DetectError(CNBError):
    """Detection could not run at all (lifecycle code 22)."""

    exit_code = 22


class BuildpackError(CNBError):
    """A buildpack's bin/build failed (lifecycle code 51)."""

    exit_code = 51


class BuildError(CNBError):
    """A buildpack's outputs break the contract: layer flags outside [types], bad launch.toml (code 52)."""

    exit_code = 52


class ExportError(CNBError):
    """The exporter cannot assemble the image (lifecycle code 62)."""

    exit_code = 62


class RebaseError(CNBError):
    """The rebase is refused or impossible (lifecycle code 72)."""

    exit_code = 72


class CacheError(CNBError):
    """The cache is unreadable or cannot be written."""


class SandboxUnavailable(OCIBuildError):
    """The build paths (/layers, /workspace) cannot be placed: no mount namespace is available."""

    exit_code = 1
