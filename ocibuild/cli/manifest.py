"""``manifest``: pack's index commands (create, add, annotate, rm, remove, push, inspect) and, for
any first argument that is not one of them, crane's ``manifest REF`` (print the manifest bytes)."""

from __future__ import annotations

from typing import Any, Optional

import typer
from typer.core import TyperGroup

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_bytes, emit_json, note

GET = "get"


class ManifestGroup(TyperGroup):
    """A first argument that is no subcommand (an image reference, or an option such as
    ``--platform``) goes to ``get``: ``ocibuild manifest REF`` keeps meaning what crane's does."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [GET, *args]
        return super().parse_args(ctx, args)


manifest_app = typer.Typer(cls=ManifestGroup, no_args_is_help=True, add_completion=False,
                           rich_markup_mode=None,
                           help="Print a manifest (REF), or edit local image indexes and push them (pack manifest).")


def _indexes(ctx: typer.Context) -> Any:
    from ocibuild.ledger.scratch import Scratch
    from ocibuild.store.indexes import LocalIndexes

    opts = global_options(ctx)
    return LocalIndexes(Scratch.resolve(None).root / "manifests", registry=opts.registry,
                        options=opts.registry_options())


def _pairs(values: list[str]) -> dict[str, str]:
    from ocibuild.errors import UsageError

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--annotations needs KEY=VALUE, got {item!r}")
        out[key] = value
    return out


@manifest_app.command(GET)
def get(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]",
                                           help="For an index: print that platform's image manifest."),
) -> None:
    """Print the exact manifest (or index) bytes (crane manifest)."""
    from ocibuild import api
    from ocibuild.oci.descriptor import Platform

    _, data = api.manifest(ref, platform=Platform.parse(platform) if platform else None,
                           **global_options(ctx).store_args())
    emit_bytes(data)


def _push(ctx: typer.Context, indexes: Any, name: str, purge: bool) -> None:
    from ocibuild.transfer.progress import make_progress

    opts = global_options(ctx)
    with make_progress(opts.quiet) as sink:
        desc = indexes.push(name, progress=sink)
    if purge:
        indexes.delete(name)
    note(f"pushed {indexes.key(name)}", opts.quiet)
    emit(str(desc.digest))


@manifest_app.command()
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX", help="Name it will be pushed as (REPO:TAG or oci:DIR:TAG)."),
    images: list[str] = typer.Argument(..., metavar="IMAGE..."),
    fmt: str = typer.Option("oci", "--format", "-f", help="oci or docker (a manifest list)."),
    publish: bool = typer.Option(False, "--publish", help="Push it right away."),
) -> None:
    """Make a local index of IMAGEs (an index IMAGE adds all its entries)."""
    indexes = _indexes(ctx)
    index = indexes.create(name, images, fmt)
    note(f"created local index {indexes.key(name)} ({len(index.manifests)} manifests)", global_options(ctx).quiet)
    if publish:
        _push(ctx, indexes, name, purge=False)
    else:
        emit(str(index.digest))


@manifest_app.command()
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX"),
    images: list[str] = typer.Argument(..., metavar="IMAGE..."),
) -> None:
    """Add images to a local index (an image already there is replaced)."""
    emit(str(_indexes(ctx).add(name, images).digest))


@manifest_app.command()
def annotate(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX"),
    image: str = typer.Argument(..., metavar="IMAGE"),
    os_: Optional[str] = typer.Option(None, "--os"),
    arch: Optional[str] = typer.Option(None, "--arch"),
    variant: Optional[str] = typer.Option(None, "--variant"),
    os_version: Optional[str] = typer.Option(None, "--os-version"),
    annotations: list[str] = typer.Option([], "--annotations", metavar="K=V", help="Repeatable."),
) -> None:
    """Set the platform or annotations of one entry of a local index."""
    index = _indexes(ctx).annotate(name, image, os=os_, arch=arch, variant=variant, os_version=os_version,
                                   annotations=_pairs(annotations))
    emit(str(index.digest))


@manifest_app.command("rm")
def rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX"),
    image: str = typer.Argument(..., metavar="IMAGE"),
) -> None:
    """Remove one image from a local index."""
    emit(str(_indexes(ctx).remove_member(name, image).digest))


@manifest_app.command()
def remove(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., metavar="INDEX..."),
) -> None:
    """Delete local indexes (what was pushed stays in the registry)."""
    indexes = _indexes(ctx)
    for name in names:
        indexes.load(name)  # all exist, or nothing is deleted
    for name in names:
        indexes.delete(name)
        note(f"removed local index {indexes.key(name)}", global_options(ctx).quiet)


@manifest_app.command()
def push(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX"),
    purge: bool = typer.Option(False, "--purge", help="Delete the local index once pushed."),
) -> None:
    """Push a local index: each image's blobs and manifest into INDEX's repository, then the index."""
    _push(ctx, _indexes(ctx), name, purge)


@manifest_app.command()
def inspect(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="INDEX"),
) -> None:
    """Print a local index as it will be pushed (else the index in the registry)."""
    import json

    indexes = _indexes(ctx)
    if indexes.exists(name):
        emit_json(json.loads(indexes.published(name).raw))
        return
    from ocibuild import api

    _, data = api.manifest(name, **global_options(ctx).store_args())
    emit_bytes(data)


def register(app: typer.Typer) -> None:
    app.add_typer(manifest_app, name="manifest")
