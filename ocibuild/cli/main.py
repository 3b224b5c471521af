"""The ``ocibuild`` command: global options, error handling, and the registry of command modules.

Each command family lives in its own small module exposing ``register(app)``; adding a family is
one line in ``COMMAND_MODULES``. Modules imported here must stay light (typer only): heavy imports
(requests, rich progress, cryptography) happen inside the commands, so ``ocibuild --help`` is fast.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
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
    "ocibuild.cli.attest",  # sign, verify, referrers, sbom download, generate-key-pair
)


def _debug_requested(ctx: typer.Context) -> bool:
    obj = ctx.find_root().obj
    if isinstance(obj, GlobalOptions):
        return obj.debug
    return "--debug" in sys.argv[1:]


#: Exit status of a process whose stdout reader went away, as a shell reports one killed by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Signals that stop a command the way Ctrl-C does (CI cancels jobs with SIGTERM; SIGHUP: the terminal closed).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGHUP, so every ``finally`` runs as it does for Ctrl-C
    (the build's lease is released and its scratch collected; the buildpack's process group stopped)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    # Once: a second SIGTERM (CI runners often repeat it) must not cut the clean-up short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _ignore)
    raise Interrupted(signum)


def _ignore(_signum: int, _frame: Any) -> None:
    """A Python-level no-op (not SIG_IGN, which buildpacks started during clean-up would inherit)."""


def _install_stop_handlers() -> dict[int, Any]:
    """Route SIGTERM/SIGHUP to ``Interrupted``; returns the previous handlers. Signals the caller set
    to be ignored (``nohup``) stay ignored; nothing is installed off the main thread (in-process tests)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_interrupted)
    return previous


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class OCIBuildGroup(TyperGroup):
    """Turns ``OCIBuildError`` into one line on stderr and its exit code; ``--debug`` adds the traceback.

    SIGTERM/SIGHUP take Ctrl-C's path while a command runs; an interrupted command prints one line
    and exits 128 + the signal number (143 for SIGTERM, 130 for SIGINT). A reader that closed our
    stdout (``| head -1``) ends the command silently with 141, as Go tools killed by SIGPIPE do.
    """

    def invoke(self, ctx: Any) -> Any:
        previous = _install_stop_handlers()
        try:
            return self._invoke(ctx)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:
            signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            if _debug_requested(ctx):
                traceback.print_exc()
            error_line(f"interrupted ({signal.Signals(signum).name})")
            raise typer.Exit(128 + signum) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OCIBuildError as err:
            if _debug_requested(ctx):
                traceback.print_exc()
            error_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except EOFError as err:  # a truncated compressed stream read somewhere no reader names it
            if _debug_requested(ctx):
                traceback.print_exc()
            error_line(f"unexpected end of data: {err}")  # (click would print a bare "Aborted!")
            raise typer.Exit(1) from None
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
    if ca_cert and not os.path.isfile(ca_cert):
        # checked here: requests would only say "no suitable TLS CA certificate bundle" at the first request
        raise typer.BadParameter(f"{ca_cert}: no such file", param_hint="--ca-cert / OCIBUILD_CA_CERT")
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
        try:
            app(prog_name="ocibuild")
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is ours to handle
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    finally:
        # The command is over and has closed what it opened (files, ledger, sessions). Freezing moves
        # every object to the permanent generation, so the interpreter's last cycle collection, which
        # would otherwise walk every module, class and function (50-70 ms after a build here), has
        # nothing to do; the process exits right after and its memory goes back whole.
        gc.freeze()


if __name__ == "__main__":
    run()
