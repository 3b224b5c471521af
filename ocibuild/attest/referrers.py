"""OCI 1.1 artifacts attached to an image (``subject``), and the list of everything attached.

An artifact manifest has the empty config (``application/vnd.oci.empty.v1+json``), an
``artifactType``, one layer per document and the image as ``subject``. A registry with the referrers
API links it on push; one without gets the ``sha256-<hex>`` fallback index (``RegistryStore``); a
layout gets the same fallback index (``ocibuild.store.referrers.link_referrer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ocibuild.attest.publish import Blob, Record, no_record, put_blobs, put_manifest, writing
from ocibuild.attest.sign import SIMPLESIGNING, existing_signatures
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import EMPTY_JSON, Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import Manifest
from ocibuild.store.base import Store
from ocibuild.store.referrers import signature_tag

EMPTY_CONFIG = Descriptor(mt.OCI_EMPTY, Digest.of(EMPTY_JSON), len(EMPTY_JSON))
TITLE = "org.opencontainers.image.title"


def subject_of(image: Descriptor) -> Descriptor:
    """The ``subject`` descriptor: media type, digest and size only."""
    return Descriptor(image.media_type, image.digest, image.size)


def attach(
    store: Store,
    image: Descriptor,
    artifact_type: str,
    blobs: Sequence[Blob],
    role: str,
    *,
    annotations: Mapping[str, str] | None = None,
    record: Record = no_record,
) -> Descriptor:
    """Write ``blobs`` as one artifact whose subject is ``image``; returns the artifact manifest's descriptor.

    Deterministic: the same documents for the same image make the same manifest, so attaching
    again (a rebuild) adds nothing.
    """
    described = [(blob.descriptor(), blob) for blob in blobs]
    with writing(store):
        put_blobs(store, [(EMPTY_CONFIG, Blob(mt.OCI_EMPTY, EMPTY_JSON)), *described], role, record)
        manifest = Manifest.build(EMPTY_CONFIG, [d for d, _ in described], artifact_type=artifact_type,
                                  subject=subject_of(image), annotations=annotations)
        return put_manifest(store, manifest, role, record)


@dataclass(frozen=True)
class Attached:
    """One thing attached to an image: a referrer, or cosign's signature manifest (``how`` says which)."""

    digest: Digest
    media_type: str
    artifact_type: str | None
    size: int
    how: str  # "referrer" | "tag sha256-<hex>.sig"
    annotations: Mapping[str, str]

    def to_dict(self) -> dict[str, object]:
        return {"digest": str(self.digest), "mediaType": self.media_type, "artifactType": self.artifact_type,
                "size": self.size, "via": self.how, "annotations": dict(self.annotations)}


def attached(store: Store, image: Descriptor, artifact_type: str | None = None) -> list[Attached]:
    """Referrers of ``image`` (API or fallback tag), then its cosign signature manifest if there is one."""
    found = [Attached(d.digest, d.media_type, d.artifact_type, d.size, "referrer", d.annotations)
             for d in store.referrers(image, artifact_type)]
    if artifact_type in (None, SIMPLESIGNING):
        signatures = existing_signatures(store, image.digest)
        if signatures is not None:
            desc = signatures.descriptor()
            found.append(Attached(desc.digest, desc.media_type, SIMPLESIGNING, desc.size,
                                  f"tag {signature_tag(image.digest)}", {}))
    return found
