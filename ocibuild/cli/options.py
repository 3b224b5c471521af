"""The global options every command sees (``--registry``, ``--insecure-registry``, ...).

They are accepted before the command (``ocibuild --registry R build ...``) and after it
(``ocibuild build ... --registry R``), as pack users type them. ``main`` stores the ones given before
the command on the root context; ``inject_global_options`` adds the same options to every command of
the click tree once, when the tree is made, and merges what a command was given over them (the
command's value wins; ``--insecure-registry`` lists add up; a flag given anywhere is on). Commands and
sub-apps read the result with ``global_options(ctx)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import typer
from typer.core import TyperOption

try:  # typer >= 0.28 carries its own click
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import get_current_context

def env_insecure_registries() -> tuple[str, ...]:
    """``CNB_INSECURE_REGISTRIES`` (Platform API 0.13): comma-separated hosts, added to
    ``--insecure-registry`` as the lifecycle adds them to its own."""
    return tuple(h.strip() for h in os.environ.get("CNB_INSECURE_REGISTRIES", "").split(",") if h.strip())


#: Where the merged options of the running command are kept (``ctx.meta`` is shared by the whole chain).
META_KEY = "ocibuild.global_options"


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

        hosts = (*self.insecure_registries, *env_insecure_registries())
        insecure = frozenset(normalize_registry(h) for h in hosts)
        return RegistryOptions(insecure=insecure, ca_cert=self.ca_cert)

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments for the ``ocibuild.api`` functions."""
        return {"registry": self.registry, "options": self.registry_options()}

    def overridden(self, *, registry: str | None, insecure: tuple[str, ...], ca_cert: str | None,
                   debug: bool, quiet: bool) -> GlobalOptions:
        """These options with what a command was given after its name laid over them."""
        return replace(
            self,
            registry=registry or self.registry,
            insecure_registries=tuple(dict.fromkeys(self.insecure_registries + insecure)),
            ca_cert=ca_cert or self.ca_cert,
            debug=self.debug or debug,
            quiet=self.quiet or quiet,
        )


def global_options(ctx: Any) -> GlobalOptions:
    merged = ctx.meta.get(META_KEY)
    if isinstance(merged, GlobalOptions):
        return merged
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def check_ca_cert(ca_cert: str | None) -> None:
    """Checked when parsed: requests would only say "no suitable TLS CA certificate bundle" at the first request."""
    if ca_cert and not os.path.isfile(ca_cert):
        raise typer.BadParameter(f"{ca_cert}: no such file", param_hint="--ca-cert / OCIBUILD_CA_CERT")


# Help texts shared by the root callback and the injected copies, so both places say the same.
REGISTRY_HELP = "Registry for short image names (default: Docker Hub)."
INSECURE_HELP = "Speak plain HTTP / skip TLS checks to HOST (repeatable; CNB_INSECURE_REGISTRIES adds a comma-separated list)."
CA_CERT_HELP = "Extra CA certificate(s) to trust."
DEBUG_HELP = "Show tracebacks on errors."
QUIET_HELP = "No progress bars or notes."

# Parameter names that no command function uses: ``login REGISTRY`` has a ``registry`` argument.
_NAMES = ("ocibuild_registry", "ocibuild_insecure", "ocibuild_ca_cert", "ocibuild_debug", "ocibuild_quiet")


def _command_options() -> list[TyperOption]:
    """Fresh click options (a click parameter belongs to one command). No envvar here: the
    environment is read once, before the command, so it never beats a flag given before the command."""
    return [
        TyperOption(param_decls=["--registry", _NAMES[0]], metavar="HOST[:PORT]", help=REGISTRY_HELP),
        TyperOption(param_decls=["--insecure-registry", _NAMES[1]], multiple=True, metavar="HOST[:PORT]",
                    help=INSECURE_HELP),
        TyperOption(param_decls=["--ca-cert", _NAMES[2]], metavar="PEM", help=CA_CERT_HELP),
        TyperOption(param_decls=["--debug", _NAMES[3]], is_flag=True, default=False, help=DEBUG_HELP),
        TyperOption(param_decls=["-q", "--quiet", _NAMES[4]], is_flag=True, default=False, help=QUIET_HELP),
    ]


def inject_global_options(command: Any) -> None:
    """Give ``command`` (every command under it, for a group) the global options it does not define
    itself; its callback merges them into ``ctx.meta[META_KEY]`` before the command body runs."""
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):  # a group
        for sub in subcommands.values():
            inject_global_options(sub)
        return
    if command.callback is None or getattr(command.callback, "_ocibuild_globals", False):
        return
    taken = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    added = [opt for opt in _command_options() if not taken.intersection(opt.opts)]
    command.params.extend(added)
    command.callback = _merging(command.callback, tuple(opt.name for opt in added if opt.name))


def _merging(callback: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., Any]:
    def merge_then_run(**kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in names}
        ctx = get_current_context()
        ca_cert = given.get(_NAMES[2])
        check_ca_cert(ca_cert)
        ctx.meta[META_KEY] = global_options(ctx).overridden(
            registry=given.get(_NAMES[0]) or None,
            insecure=tuple(given.get(_NAMES[1]) or ()),
            ca_cert=ca_cert or None,
            debug=bool(given.get(_NAMES[3])),
            quiet=bool(given.get(_NAMES[4])),
        )
        return callback(**kwargs)

    merge_then_run._ocibuild_globals = True  # type: ignore[attr-defined]
    return merge_then_run
