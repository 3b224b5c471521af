"""The ``ocibuild`` command: global options, error handling, and the registry of command modules.

Each command family lives in its own small module exposing ``register(app)``; adding a family is
one line in ``COMMAND_MODULES``. Modules imported here must stay light (typer only): heavy imports
(requests, rich progress, cryptography) happen inside the commands, so ``ocibuild --help`` is fast.
"""

from __future__ import annotations

import gc
import importlib
import sys
import traceback
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from ocibuild import __version__
from ocibuild.cli.options import GlobalOptions
from ocibuild.cli.output import error_line
from ocibuild.errors import OCIBuildError

COMMAND_MODULES: tuple[str, ...] = (
    "ocibuild.cli.image",  # copy, inspect, manifest, config, digest, tags, delete, login, logout, append, mutate, unpack
    "ocibuild.cli.build",  # build, rebase
    "ocibuild.cli.builder",  # builder create, builder inspect
    "ocibuild.cli.maintenance",  # gc, fsck, ledger
)


def _debug_requested(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj
    if isinstance(obj, GlobalOptions):
        return obj.debug
    return "--debug" in sys.argv[1:]


class OCIBuildGroup(TyperGroup):
    """Turns ``OCIBuildError`` into one line on stderr and its exit code; ``--debug`` adds the traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OCIBuildError as err:
            if _debug_requested(ctx):
                traceback.print_exc()
            error_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except OSError as err:
            if _debug_requested(ctx):
                traceback.print_exc()
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            error_line(f"{where}{err.strerror or err}")
            raise typer.Exit(1) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ocibuild {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    registry: Optional[str] = typer.Option(
        None, "--registry", envvar="OCIBUILD_REGISTRY", metavar="HOST[:PORT]",
        help="Registry for short image names (default: Docker Hub).",
    ),
    insecure_registry: list[str] = typer.Option(
        [], "--insecure-registry", metavar="HOST[:PORT]", help="Speak plain HTTP / skip TLS checks to HOST (repeatable).",
    ),
    ca_cert: Optional[str] = typer.Option(
        None, "--ca-cert", envvar="OCIBUILD_CA_CERT", metavar="PEM", help="Extra CA certificate(s) to trust.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or notes."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit.",
    ),
) -> None:
    """Daemonless OCI image manipulator and Cloud Native Buildpacks builder."""
    ctx.obj = GlobalOptions(
        registry=registry or None,
        insecure_registries=tuple(insecure_registry),
        ca_cert=ca_cert or None,
        debug=debug,
        quiet=quiet,
    )


def build_app() -> typer.Typer:
    app = typer.Typer(
        cls=OCIBuildGroup,
        name="ocibuild",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app)
    return app


app = build_app()


def run() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="ocibuild")
    finally:
        # The command is over and has closed what it opened (files, ledger, sessions). Freezing moves
        # every object to the permanent generation, so the interpreter's last cycle collection, which
        # would otherwise walk every module, class and function (50-70 ms after a build here), has
        # nothing to do; the process exits right after and its memory goes back whole.
        gc.freeze()


if __name__ == "__main__":
    run()
