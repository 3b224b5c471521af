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
from ocibuild.cli.options import (
    CA_CERT_HELP,
    DEBUG_HELP,
    INSECURE_HELP,
    QUIET_HELP,
    REGISTRY_HELP,
    GlobalOptions,
    check_ca_cert,
    global_options,
    inject_global_options,
)
from ocibuild.cli.output import error_line
from ocibuild.errors import OCIBuildError

try:  # typer >= 0.28 carries its own click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError as ClickUsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import UsageError as ClickUsageError

    NoArgsIsHelpError = None  # type: ignore[assignment,misc]

COMMAND_MODULES: tuple[str, ...] = (
    "ocibuild.cli.image",  # copy, inspect, config, digest, tags, delete, login, logout, append, mutate, unpack
    "ocibuild.cli.build",  # build, rebase
    "ocibuild.cli.builder",  # builder create, builder inspect
    "ocibuild.cli.maintenance",  # gc, fsck, ledger
    "ocibuild.cli.crane",  # tag, catalog, blob, export, flatten, validate
    "ocibuild.cli.buildpack",  # buildpack package
    "ocibuild.cli.manifest",  # manifest REF (crane) and manifest create|add|annotate|rm|remove|push|inspect (pack)
    "ocibuild.cli.attest",  # sign, verify, referrers, sbom download, generate-key-pair
)


def _debug_requested(ctx: typer.Context) -> bool:
    return global_options(ctx).debug or "--debug" in sys.argv[1:]


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
    Every command under it also takes the global options after its name (``inject_global_options``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inject_global_options(self)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except ClickUsageError as err:
            raise _usage_exit(err) from None

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
        except ClickUsageError as err:
            raise _usage_exit(err) from None
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


def _usage_exit(err: Any) -> typer.Exit:
    """A command-line mistake (unknown flag, missing argument, bad value) as one line, exit 2."""
    if NoArgsIsHelpError is not None and isinstance(err, NoArgsIsHelpError):
        raise err  # the group's help, as asked
    ctx = getattr(err, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    error_line(err.format_message() + hint)
    return typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ocibuild {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    registry: Optional[str] = typer.Option(
        None, "--registry", envvar="OCIBUILD_REGISTRY", metavar="HOST[:PORT]",
        help=REGISTRY_HELP,
    ),
    insecure_registry: list[str] = typer.Option(
        [], "--insecure-registry", metavar="HOST[:PORT]", help=INSECURE_HELP,
    ),
    ca_cert: Optional[str] = typer.Option(
        None, "--ca-cert", envvar="OCIBUILD_CA_CERT", metavar="PEM", help=CA_CERT_HELP,
    ),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    quiet: bool = typer.Option(False, "-q", "--quiet", help=QUIET_HELP),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit.",
    ),
) -> None:
    """Daemonless OCI image manipulator and Cloud Native Buildpacks builder."""
    check_ca_cert(ca_cert)
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
