"""Session-wide fixtures: real registries (plain, Basic auth, TLS) and unique repository names."""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# ``support`` is imported as a top-level package whatever pytest's import mode or rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.registry import RegistryServer, start_registry


def _started(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp(f"registry-{kind}"), kind)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry shared by the whole session (use ``fresh_repo`` to stay isolated)."""
    yield from _started(tmp_path_factory, "plain")


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd Basic auth: ``.username``, ``.password`` (the sentinel)."""
    yield from _started(tmp_path_factory, "basic")


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An HTTPS registry whose certificate is signed by a private CA at ``.ca_cert``."""
    yield from _started(tmp_path_factory, "tls")


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start private registries for tests that need one to themselves.

    ``factory(kind="plain", config_overrides=None)``; each is stopped when the test ends.
    """
    servers: list[RegistryServer] = []

    def factory(kind: str = "plain", **kwargs: Any) -> RegistryServer:
        server = start_registry(tmp_path_factory.mktemp(f"registry-{kind}"), kind, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def fresh_repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, derived from the test name (``test/<name>-<hex>``)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "t"
    return f"test/{name}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def sentinel_password() -> str:
    """The unusual password of ``basic_registry``; hardening tests grep outputs for it."""
    from support.registry import SENTINEL_PASSWORD

    return SENTINEL_PASSWORD


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
