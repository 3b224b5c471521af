"""``ocibuild builder create|inspect``: thin wrappers over ``ocibuild.cnb.builder_config`` and ``builder``."""

from __future__ import annotations

from typing import Any, Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_json, note

builder_app = typer.Typer(name="builder", help="Create and inspect buildpacks builders.", no_args_is_help=True)


def _platform(value: Optional[str]) -> Any:
    if not value:
        return None
    from ocibuild.oci.descriptor import Platform

    return Platform.parse(value)


@builder_app.command("create")
def create(
    ctx: typer.Context,
    config: str = typer.Option(..., "-c", "--config", metavar="BUILDER_TOML", help="pack's builder.toml."),
    tag: str = typer.Option(..., "-t", "--tag", metavar="REF", help="Where to write the builder (oci:DIR:TAG or a registry reference)."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH", help="Build image platform (default: the host's)."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a builder from a builder.toml (no daemon; base layers are referenced, not rebuilt)."""
    from ocibuild.cnb.builder_config import create_builder, read_builder_config

    opts = global_options(ctx)
    result, desc = create_builder(read_builder_config(config), tag, platform=_platform(platform),
                                  default_registry=opts.registry, options=opts.registry_options())
    if json_output:
        emit_json({"reference": tag, "digest": str(desc.digest), "mediaType": desc.media_type, "size": desc.size,
                   "new_layers": [str(d.digest) for d in result.new_layers]})
    else:
        note(f"created builder {tag} ({len(result.new_layers)} new layers)", opts.quiet)
        emit(str(desc.digest))


@builder_app.command("inspect")
def inspect(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH", help="Platform of a multi-arch builder."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Show a builder's run images, buildpacks, detection order, lifecycle and APIs."""
    from ocibuild.cnb.builder import inspect_builder, open_builder
    from ocibuild.errors import UsageError
    from ocibuild.store.open import open_reference

    opts = global_options(ctx)
    store, identifier = open_reference(ref, opts.registry, opts.registry_options())
    if identifier is None:
        raise UsageError(f"{ref}: name an image (oci:DIR:TAG)")
    info = inspect_builder(open_builder(store, identifier, platform=_platform(platform), name=ref))
    if json_output:
        emit_json(info)
        return
    emit(f"Inspecting builder: {ref}")
    emit(f"Digest: {info['digest']}  Platform: {info['platform']}")
    if info["description"]:
        emit(f"Description: {info['description']}")
    created = info["created_by"]
    if created:
        emit(f"Created By:\n  Name: {created.get('name', '')}\n  Version: {created.get('version', '')}")
    emit(f"Stack:\n  ID: {info['stack']['id'] or '(none)'}")
    emit("Run Images:")
    for r in info["run_images"] or [{"name": "(none)", "mirrors": []}]:
        emit(f"  {r['name']}" + "".join(f"\n  {m} (mirror)" for m in r["mirrors"]))
    life = info["lifecycle"]
    emit("Lifecycle:")
    emit(f"  Version: {life['version'] or '(none)'}")
    for kind, key in (("Buildpack APIs", "buildpack_apis"), ("Platform APIs", "platform_apis")):
        emit(f"  {kind}:\n    Deprecated: {', '.join(life[key]['deprecated']) or '(none)'}"
             f"\n    Supported: {', '.join(life[key]['supported']) or '(none)'}")
    native = info["native_lifecycle"]
    emit(f"Native lifecycle (ocibuild {native['version']}, runs the builds; Platform API {native['platform-api']}):")
    for kind, key in (("Buildpack APIs", "buildpack"), ("Platform APIs", "platform")):
        emit(f"  {kind}:\n    Supported: {', '.join(native['apis'][key]['supported'])}")
    for phase in ("pre", "post"):
        if info["system_buildpacks"][phase]:
            emit(f"System Buildpacks ({phase}):")
            for ref_ in info["system_buildpacks"][phase]:
                emit(f"  {ref_.get('id')}@{ref_.get('version', '')}" + ("    (optional)" if ref_.get("optional") else ""))
    for title, modules, order_key in (("Buildpacks", "buildpacks", "detection_order"),
                                      ("Extensions", "extensions", "detection_order_extensions")):
        if title == "Extensions" and not info[modules] and not info[order_key]:
            continue  # pack shows extensions only when the builder has some
        _modules_and_order(title, info[modules], info[order_key])


def _modules_and_order(title: str, modules: list, order: list) -> None:
    emit(f"{title}:")
    if not modules:
        emit("  (none)")
    for bp in modules:
        emit(f"  {bp['id']}@{bp['version']}" + (f"  {bp['homepage']}" if bp["homepage"] else ""))
    emit("Detection Order:" if title == "Buildpacks" else "Detection Order (Extensions):")
    if not order:
        emit("  (none)")
    for i, group in enumerate(order, 1):
        emit(f"  Group #{i}:")
        for ref_ in group["group"]:
            name = ref_["id"] + (f"@{ref_['version']}" if ref_.get("version") else "")
            emit(f"    {name}" + ("    (optional)" if ref_.get("optional") else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(builder_app, name="builder")
