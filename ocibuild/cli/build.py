"""``ocibuild build`` and ``ocibuild rebase``: pack's flags, no daemon. Logic lives in ``ocibuild.cnb``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_json, note

if TYPE_CHECKING:
    from ocibuild.cnb.errors import DetectFailed


def _env(values: list[str], files: list[Path]) -> dict[str, str]:
    """``--env-file`` lines then ``--env`` (later wins); ``KEY`` alone takes the value from our env."""
    from ocibuild.errors import UsageError

    out: dict[str, str] = {}
    items: list[str] = []
    for path in files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read env file {path}: {exc.strerror}") from None
        items += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    items += values
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key:
            raise UsageError(f"--env needs KEY=VALUE, got {item!r}")
        out[key] = value if sep else os.environ.get(key, "")
    return out


def _creation_time(value: str | None) -> int | None:
    from ocibuild.errors import UsageError

    if value is None:
        return None
    if value == "now":
        return int(time.time())
    if not value.isdigit():
        raise UsageError(f"--creation-time takes UNIX seconds or 'now', got {value!r}")
    return int(value)


def _detect_report(err: DetectFailed, verbose: bool) -> str:
    """What a failed detection shows before its error line, as the lifecycle logs it: with ``-v``
    the whole log; otherwise what errored (the errored buildpacks' output and ``err:`` lines)."""
    from ocibuild.cnb.detect import NO_GROUP_MESSAGE
    from ocibuild.cnb.errors import DetectErrored

    if verbose:
        return "\n".join(line for line in err.log if line != NO_GROUP_MESSAGE)
    return err.report if isinstance(err, DetectErrored) else ""


def _run_build(run_build, options, quiet: bool):  # noqa: ANN001, ANN202
    """The pipeline with its notes on stderr; ``quiet`` drops them and the buildpacks' output too."""
    if not quiet:
        return run_build(options, say=note)
    # Buildpack output is written to whatever sys.stderr is when bin/build ends; the error line of a
    # failed build is printed after this block, on the real stderr.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        return run_build(options, say=lambda _msg: None)


def build(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE", help="Where the app image goes: REF or oci:DIR:TAG"),
    builder: Optional[str] = typer.Option(None, "--builder", "-B", help="Builder image (default: ocibuild's embedded busybox builder)."),
    path: Path = typer.Option(Path("."), "--path", "-p", help="App directory."),
    buildpack: list[str] = typer.Option([], "--buildpack", "-b", help="An existing path (directory, .tgz, .cnb), else id[@version] on the builder, else a buildpackage image reference (repeatable)."),
    extension: list[str] = typer.Option([], "--extension", help="An image extension: a directory or .tgz with extension.toml, else id[@version] on the builder; replaces the builder's order-extensions (repeatable)."),
    env: list[str] = typer.Option([], "--env", "-e", help="Build-time env KEY=VALUE (repeatable)."),
    env_file: list[Path] = typer.Option([], "--env-file", help="File of KEY=VALUE lines."),
    run_image: Optional[str] = typer.Option(None, "--run-image", help="Run image (default: the builder's)."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Another name for the image: image:tag or repository/image:tag on IMAGE's registry, or a tag of the same oci: layout (repeatable)."),
    cache_image: Optional[str] = typer.Option(None, "--cache-image", help="Keep the build cache as an image."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep the build cache in a directory."),
    clear_cache: bool = typer.Option(False, "--clear-cache", help="Do not restore the cache."),
    default_process: Optional[str] = typer.Option(None, "--default-process", "-D", help="Default process type."),
    creation_time: Optional[str] = typer.Option(None, "--creation-time", help="UNIX seconds or 'now' (default: SOURCE_DATE_EPOCH, else 1980-01-01T00:00:01Z)."),
    platform: Optional[str] = typer.Option(None, "--platform", metavar="OS/ARCH[/VARIANT]", help="Builder platform in an index."),
    sbom_output_dir: Optional[Path] = typer.Option(None, "--sbom-output-dir", help="Copy the SBOM files here."),
    descriptor: Optional[Path] = typer.Option(None, "--descriptor", "-d", help="project.toml (default: PATH/project.toml when present)."),
    workspace: str = typer.Option("/workspace", "--workspace", help="Where buildpacks and the image see the app."),
    layers_dir: str = typer.Option("/layers", "--layers-dir", help="Where buildpacks and the image see the layers."),
    network: str = typer.Option("host", "--network", metavar="host|none", help="Buildpacks' network: the host's (default) or none (loopback only)."),
    volume: list[str] = typer.Option([], "--volume", metavar="HOST:TARGET[:ro|:rw]", help="Mount a host path into the build environment, read-only unless :rw (repeatable)."),
    uid: Optional[int] = typer.Option(None, "--uid", help="Build user id (default: the builder's CNB_USER_ID)."),
    gid: Optional[int] = typer.Option(None, "--gid", help="Build group id (default: the builder's CNB_GROUP_ID)."),
    isolation: str = typer.Option("namespace", "--isolation", metavar="namespace|none", help="none: run buildpacks on this machine; allowed only when it is the builder image itself (its /cnb)."),
    scratch: Optional[Path] = typer.Option(None, "--scratch", envvar="OCIBUILD_SCRATCH", help="Scratch directory (layout, ledger, cache)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show phase timings and the whole detection log."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    quiet_flag: bool = typer.Option(False, "--quiet", "-q", help="Print only the digest (also a global option)."),
    publish: bool = typer.Option(False, "--publish", help="IMAGE is a registry reference (ocibuild always writes where IMAGE names; an oci: IMAGE is refused)."),
    previous_image: Optional[str] = typer.Option(None, "--previous-image", help="Reuse launch layers from this image instead of IMAGE."),
    report_output_dir: Optional[Path] = typer.Option(None, "--report-output-dir", help="Write the lifecycle's report.toml (tags, digest, manifest-size) here."),
    cache: list[str] = typer.Option([], "--cache", help="pack's 'type=build;format=image;name=REF' | 'format=bind;source=DIR' | 'format=volume[;name=N]'."),
    pull_policy: Optional[str] = typer.Option(None, "--pull-policy", metavar="always|never|if-not-present", help="Read the builder and run image through a copy kept in the scratch layout."),
    pre_buildpack: list[str] = typer.Option([], "--pre-buildpack", help="Buildpack run before every group (repeatable; replaces project.toml's pre group)."),
    post_buildpack: list[str] = typer.Option([], "--post-buildpack", help="Buildpack run after every group (repeatable; replaces project.toml's post group)."),
    trust_builder: bool = typer.Option(False, "--trust-builder", help="Accepted: every builder's buildpacks run isolated anyway."),
    lifecycle_image: Optional[str] = typer.Option(None, "--lifecycle-image", help="Refused: ocibuild runs no lifecycle image."),
    exec_env: str = typer.Option("production", "--exec-env", envvar="CNB_EXEC_ENV", help="Execution environment (CNB_EXEC_ENV): buildpacks, group entries and processes for others are left out."),
    disable_system_buildpacks: bool = typer.Option(False, "--disable-system-buildpacks", help="Do not add the builder's system buildpacks (/cnb/system.toml) to the groups."),
    attest: bool = typer.Option(False, "--attest", help="Attach the SBOMs and a SLSA provenance to the image as OCI referrers (also done by --sign-key)."),
    sign_key: Optional[str] = typer.Option(None, "--sign-key", metavar="KEY", help="Sign the image as the last step (cosign format): a PEM or cosign.key file, or env://NAME."),
) -> None:
    """Build IMAGE from an app directory with Cloud Native Buildpacks; prints the image digest last."""
    from ocibuild.cnb.errors import DetectFailed
    from ocibuild.cnb.pipeline import BuildOptions
    from ocibuild.cnb.pipeline import build as run_build
    from ocibuild.oci.descriptor import Platform

    from ocibuild.cnb.execenv import check_name
    from ocibuild.cnb.packflags import parse_cache, parse_pull_policy, refuse

    refuse("--lifecycle-image", lifecycle_image, "the lifecycle's phases run in-process, not from an image")
    del trust_builder  # accepted for pack's command lines: nothing is trusted more than anything else
    caches = parse_cache(cache, cache_image=cache_image, cache_dir=cache_dir)
    opts = global_options(ctx)
    quiet = opts.quiet or quiet_flag
    if sign_key is not None:  # a bad key fails before anything is built
        from ocibuild.attest.keys import load_signing_key

        load_signing_key(sign_key)
    try:
        outcome = _run_build(run_build, BuildOptions(
            image=image, path=path, builder=builder, buildpacks=tuple(buildpack), env=_env(env, env_file),
            extensions=tuple(extension),
            run_image=run_image, tags=tuple(tag), cache_image=caches.image, cache_dir=caches.directory,
            cache_volume=caches.volume, publish=publish, previous_image=previous_image,
            report_output_dir=report_output_dir, pull_policy=parse_pull_policy(pull_policy),
            pre_buildpacks=tuple(pre_buildpack), post_buildpacks=tuple(post_buildpack),
            clear_cache=clear_cache, default_process=default_process,
            creation_time=_creation_time(creation_time),
            platform=Platform.parse(platform) if platform else None, sbom_output_dir=sbom_output_dir,
            scratch=scratch, descriptor=descriptor, workspace=workspace, layers_dir=layers_dir,
            uid=uid, gid=gid, network=network, volumes=tuple(volume), isolation=isolation,
            default_registry=opts.registry, registry_options=opts.registry_options(),
            sign_key=sign_key, attest=attest, exec_env=check_name(exec_env),
            system_buildpacks=not disable_system_buildpacks,
        ), quiet)
    except DetectFailed as err:
        report = _detect_report(err, verbose) if verbose or not quiet else ""
        if report:
            sys.stderr.write(report.rstrip("\n") + "\n")
            sys.stderr.flush()
        raise
    if as_json:
        emit_json(outcome.__dict__)
        return
    if verbose:
        for name, seconds in outcome.phases.items():
            note(f"{name:>22}: {seconds:.3f} s", quiet)
    if outcome.gc:
        note(f"gc: removed {outcome.gc.get('removed_blobs', 0)} blobs "
             f"({outcome.gc.get('removed_bytes', 0)} bytes)", quiet)
    emit(outcome.digest)


def rebase(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE"),
    run_image: Optional[str] = typer.Option(None, "--run-image", help="New run image (default: the one the image names)."),
    force: bool = typer.Option(False, "--force", help="Rebase even when the lifecycle's checks refuse."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Write the result under this tag instead of IMAGE's: a bare tag or a reference in IMAGE's repository."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Swap the run image under an app image without rebuilding (a manifest and config edit)."""
    from ocibuild.cnb.local import open_image
    from ocibuild.cnb.packflags import rebase_tag
    from ocibuild.cnb.rebase import rebase as run_rebase
    from ocibuild.store.open import open_reference

    opts = global_options(ctx)
    dst_tag = rebase_tag(image, tag, opts.registry) if tag is not None else None
    store, ident = open_reference(image, opts.registry, opts.registry_options())
    run_ref = run_image or _named_run_image(store, ident or "latest")
    # The embedded builder's run image (ocibuild.local/...) is in the scratch layout, not on a network.
    run_store, run_ident = open_image(run_ref, opts.registry, opts.registry_options())
    from ocibuild.oci.reference import parse_reference

    qualified = str(parse_reference(run_ref, opts.registry))  # as the build recorded it (no short names)
    result = run_rebase(store, ident or "latest", run_store, run_ident or "latest", force=force, dst_tag=dst_tag,
                        new_run_name=qualified)
    if as_json:
        emit_json({"image": image, "digest": str(result.descriptor.digest), "runImage": run_ref})
        return
    emit(str(result.descriptor.digest))


def _named_run_image(store, identifier: str) -> str:  # noqa: ANN001
    from ocibuild.errors import UsageError
    from ocibuild.store.base import load_config, load_manifest

    _, manifest = load_manifest(store, identifier)
    config = load_config(store, manifest.config)
    import json

    meta = json.loads(config.labels.get("io.buildpacks.lifecycle.metadata", "{}") or "{}")
    name = (meta.get("runImage") or {}).get("image") or ((meta.get("stack") or {}).get("runImage") or {}).get("image")
    if not name:
        raise UsageError("the image names no run image: pass --run-image")
    return name


def register(app: typer.Typer) -> None:
    app.command()(build)
    app.command()(rebase)
