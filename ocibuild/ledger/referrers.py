"""Referrer tags: ``index.json`` entries kept for their subject, not for themselves.

A referrer is live while its subject is, and never keeps its subject alive. The tag scheme names
the subject in the tag: ``sha256-<hex>`` (the distribution-spec fallback index), ``sha256-<hex>.sig``
(cosign signatures), ``.att`` (cosign attestations) and ``.sbom`` (cosign's attached SBOMs). GC
therefore does not take these tags as roots: it marks from every other root, then keeps a referrer
tag only while its subject is marked (to a fixpoint: a signature of an SBOM artifact lives while the
SBOM does), and untags the rest.

A tag that merely looks like one of these (a user's ``sha256-<hex>`` tag on an ordinary image) must
stay a root, so the name alone is not enough: what the tag points at must name the same subject.

- ``sha256-<hex>``: an index whose every readable entry is a manifest with ``subject`` = that digest;
- ``.sig``: a manifest whose layers are all simple-signing payloads, each readable one naming that
  digest in ``critical.image.docker-manifest-digest``;
- ``.att``: a manifest whose layers are all DSSE envelopes, each readable one carrying an in-toto
  statement with that digest among its subjects;
- ``.sbom``: a manifest whose layers are all SBOM documents (SPDX, CycloneDX, syft). cosign puts no
  digest in them, so here the name and the layer types are the whole binding.

At least one piece of evidence must be readable (``.sbom`` excepted); otherwise, and whenever
anything is unreadable or malformed, the tag is an ordinary root: GC is biased to leaking.
Digests are plain strings, as everywhere in GC.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ocibuild.ledger.scan import blob_file, is_digest
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
SBOM_LAYER_TYPES = frozenset({
    "application/vnd.cyclonedx+json", "application/vnd.cyclonedx+xml", "application/spdx+json",
    "text/spdx", "text/spdx+json", "text/spdx+xml", "application/vnd.syft+json",
})
_TAG = re.compile(r"(sha256)-([a-f0-9]{64})(\.sig|\.att|\.sbom)?|(sha512)-([a-f0-9]{128})(\.sig|\.att|\.sbom)?")


@dataclass(frozen=True)
class ReferrerTag:
    """An ``index.json`` entry of the referrers tag scheme, checked against what it points at."""

    name: str
    digest: str  # what the tag points at
    media_type: str | None
    subject: str  # the digest both its name and its content name


def tag_subject(name: str | None) -> tuple[str, str] | None:
    """(subject digest, suffix) that a tag name of the scheme names, else None."""
    match = _TAG.fullmatch(name or "")
    if match is None:
        return None
    alg, hexpart, suffix = match.group(1, 2, 3) if match.group(1) else match.group(4, 5, 6)
    return f"{alg}:{hexpart}", suffix or ""


def referrer_tags(layout: str, entries: Iterable[tuple[str | None, str, str | None]]) -> list[ReferrerTag]:
    """The referrer tags among ``(tag, digest, media type)`` entries of the layout at ``layout``."""
    out = []
    for name, digest, media_type in entries:
        named = tag_subject(name)
        if named is None or not is_digest(digest):
            continue
        subject, suffix = named
        if _binds(layout, digest, media_type, subject, suffix):
            out.append(ReferrerTag(name or "", digest, media_type, subject))
    return out


def live_referrer_tags(
    tags: Iterable[ReferrerTag], is_live: Callable[[str], bool], keep: Callable[[ReferrerTag], None]
) -> list[ReferrerTag]:
    """Call ``keep`` on each tag whose subject ``is_live`` (keeping one may make another's subject
    live: repeated to a fixpoint); returns the tags left, whose subjects are gone."""
    pending = list(tags)
    progress = True
    while progress:
        progress = False
        for tag in [t for t in pending if is_live(t.subject)]:
            pending.remove(tag)
            keep(tag)
            progress = True
    return pending


# -- reading the evidence ----------------------------------------------------------------------
def read_verified(layout: str, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes | None:
    """A small local blob's bytes, if present, under ``limit`` and hashing to ``digest``; else None."""
    algorithm, _, encoded = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not is_digest(digest):
        return None
    try:
        with open(blob_file(layout, digest), "rb") as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                return None
            raw = fh.read(limit + 1)
    except OSError:
        return None
    return raw if hashlib.new(algorithm, raw).hexdigest() == encoded else None


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _descriptors(doc: dict[str, Any], key: str) -> list[dict[str, Any]] | None:
    items = doc.get(key)
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(d, dict) and is_digest(d.get("digest")) for d in items):
        return None
    return items


def _binds(layout: str, digest: str, media_type: str | None, subject: str, suffix: str) -> bool:
    doc = _json(read_verified(layout, digest))
    if doc is None or doc.get("schemaVersion") != 2:
        return False
    if suffix == "":
        entries = _descriptors(doc, "manifests")
        return entries is not None and mt.is_index(media_type or doc.get("mediaType") or mt.OCI_INDEX) \
            and _all_readable_agree(layout, entries, lambda raw: _subject_of(raw) == subject)
    layers = _descriptors(doc, "layers")
    if layers is None or "config" not in doc:
        return False
    types = {d.get("mediaType") for d in layers}
    if suffix == ".sig":
        return types == {SIMPLESIGNING} and _all_readable_agree(layout, layers, lambda raw: _signs(raw, subject))
    if suffix == ".att":
        return types == {DSSE_ENVELOPE} and _all_readable_agree(layout, layers, lambda raw: _attests(raw, subject))
    return all(t in SBOM_LAYER_TYPES for t in types)  # .sbom: no digest inside to check


def _all_readable_agree(layout: str, items: list[dict[str, Any]], agrees: Callable[[bytes], bool]) -> bool:
    """Every item readable here satisfies ``agrees``, and at least one is readable."""
    read = [raw for raw in (read_verified(layout, d["digest"]) for d in items) if raw is not None]
    return bool(read) and all(agrees(raw) for raw in read)


def _subject_of(raw: bytes) -> str | None:
    doc = _json(raw)
    subject = doc.get("subject") if doc is not None else None
    return subject.get("digest") if isinstance(subject, dict) else None


def _signs(raw: bytes, subject: str) -> bool:
    doc = _json(raw)
    critical = doc.get("critical") if doc is not None else None
    image = critical.get("image") if isinstance(critical, dict) else None
    return isinstance(image, dict) and image.get("docker-manifest-digest") == subject


def _attests(raw: bytes, subject: str) -> bool:
    envelope = _json(raw)
    payload = envelope.get("payload") if envelope is not None else None
    if not isinstance(payload, str):
        return False
    try:
        statement = _json(base64.b64decode(payload, validate=True))
    except ValueError:
        return False
    subjects = statement.get("subject") if statement is not None else None
    algorithm, _, encoded = subject.partition(":")
    return isinstance(subjects, list) and any(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get(algorithm) == encoded
        for s in subjects
    )


def subject_chain_live(layout: str, digest: str, is_live: Callable[[str], bool], depth: int = 8) -> bool:
    """Whether ``digest`` is live, or is a local manifest whose ``subject`` chain reaches a live one
    (an untagged referrer GC keeps for its subject). For fsck, which marks no referrers itself."""
    for _ in range(depth):
        if is_live(digest):
            return True
        nxt = _subject_of(read_verified(layout, digest) or b"")
        if nxt is None or not is_digest(nxt):
            return False
        digest = nxt
    return False


__all__ = ["ReferrerTag", "live_referrer_tags", "read_verified", "referrer_tags", "subject_chain_live", "tag_subject"]
