"""Image commands: copy, inspect, config, digest, tags, delete, login, logout, append, mutate, unpack.

Thin by design: parse arguments, call ``ocibuild.api`` / the library, print. Imports of the
library happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_bytes, emit_json, human_size, note


def _platforms(values: list[str] | None) -> list[Any] | None:
    if not values:
        return None
    from ocibuild.oci.descriptor import Platform

    return [Platform.parse(v) for v in values]


def _platform(value: str | None) -> Any:
    if not value:
        return None
    from ocibuild.oci.descriptor import Platform

    return Platform.parse(value)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    from ocibuild.errors import UsageError

    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} needs KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def copy(
    ctx: typer.Context,
    src: str = typer.Argument(..., metavar="SRC", help="oci:DIR[:TAG], docker://REF or REF"),
    dst: str = typer.Argument(..., metavar="DST", help="oci:DIR[:TAG], docker://REF or REF"),
    platform: list[str] = typer.Option([], "--platform", metavar="OS/ARCH[/VARIANT]", help="Copy only this platform of an index (repeatable)."),
    all_platforms: bool = typer.Option(False, "--all-platforms", help="Copy an index whole, byte for byte (the default)."),
    jobs: int = typer.Option(4, "--jobs", "-j", min=1, max=64, help="Blobs copied in parallel."),
    referrers: bool = typer.Option(False, "--referrers", help="Also copy signatures, SBOMs and other referrers."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Copy an image or index between layouts and registries; prints the digest last."""
    from ocibuild import api
    from ocibuild.transfer.progress import make_progress

    opts = global_options(ctx)
    with make_progress(opts.quiet) as sink:
        desc = api.copy(
            src, dst, platforms=_platforms(platform), all_platforms=all_platforms, jobs=jobs,
            progress=sink, referrers=referrers, **opts.store_args(),
        )
    stats = sink.stats.to_dict()
    if as_json:
        emit_json({
            "source": src, "destination": dst, "digest": str(desc.digest), "mediaType": desc.media_type,
            "size": desc.size, **stats,
        })
        return
    counts, sizes = stats["blobs"], stats["bytes"]
    note(
        f"copied {counts['copied']} blobs ({human_size(sizes['copied'])}), skipped {counts['skipped']}, "
        f"mounted {counts['mounted']}",
        opts.quiet,
    )
    emit(str(desc.digest))


