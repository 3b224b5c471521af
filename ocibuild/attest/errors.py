"""Failures of signing and verification: one line each, never a key's bytes or its password."""

from __future__ import annotations

from ocibuild.errors import OCIBuildError, UsageError


class KeyProblem(UsageError):
    """A key that cannot be read: missing, not PEM, wrong password, not ECDSA P-256 (exit 2)."""


class VerificationFailed(OCIBuildError):
    """A signature or an attachment that does not check out (exit 1); the message says which check failed."""
