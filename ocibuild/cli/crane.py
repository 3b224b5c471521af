"""crane's verbs: tag, catalog, blob, export, flatten, validate (``manifest REF`` lives in ``image``)."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_json, note


def _platform(value: str | None):  # noqa: ANN202
    if not value:
        return None
    from ocibuild.oci.descriptor import Platform

    return Platform.parse(value)


def tag(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="IMAGE"),
    new_tag: str = typer.Argument(..., metavar="TAG", help="The new tag, in IMAGE's repository or layout."),
) -> None:
    """Tag an image again where it is: the manifest is put under TAG, no blob moves (crane tag)."""
    from ocibuild import api

    desc = api.tag(ref, new_tag, **global_options(ctx).store_args())
    emit(str(desc.digest))


def catalog(
    ctx: typer.Context,
    registry: str = typer.Argument(..., metavar="REGISTRY", help="HOST[:PORT]"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """List the repositories of a registry (its _catalog, every page)."""
    from ocibuild import api

    names = api.catalog(registry, options=global_options(ctx).registry_options())
    if as_json:
        emit_json(names)
        return
    for name in names:
        emit(name)


class _AtomicOutput:
    """``-o FILE``: a temp file in FILE's directory, renamed over FILE only when all went well."""

    def __init__(self, path: str):
        import tempfile

        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            from ocibuild.errors import UsageError

            raise UsageError(f"{path}: is a directory")
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=directory)
        self.fh = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.fh.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _to_output(output: str | None, write_to) -> None:  # noqa: ANN001
    """Run ``write_to(binary_stream)`` into ``output`` atomically, or into stdout (``-`` or none)."""
    if output in (None, "-"):
        sys.stdout.flush()
        write_to(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        from ocibuild.errors import UsageError

        raise UsageError(f"{output}: directory {os.path.dirname(os.path.abspath(output))} does not exist")
    target = _AtomicOutput(output)
    try:
        write_to(target.fh)
        target.commit()
    except BaseException:
        target.discard()
        raise


def blob(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REPO@DIGEST", help="docker://REPO@sha256:…, REPO@… or oci:DIR@…"),
    output: Optional[str] = typer.Option(None, "-o", "--output", metavar="FILE", help="Write here (default: stdout)."),
) -> None:
    """Stream one blob, verified against its digest (crane blob)."""
    from ocibuild import api

    args = global_options(ctx).store_args()
    _to_output(output, lambda out: api.blob(ref, out.write, **args))


def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="IMAGE"),
    output: Optional[str] = typer.Argument(None, metavar="[FILE]", help="Tar file to write; - or none: stdout."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index (default: this machine)."),
) -> None:
    """Write the image's flattened file system as a tar, whiteouts applied (crane export)."""
    from ocibuild import api

    args = global_options(ctx).store_args()
    if output in (None, "-") and sys.stdout.isatty():
        from ocibuild.errors import UsageError

        raise UsageError("export writes a tar: give a FILE or redirect stdout")
    plat = _platform(platform)
    _to_output(output, lambda out: api.export(ref, out, platform=plat, **args))


def flatten(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="IMAGE"),
    tag_: str = typer.Option(..., "--tag", "-t", metavar="DST", help="Where to write the one-layer image."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index."),
) -> None:
    """Make a one-layer image of IMAGE (same file system and config); prints its digest (crane flatten)."""
    from ocibuild import api

    desc = api.flatten(ref, tag_, platform=_platform(platform), **global_options(ctx).store_args())
    emit(str(desc.digest))


def validate(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="IMAGE"),
    fast: bool = typer.Option(False, "--fast", help="Layers: presence and size only, not their content."),
    schemas: Optional[str] = typer.Option(None, "--schemas", metavar="DIR", envvar="OCIBUILD_SCHEMA_DIR",
                                          help="image-spec JSON Schema directory (checked when given)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check an image or index: digests, sizes, media types, diff_ids, schemas (crane validate)."""
    from ocibuild import api
    from ocibuild.errors import OCIBuildError

    opts = global_options(ctx)
    report = api.validate(ref, fast=fast, schemas=schemas, **opts.store_args())
    if as_json:
        emit_json(report.to_dict())
    else:
        for line in report.checked:
            emit(f"ok    {line}")
        for line in report.problems:
            emit(f"FAIL  {line}")
        emit(f"schemas: {report.schemas}")
    if not report.ok:
        raise OCIBuildError(f"{ref}: {len(report.problems)} problem(s): {report.problems[0]}")


def register(app: typer.Typer) -> None:
    for command in (tag, catalog, blob, export, flatten, validate):
        app.command()(command)
