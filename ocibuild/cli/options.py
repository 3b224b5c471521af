"""The global options every command sees (``--registry``, ``--insecure-registry``, ...).

Stored on the typer context by ``main``; commands and sub-apps read them with ``global_options(ctx)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer


@dataclass(frozen=True)
class GlobalOptions:
    registry: str | None = None
    insecure_registries: tuple[str, ...] = ()
    ca_cert: str | None = None
    debug: bool = False
    quiet: bool = False

    def registry_options(self) -> Any:
        """A ``RegistryOptions`` for these flags; imported lazily (light: no ``requests``)."""
        from ocibuild.oci.reference import normalize_registry
        from ocibuild.store.options import RegistryOptions

        insecure = frozenset(normalize_registry(h) for h in self.insecure_registries)
        return RegistryOptions(insecure=insecure, ca_cert=self.ca_cert)

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments for the ``ocibuild.api`` functions."""
        return {"registry": self.registry, "options": self.registry_options()}


def global_options(ctx: typer.Context) -> GlobalOptions:
    root = ctx.find_root()
    obj = root.obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()
