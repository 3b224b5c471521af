"""The Python API behind ``ocibuild sign``, ``verify``, ``referrers``, ``sbom download`` and
``generate-key-pair``: references in, results out (the CLI only parses and prints)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ocibuild.attest.errors import KeyProblem
from ocibuild.attest.keys import PASSWORD_ENV, cosign_key_pem, generate_signing_key, load_signing_key, load_verifying_key
from ocibuild.attest.publish import Record, ledger_record
from ocibuild.attest.referrers import Attached, attached
from ocibuild.attest.sbom import Downloaded, download_sboms
from ocibuild.attest.sign import Signed, sign_image
from ocibuild.attest.verify import Verified, verify_image
from ocibuild.oci.descriptor import Descriptor


@contextmanager
def _image(ref: str, registry: str | None, options: Any) -> Iterator[tuple[Any, Descriptor]]:
    from ocibuild.api import _require_identifier, open_image

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        identifier = _require_identifier(store, identifier, ref)
        desc, raw = store.get_manifest(identifier)
        yield store, Descriptor(desc.media_type, desc.digest, len(raw))


@contextmanager
def _ledger_record(store: Any, scratch: str | os.PathLike[str] | None) -> Iterator[Record]:
    """Rows for what a command writes, in the scratch directory's ledger (no lease: nothing to sweep)."""
    from ocibuild.ledger.scratch import Scratch

    ledger = Scratch.resolve(scratch).open_ledger()
    try:
        yield ledger_record(ledger, store)
    finally:
        ledger.close()


def sign(ref: str, key: str, *, registry: str | None = None, options: Any = None,
         scratch: str | os.PathLike[str] | None = None) -> Signed:
    """Sign the image ``ref`` names with the private key at ``key`` (path or ``env://NAME``)."""
    signing_key = load_signing_key(key)  # before any network: a bad key fails first
    with _image(ref, registry, options) as (store, image), _ledger_record(store, scratch) as record:
        return sign_image(store, image, signing_key, record)


def verify(ref: str, key: str, *, registry: str | None = None, options: Any = None,
           referrers: bool = True) -> Verified:
    public = load_verifying_key(key)
    with _image(ref, registry, options) as (store, image):
        return verify_image(store, image, public, referrers=referrers)


def list_attached(ref: str, *, artifact_type: str | None = None, registry: str | None = None,
                  options: Any = None) -> tuple[Descriptor, list[Attached]]:
    with _image(ref, registry, options) as (store, image):
        return image, attached(store, image, artifact_type)


def sbom_download(ref: str, output_dir: Path, *, registry: str | None = None, options: Any = None) -> Downloaded:
    from ocibuild.api import _require_identifier, open_image

    with open_image(ref, registry=registry, options=options) as (store, identifier):
        return download_sboms(store, _require_identifier(store, identifier, ref), Path(output_dir))


def generate_key_pair(prefix: Path, *, password: bytes | None = None, force: bool = False) -> tuple[Path, Path]:
    """``<prefix>.key`` (cosign's encrypted format, password from ``COSIGN_PASSWORD``) and ``<prefix>.pub``."""
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private, public):
        if path.exists() and not force:
            raise KeyProblem(f"{path} exists; pass --force to overwrite it")
    if password is None:
        password = os.environ.get(PASSWORD_ENV, "").encode()
    key = generate_signing_key(str(private))
    _write_private(private, cosign_key_pem(key, password))
    _write_private(public, key.public().pem(), mode=0o644)
    return private, public


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically, created with ``mode`` from the start (a key is never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
