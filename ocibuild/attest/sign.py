"""Key-pair signatures in the format cosign writes and reads (``cosign sign --key`` / ``verify --key``).

The signature of image digest ``D`` lives in the image's repository as a manifest tagged
``sha256-<hex of D>.sig``. Each of its layers is one signature: the layer blob is the *simple
signing* payload (JSON naming the repository and ``D``), of type
``application/vnd.dev.cosign.simplesigning.v1+json``; the annotation
``dev.cosignproject.cosign/signature`` holds base64(DER ECDSA-SHA256 over the payload bytes).
Signing again appends a layer, unless a signature by the same key over the same payload is there.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ocibuild.attest.keys import SigningKey, VerifyingKey
from ocibuild.attest.publish import ROLE_SIGNATURE, Blob, Record, no_record, put_blobs, put_manifest, writing
from ocibuild.errors import ManifestError, NotFound
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import Manifest, canonical_json, parse_manifest
from ocibuild.store.base import Store, read_blob
from ocibuild.store.referrers import signature_tag

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # what go-containerregistry writes into a config it made from nothing


def docker_reference(store: Any) -> str:
    """The repository the payload names: ``host/repository``, or ``oci:<path>`` for a layout."""
    if hasattr(store, "repository") and hasattr(store, "registry"):
        return f"{store.registry}/{store.repository}"
    return store.name


def simple_signing_payload(reference: str, digest: Digest) -> bytes:
    """The payload, byte for byte as cosign marshals it (Go's field order; ``optional`` null)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": str(digest)},
            "type": SIGNATURE_TYPE,
        },
        "optional": None,
    }
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these three for HTML safety; match it so the bytes are cosign's.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@dataclass(frozen=True)
class Signed:
    image: Descriptor
    tag: str  # sha256-<hex>.sig
    manifest: Descriptor  # the signature manifest now under that tag
    payload: Descriptor
    added: bool  # False: an equal signature by this key was already there
    signatures: int  # layers of the signature manifest


def existing_signatures(store: Store, digest: Digest) -> Manifest | None:
    """The signature manifest of ``digest`` (tag ``sha256-<hex>.sig``), or None."""
    tag = signature_tag(digest)
    try:
        desc, raw = store.get_manifest(tag)
    except NotFound:
        return None
    parsed = parse_manifest(raw, desc.media_type)
    if not isinstance(parsed, Manifest):
        raise ManifestError(f"{store.name}: signature tag {tag} is an index, not a signature manifest")
    return parsed


def _config(layers: list[Descriptor]) -> bytes:
    """A config like the one cosign's signature images carry: one diff ID (= digest) per payload."""
    return canonical_json({
        "architecture": "", "os": "", "created": _ZERO_TIME, "config": {},
        "history": [{"created": _ZERO_TIME} for _ in layers],
        "rootfs": {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]},
    })


def _already_signed(store: Store, layers: tuple[Descriptor, ...], payload: Descriptor, key: VerifyingKey) -> bool:
    for layer in layers:
        if layer.digest != payload.digest or SIGNATURE_ANNOTATION not in layer.annotations:
            continue
        try:
            signature = base64.b64decode(layer.annotations[SIGNATURE_ANNOTATION], validate=True)
        except ValueError:
            continue
        if key.verify(signature, read_blob(store, layer)):
            return True
    return False


def sign_image(store: Store, image: Descriptor, key: SigningKey, record: Record = no_record) -> Signed:
    """Sign ``image`` (a manifest or index descriptor in ``store``) and write the signature manifest."""
    payload_bytes = simple_signing_payload(docker_reference(store), image.digest)
    payload = Descriptor.for_bytes(SIMPLESIGNING, payload_bytes)
    tag = signature_tag(image.digest)
    with writing(store):
        current = existing_signatures(store, image.digest)
        layers = current.layers if current is not None else ()
        if current is not None and _already_signed(store, layers, payload, key.public()):
            return Signed(image, tag, current.descriptor(), payload, False, len(layers))
        signature = base64.b64encode(key.sign(payload_bytes)).decode()
        layer = Descriptor(SIMPLESIGNING, payload.digest, payload.size, annotations={SIGNATURE_ANNOTATION: signature})
        all_layers = [*layers, layer]
        config_bytes = _config(all_layers)
        config = Descriptor.for_bytes(mt.OCI_CONFIG, config_bytes)
        put_blobs(store, [(payload, Blob(SIMPLESIGNING, payload_bytes)), (config, Blob(mt.OCI_CONFIG, config_bytes))],
                  ROLE_SIGNATURE, record)
        manifest = Manifest.build(config, all_layers)
        desc = put_manifest(store, manifest, ROLE_SIGNATURE, record, tag=tag)
    return Signed(image, tag, desc, payload, True, len(all_layers))
