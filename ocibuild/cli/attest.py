"""``ocibuild sign``, ``verify``, ``referrers``, ``sbom download``, ``generate-key-pair``.

Thin: parse, call ``ocibuild.attest.api``, print. Imports stay light (typer only) so ``--help`` is fast.
Keys are named by path or ``env://NAME``; their contents and passwords are never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ocibuild.cli.options import global_options
from ocibuild.cli.output import emit, emit_json, note

_JSON = typer.Option(False, "--json", help="Print a JSON document.")
_KEY_HELP = "a PEM file (openssl PKCS#8/SEC1, or cosign.key with COSIGN_PASSWORD) or env://NAME"


def sign(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE", help="REF or oci:DIR:TAG"),
    key: str = typer.Option(..., "--key", metavar="KEY", help=f"Private key: {_KEY_HELP}."),
    scratch: Optional[str] = typer.Option(None, "--scratch", envvar="OCIBUILD_SCRATCH", metavar="DIR",
                                          help="Scratch directory whose ledger records the signature."),
    as_json: bool = _JSON,
) -> None:
    """Sign IMAGE as cosign does with a key pair: a manifest tagged sha256-<hex>.sig in its repository."""
    from ocibuild.attest.api import sign as run_sign

    opts = global_options(ctx)
    signed = run_sign(image, key, scratch=scratch, **opts.store_args())
    if as_json:
        emit_json({"image": str(signed.image.digest), "tag": signed.tag, "signature": str(signed.manifest.digest),
                   "payload": str(signed.payload.digest), "added": signed.added, "signatures": signed.signatures})
        return
    if not signed.added:
        note("already signed with this key; nothing added", opts.quiet)
    emit(f"{signed.tag} {signed.manifest.digest}")


def verify(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE", help="REF or oci:DIR:TAG"),
    key: str = typer.Option(..., "--key", metavar="PUB", help="Public key: a PEM file (cosign.pub) or env://NAME."),
    skip_referrers: bool = typer.Option(False, "--skip-referrers", help="Do not check the referrers' subjects."),
    as_json: bool = _JSON,
) -> None:
    """Verify IMAGE's cosign key-pair signature (and that every referrer names IMAGE); exit 1 if not."""
    from ocibuild.attest.api import verify as run_verify

    opts = global_options(ctx)
    result = run_verify(image, key, referrers=not skip_referrers, **opts.store_args())
    if as_json:
        emit_json({"image": str(result.image.digest), "verified": result.signatures, "checked": result.checked,
                   "dockerReference": result.docker_reference, "referrersChecked": result.referrers})
        return
    emit(f"verified {result.image.digest}: {result.signatures} of {result.checked} signature(s) by {key}; "
         f"{result.referrers} referrer(s) checked")


def referrers(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE", help="REF or oci:DIR:TAG"),
    artifact_type: Optional[str] = typer.Option(None, "--artifact-type", help="Only this artifactType."),
    as_json: bool = _JSON,
) -> None:
    """List what is attached to IMAGE: referrers (API or sha256-<hex> tag) and cosign signatures."""
    from ocibuild.attest.api import list_attached

    opts = global_options(ctx)
    subject, found = list_attached(image, artifact_type=artifact_type, **opts.store_args())
    if as_json:
        emit_json({"subject": str(subject.digest), "attached": [a.to_dict() for a in found]})
        return
    for item in found:
        emit(f"{item.digest}\t{item.artifact_type or '-'}\t{item.size}\t{item.how}")


sbom_app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True,
                       help="Interact with an image's SBOMs (pack's sbom command).")


@sbom_app.command("download")
def sbom_download(
    ctx: typer.Context,
    image: str = typer.Argument(..., metavar="IMAGE", help="REF or oci:DIR:TAG"),
    output_dir: Path = typer.Option(Path("."), "--output-dir", "-o", help="Where layers/sbom/... is written."),
    remote: bool = typer.Option(False, "--remote", help="Accepted for pack compatibility: images are always read "
                                                        "from their registry or layout (there is no daemon)."),
    as_json: bool = _JSON,
) -> None:
    """Write IMAGE's SBOMs to OUTPUT-DIR/layers/sbom/: from its SBOM referrers, else from its SBOM layer."""
    from ocibuild.attest.api import sbom_download as run_download
    from ocibuild.errors import NotFound

    del remote
    opts = global_options(ctx)
    result = run_download(image, output_dir, **opts.store_args())
    if as_json:
        emit_json({"source": result.source, "files": [str(p) for p in result.files]})
        return
    if not result.files:
        raise NotFound(f"{image} has no SBOM (no SBOM referrer and no SBOM layer)")
    note(f"SBOMs from the {'referrers' if result.source == 'referrers' else 'SBOM layer'}", opts.quiet)
    for path in result.files:
        emit(str(path))


def generate_key_pair(
    output_key_prefix: str = typer.Option("cosign", "--output-key-prefix", help="Writes PREFIX.key and PREFIX.pub."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a cosign-format key pair (ECDSA P-256; the private key sealed with $COSIGN_PASSWORD)."""
    from ocibuild.attest.api import generate_key_pair as run_generate

    private, public = run_generate(Path(output_key_prefix), force=force)
    emit(f"private key written to {private}")
    emit(f"public key written to {public}")


def register(app: typer.Typer) -> None:
    app.command()(sign)
    app.command()(verify)
    app.command()(referrers)
    app.command("generate-key-pair")(generate_key_pair)
    app.add_typer(sbom_app, name="sbom")
