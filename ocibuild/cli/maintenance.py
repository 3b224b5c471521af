"""``ocibuild gc``, ``ocibuild fsck`` and ``ocibuild ledger``: housekeeping of the scratch directory.

Thin: parse, call ``ocibuild.ledger``, print. Imports stay light (typer only) so ``--help`` is fast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import typer

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True)

_SCRATCH = typer.Option(
    None, "--scratch", envvar="OCIBUILD_SCRATCH", metavar="DIR",
    help="Scratch directory (default: $XDG_CACHE_HOME/ocibuild).",
)
_JSON = typer.Option(False, "--json", help="Print a JSON document.")


def _registry_options(ctx: typer.Context) -> Callable[[], Any]:
    """A factory, not the options: building them imports the registry client (``requests``), which
    ``gc`` needs only when a finished build pushed an ephemeral manifest to a registry."""
    from ocibuild.cli.options import global_options

    return global_options(ctx).registry_options


@app.command()
def gc(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be removed; remove nothing."),
    json_out: bool = _JSON,
    scratch: Optional[str] = _SCRATCH,
    grace: float = typer.Option(
        3600.0, "--grace", metavar="SECONDS", help="Keep unrecorded blobs younger than this.",
    ),
) -> None:
    """Remove finished builds' ephemeral manifests and every blob no root reaches."""
    from ocibuild.cli.output import emit, emit_json, error_line, human_size
    from ocibuild.ledger.gc import collect

    report = collect(scratch, dry_run=dry_run, grace_seconds=grace, registry_options=_registry_options(ctx))
    if json_out:
        emit_json(report.to_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        emit(f"{verb} {report.removed_blobs} blobs ({human_size(report.removed_bytes)}), "
             f"{report.removed_manifests} manifests; kept {report.kept}")
        for name in report.untagged:
            emit(f"{'would untag' if dry_run else 'untagged'} ephemeral {name}")
        for name in report.untagged_referrers:
            emit(f"{'would untag' if dry_run else 'untagged'} referrer {name} (its subject is gone)")
        for name in report.registry_deleted:
            emit(f"{'would delete' if dry_run else 'deleted'} {name}")
        if report.removed_rootfs:
            emit(f"{verb} {len(report.removed_rootfs)} extracted build-image layers")
    for err in report.errors:
        error_line(err)
    if report.aborted:
        raise typer.Exit(1)


@app.command()
def fsck(
    full: bool = typer.Option(False, "--full", help="Re-hash every blob, not only manifests and configs."),
    json_out: bool = _JSON,
    scratch: Optional[str] = _SCRATCH,
) -> None:
    """Check the scratch layout, the ledger and the blobs against each other (exit 1 on any problem)."""
    from ocibuild.cli.output import emit, emit_json
    from ocibuild.ledger.fsck import check

    report = check(scratch, full=full)
    if json_out:
        emit_json(report.to_dict())
    else:
        for problem in report.problems:
            emit(problem)
        if report.ok:
            emit(f"ok: {report.checked_manifests} manifests, {report.checked_blobs} reachable blobs checked")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def ledger(
    role: Optional[str] = typer.Option(None, "--role", metavar="ROLE", help="Only rows with this role."),
    lease: Optional[str] = typer.Option(None, "--lease", metavar="ID", help="Only rows created by this lease."),
    ephemeral: Optional[bool] = typer.Option(
        None, "--ephemeral/--no-ephemeral", help="Only ephemeral (or only permanent) rows.",
    ),
    location: Optional[str] = typer.Option(None, "--location", metavar="LOC", help="Only rows at this location."),
    json_out: bool = _JSON,
    scratch: Optional[str] = _SCRATCH,
) -> None:
    """List what the ledger recorded: digest, role, lease, where it lives."""
    from ocibuild.cli.output import emit, emit_json
    from ocibuild.ledger.lease import lease_state
    from ocibuild.ledger.scratch import Scratch

    sc = Scratch.resolve(scratch)
    if not sc.ledger_path.exists():
        rows, leases = [], []
    else:
        with sc.open_ledger() as db:
            rows = db.query(role=role, lease=lease, ephemeral=ephemeral, location=location)
            leases = db.leases()
    if json_out:
        emit_json({
            "objects": [r.to_dict() for r in rows],
            "leases": [{**l.to_dict(), "state": lease_state(l)} for l in leases if lease is None or l.id == lease],
        })
        return
    for r in rows:
        flag = "ephemeral" if r.ephemeral else "-"
        emit(f"{r.digest}  {r.role:<18} {flag:<9} {r.size:>10}  {(r.lease_id or '-')[:12]:<12}  {r.location}")


def register(root: typer.Typer) -> None:
    """Add ``gc``, ``fsck`` and ``ledger`` as top-level commands of the ``ocibuild`` app."""
    for command in (gc, fsck, ledger):
        root.command()(command)
