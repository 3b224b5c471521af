"""``buildpack package``: pack's buildpackage, as an image (registry, layout, archive) or a .cnb file."""

from __future__ import annotations

from typing import Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit

buildpack_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                            help="Buildpacks: package them as pack does.")


@buildpack_app.command()
def package(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="Image reference (--format image) or .cnb path (--format file)."),
    config: str = typer.Option("package.toml", "--config", "-c", metavar="PATH", help="The package.toml."),
    fmt: str = typer.Option("image", "--format", "-f", help="image or file."),
    target: Optional[str] = typer.Option(None, "--target", metavar="OS/ARCH[/VARIANT]",
                                         help="Platform of the package (default: package.toml's first target)."),
    publish: bool = typer.Option(False, "--publish", help="Accepted for pack's sake: images always go to NAME."),
) -> None:
    """Package a buildpack and its dependencies (one layer each); prints the manifest digest."""
    from ocibuild import api
    from ocibuild.oci.descriptor import Platform

    del publish  # no daemon: an image is always written where NAME says
    desc = api.package_buildpack(config, name, fmt=fmt, target=Platform.parse(target) if target else None,
                                 **global_options(ctx).store_args())
    emit(str(desc.digest))


def register(app: typer.Typer) -> None:
    app.add_typer(buildpack_app, name="buildpack")
