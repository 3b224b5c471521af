"""Linking a referrer to its subject where no referrers API does it: the distribution-spec fallback tag.

A registry store keeps the ``sha256-<hex>`` fallback index itself when the registry does not answer
``OCI-Subject`` (``RegistryStore.put_manifest``). An OCI layout has no API at all, so a manifest with
a ``subject`` written there is findable only through that same fallback index: ``link_referrer``
adds it (once: linking again changes nothing). cosign's key-pair signatures use a sibling tag, ``sha256-<hex>.sig``, with no ``subject``.
"""

from __future__ import annotations

from typing import Callable

from ocibuild.errors import ManifestError, NotFound
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import Index, Manifest, parse_manifest
from ocibuild.store.base import Store

SIGNATURE_SUFFIX = ".sig"


def fallback_tag(digest: Digest) -> str:
    """``<alg>-<hex>``: the tag a registry without referrers API lists a subject's referrers under."""
    return f"{digest.algorithm}-{digest.encoded}"


def signature_tag(digest: Digest) -> str:
    """``sha256-<hex>.sig``: where cosign keeps the key-pair signatures of ``digest``."""
    return fallback_tag(digest) + SIGNATURE_SUFFIX


def referrer_entry(desc: Descriptor, parsed: Manifest | Index) -> Descriptor:
    """The fallback-index entry for a referrer: its ``artifactType`` (else config media type), annotations."""
    artifact = parsed.artifact_type or (parsed.config.media_type if isinstance(parsed, Manifest) else None)
    return Descriptor(desc.media_type, desc.digest, desc.size, annotations=dict(parsed.annotations),
                      artifact_type=artifact)


def link_referrer(
    store: Store, desc: Descriptor, raw: bytes, before_write: Callable[[Descriptor], None] | None = None
) -> None:
    """Add a manifest with a ``subject`` to its subject's fallback index in a layout (no-op elsewhere).

    Read-modify-write of the fallback index, entries deduplicated by digest. Call it after the
    manifest itself is written, so the index never names something absent. ``before_write`` is
    told the new index before it is written (the ledger row goes first).
    """
    if not hasattr(store, "update_index"):  # registries keep the fallback index in put_manifest
        return
    parsed = parse_manifest(raw, desc.media_type)
    if parsed.subject is None:
        return
    tag = fallback_tag(parsed.subject.digest)
    try:
        index_desc, index_raw = store.get_manifest(tag)
        current = parse_manifest(index_raw, index_desc.media_type)
        if not isinstance(current, Index):
            raise ManifestError(f"{store.name}: referrers fallback tag {tag} is not an index")
        if any(d.digest == desc.digest for d in current.manifests):
            return  # already linked: the index (and its digest) stays as it is
        entries = list(current.manifests)
    except NotFound:
        entries = []
    entries.append(referrer_entry(desc, parsed))
    index = Index.build(entries)
    if before_write is not None:
        before_write(index.descriptor())
    store.put_manifest(index.descriptor(), index.raw, tag=tag)
