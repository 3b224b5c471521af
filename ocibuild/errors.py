"""Errors that ocibuild raises on purpose.

Every ``OCIBuildError`` is a user-facing failure: the CLI prints ``str(err)`` on one line and exits
with ``err.exit_code`` (a traceback only with ``--debug``). Anything else escaping is a bug.
Messages never contain credentials: callers pass hosts and repositories, never URLs with userinfo.
"""

from __future__ import annotations


class OCIBuildError(Exception):
    """Base class: a failure explained to the user in one line."""

    exit_code = 1


class UsageError(OCIBuildError):
    """The command line or an input file asks for something impossible (exit 2)."""

    exit_code = 2


class InvalidReference(UsageError):
    """A string that is not an image reference, digest or platform."""


class InvalidDigest(InvalidReference):
    """A string that does not match the image-spec digest grammar."""


class ManifestError(OCIBuildError):
    """A manifest, index or config that cannot be parsed or is inconsistent."""


class DigestMismatch(OCIBuildError):
    """Content whose bytes do not hash to the digest (or size) it was announced with."""


class NotFound(OCIBuildError):
    """A manifest, blob, tag or repository that does not exist."""


class AuthError(OCIBuildError):
    """Authentication or authorisation failed."""


class RegistryError(OCIBuildError):
    """A registry answered with an error the client cannot recover from."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class UnsafeContent(OCIBuildError):
    """Archive or path content that would escape its target (path traversal, devices, ...)."""


class StoreError(OCIBuildError):
    """A local store (layout directory, ledger) is unusable or inconsistent."""