def inspect(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="Describe this image of an index."),
    raw: bool = typer.Option(False, "--raw", help="Print the exact manifest bytes (with --platform: that image's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Describe an image: digest, media type, platforms, layers, config."""
    from ocibuild import api

    opts = global_options(ctx)
    if raw:
        if as_json:
            from ocibuild.errors import UsageError

            raise UsageError("--raw and --json exclude each other (the raw manifest is JSON already)")
        _, data = api.manifest(ref, platform=_platform(platform), **opts.store_args())
        emit_bytes(data)
        return
    info = api.inspect(ref, platform=_platform(platform), **opts.store_args())
    if as_json:
        emit_json(info)
        return
    _print_summary(info)


def _print_summary(info: dict[str, Any]) -> None:
    emit(f"Reference:  {info['reference']}")
    if "index" in info:
        emit(f"Index:      {info['index']}")
    emit(f"Digest:     {info['digest']}")
    emit(f"Media type: {info['mediaType']}")
    if "manifests" in info:
        emit(f"Manifests:  {len(info['manifests'])}")
        for entry in info["manifests"]:
            where = entry.get("platform", "-")
            emit(f"  {where:<20} {entry['digest']}  {human_size(entry['size'])}")
        return
    if info.get("platform"):
        emit(f"Platform:   {info['platform']}")
    if info.get("created"):
        emit(f"Created:    {info['created']}")
    if info.get("artifactType"):
        emit(f"Artifact:   {info['artifactType']}")
    emit(f"Config:     {info['config']['digest']}")
    emit(f"Layers:     {len(info['layers'])} ({human_size(info['layersSize'])})")
    for layer in info["layers"]:
        emit(f"  {layer['digest']}  {human_size(layer['size']):>10}  {layer['mediaType']}")
    for key, label in (("entrypoint", "Entrypoint"), ("cmd", "Cmd")):
        if info.get(key):
            emit(f"{label + ':':<12}{' '.join(info[key])}")
    for key, label in (("user", "User"), ("workingDir", "WorkingDir")):
        if info.get(key):
            emit(f"{label + ':':<12}{info[key]}")
    if info.get("env"):
        emit("Env:")
        for item in info["env"]:
            emit(f"  {item}")
    if info.get("labels"):
        emit("Labels:")
        for key in sorted(info["labels"]):
            emit(f"  {key}={info['labels'][key]}")
    if info.get("cnb"):
        from ocibuild.cnb.inspect import cnb_lines

        emit("")
        for line in cnb_lines(info["cnb"]):
            emit(line)


def config(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index (default: this machine)."),
) -> None:
    """Print the exact config blob bytes."""
    from ocibuild import api

    _, data = api.config(ref, platform=_platform(platform), **global_options(ctx).store_args())
    emit_bytes(data)


def digest(ctx: typer.Context, ref: str = typer.Argument(..., metavar="REF")) -> None:
    """Print the digest of the manifest REF names."""
    from ocibuild import api

    emit(str(api.digest(ref, **global_options(ctx).store_args())))


def tags(
    ctx: typer.Context,
    repo: str = typer.Argument(..., metavar="REPO"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """List the tags of a repository or layout, sorted."""
    from ocibuild import api

    names = api.tags(repo, **global_options(ctx).store_args())
    if as_json:
        emit_json(names)
    else:
        for name in names:
            emit(name)


def delete(ctx: typer.Context, ref: str = typer.Argument(..., metavar="REF")) -> None:
    """Delete a tag, or a manifest by digest."""
    from ocibuild import api

    opts = global_options(ctx)
    api.delete(ref, **opts.store_args())
    note(f"deleted {ref}", opts.quiet)


def login(
    ctx: typer.Context,
    registry: str = typer.Argument(..., metavar="REGISTRY"),
    username: str = typer.Option(..., "--username", "-u"),
    password: Optional[str] = typer.Option(None, "--password", "-p", help="Prefer --password-stdin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
) -> None:
    """Check credentials against a registry and store them (docker's config.json)."""
    from ocibuild.errors import UsageError
    from ocibuild.store.registry.credentials import login as do_login

    if password_stdin:
        if password is not None:
            raise UsageError("--password and --password-stdin exclude each other")
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("login needs a password: --password-stdin or -p")
    opts = global_options(ctx)
    path = do_login(registry, username, password, options=opts.registry_options())
    note(f"login succeeded; credentials stored in {path}", opts.quiet)


def logout(ctx: typer.Context, registry: str = typer.Argument(..., metavar="REGISTRY")) -> None:
    """Forget the stored credentials for a registry."""
    from ocibuild.store.registry.credentials import logout as do_logout

    opts = global_options(ctx)
    if do_logout(registry):
        note(f"removed credentials for {registry}", opts.quiet)
    else:
        note(f"not logged in to {registry}", opts.quiet)


def _argv(value: str | None) -> list[str] | None:
    """``--entrypoint``/``--cmd``: a JSON array (exec form) or a shell-quoted string; ``""`` clears."""
    if value is None:
        return None
    from ocibuild.errors import UsageError

    text = value.strip()
    if text.startswith("["):
        import json

        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"not a JSON array of strings: {value!r}") from None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise UsageError(f"not a JSON array of strings: {value!r}")
        return parsed
    import shlex

    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"cannot split {value!r}: {exc}") from None


def append(
    ctx: typer.Context,
    base: str = typer.Argument(..., metavar="BASE"),
    layers: list[str] = typer.Argument(..., metavar="LAYER...", help="Directories or tarballs, one layer each."),
    tag: str = typer.Option(..., "--tag", "-t", metavar="DST", help="Where to write the new image."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index base."),
) -> None:
    """Add layers to an image; prints the new digest."""
    from ocibuild import api

    desc = api.append(base, layers, tag, platform=_platform(platform), **global_options(ctx).store_args())
    emit(str(desc.digest))


def mutate(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    tag: str = typer.Option(..., "--tag", "-t", metavar="DST", help="Where to write the new image."),
    env: list[str] = typer.Option([], "--env", "-e", metavar="K=V", help="Set an environment variable (repeatable)."),
    entrypoint: Optional[str] = typer.Option(None, "--entrypoint", help='JSON array or shell words; "" clears.'),
    cmd: Optional[str] = typer.Option(None, "--cmd", help='JSON array or shell words; "" clears.'),
    label: list[str] = typer.Option([], "--label", "-l", metavar="K=V", help="Set a label (repeatable)."),
    user: Optional[str] = typer.Option(None, "--user", "-u"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w"),
    annotation: list[str] = typer.Option([], "--annotation", "-a", metavar="K=V", help="Manifest annotation (repeatable)."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index."),
) -> None:
    """Edit an image's config (env, entrypoint, cmd, labels, user, workdir) and annotations."""
    from ocibuild import api

    desc = api.mutate(
        ref, tag,
        env=_pairs(env, "--env") or None, entrypoint=_argv(entrypoint), cmd=_argv(cmd),
        labels=_pairs(label, "--label") or None, user=user, workdir=workdir,
        annotations=_pairs(annotation, "--annotation") or None, platform=_platform(platform),
        **global_options(ctx).store_args(),
    )
    emit(str(desc.digest))


def unpack(
    ctx: typer.Context,
    ref: str = typer.Argument(..., metavar="REF"),
    directory: str = typer.Argument(..., metavar="DIR"),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="For an index (default: this machine)."),
) -> None:
    """Extract an image's root filesystem into DIR (verified, whiteouts applied)."""
    from ocibuild import api

    opts = global_options(ctx)
    desc = api.unpack(ref, directory, platform=_platform(platform), **opts.store_args())
    note(f"unpacked {desc.digest} into {directory}", opts.quiet)


def register(app: typer.Typer) -> None:
    for command in (copy, inspect, config, digest, tags, delete, login, logout, append, mutate, unpack):
        app.command()(command)
