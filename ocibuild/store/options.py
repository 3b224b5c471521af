"""How to reach registries: the options every command parses, importable without ``requests``.

Commands that never touch a registry (a build into a layout, gc, fsck) build these from their
flags too; keeping the class here keeps ``requests`` off their start-up path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ocibuild.oci.reference import DOCKER_HUB, DOCKER_HUB_API

DEFAULT_USER_AGENT = "ocibuild/0.1"


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries. Frozen and hashable: clients are cached per (host, options)."""

    insecure: frozenset[str] = frozenset()
    ca_cert: str | None = None
    timeout: float = 60.0
    retries: int = 5
    auth_file: str | None = None
    chunk_size: int = 64 * 1024 * 1024
    chunk_threshold: int = 256 * 1024 * 1024
    user_agent: str = DEFAULT_USER_AGENT
    max_retry_time: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.insecure, frozenset):
            object.__setattr__(self, "insecure", frozenset(self.insecure))

    def is_insecure(self, registry: str) -> bool:
        return registry in self.insecure or (registry == DOCKER_HUB and DOCKER_HUB_API in self.insecure)

    def verify_for(self, registry: str) -> bool | str:
        if self.is_insecure(registry):
            return False
        return self.ca_cert or os.environ.get("OCIBUILD_CA_CERT") or True
