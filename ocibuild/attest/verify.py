"""Checking what is attached to an image: its cosign key-pair signatures and its referrers' subjects.

A signature counts when its payload blob hashes to the digest its layer announces, the annotation
is base64 DER that verifies with the key over exactly those bytes, the payload is a cosign simple
signing document, and it names the image's digest. The first failure of the first signature is
what the one-line error says (wrong key or altered payload, tampered blob, another digest).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from ocibuild.attest.errors import VerificationFailed
from ocibuild.attest.keys import VerifyingKey
from ocibuild.attest.sign import SIGNATURE_ANNOTATION, SIGNATURE_TYPE, SIMPLESIGNING, existing_signatures
from ocibuild.errors import DigestMismatch, ManifestError, NotFound
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.manifest import parse_manifest
from ocibuild.store.base import Store, read_blob
from ocibuild.store.referrers import signature_tag


@dataclass(frozen=True)
class Verified:
    image: Descriptor
    signatures: int  # how many signatures by the key check out
    checked: int  # signature layers looked at
    docker_reference: str  # what the first good payload names
    referrers: int  # referrers whose subject was checked


def _check_layer(store: Store, layer: Descriptor, image: Descriptor, key: VerifyingKey) -> tuple[str | None, str]:
    """(None, docker-reference) when the layer is a good signature of ``image`` by ``key``, else (reason, "")."""
    short = layer.digest.short()
    encoded = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not encoded:
        return f"signature layer {short} has no {SIGNATURE_ANNOTATION} annotation", ""
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return f"signature layer {short}: the signature is not base64", ""
    try:
        payload = read_blob(store, layer)
    except DigestMismatch:
        return f"payload {short} was tampered with: its bytes do not hash to the digest the signature names", ""
    except NotFound:
        return f"payload {short} is missing from {store.name}", ""
    if not key.verify(signature, payload):
        return (f"signature over payload {short} does not verify with key {key.source} ({key.fingerprint}): "
                "made with another key, or the payload was altered"), ""
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        kind, claimed = critical["type"], critical["image"]["docker-manifest-digest"]
        reference = critical.get("identity", {}).get("docker-reference", "")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return f"payload {short} is not a simple signing document", ""
    if kind != SIGNATURE_TYPE:
        return f"payload {short} is of type {kind!r}, not {SIGNATURE_TYPE!r}", ""
    if claimed != str(image.digest):
        return f"signature is for {claimed}, not {image.digest}", ""
    return None, str(reference)


def check_referrers(store: Store, image: Descriptor) -> int:
    """Every referrer listed for ``image`` must name it as its ``subject``; returns how many were checked."""
    count = 0
    for entry in store.referrers(image):
        desc, raw = store.get_manifest(str(entry.digest))
        try:
            parsed = parse_manifest(raw, desc.media_type)
        except ManifestError as exc:
            raise VerificationFailed(f"referrer {entry.digest.short()} of {image.digest}: {exc}") from None
        subject = parsed.subject
        if subject is None:
            raise VerificationFailed(f"referrer {entry.digest} listed for {image.digest} has no subject")
        if subject.digest != image.digest:
            raise VerificationFailed(
                f"referrer {entry.digest} listed for {image.digest} names subject {subject.digest}: subject mismatch")
        count += 1
    return count


def verify_image(store: Store, image: Descriptor, key: VerifyingKey, *, referrers: bool = True) -> Verified:
    """Verify the cosign signatures of ``image`` with ``key`` (and, with ``referrers``, its referrers' subjects).

    Raises ``VerificationFailed`` with the reason when no signature by ``key`` checks out.
    """
    where = f"{store.name}@{image.digest}"
    signatures = existing_signatures(store, image.digest)
    if signatures is None:
        raise VerificationFailed(f"{where}: no signatures (no tag {signature_tag(image.digest)})")
    layers = [layer for layer in signatures.layers if layer.media_type == SIMPLESIGNING]
    if not layers:
        raise VerificationFailed(f"{where}: the signature manifest has no {SIMPLESIGNING} layer")
    good, reasons, reference = 0, [], ""
    for layer in layers:
        reason, named = _check_layer(store, layer, image, key)
        if reason is None:
            good += 1
            reference = reference or named
        else:
            reasons.append(reason)
    if not good:
        more = f" ({len(layers)} signatures checked, none verifies)" if len(layers) > 1 else ""
        raise VerificationFailed(f"{where}: {reasons[0]}{more}")
    checked = check_referrers(store, image) if referrers else 0
    return Verified(image, good, len(layers), reference, checked)
