"""Writing an attachment: ledger row first, then the blob, then the manifest (and its referrer link).

Every object an attachment writes is recorded in the ledger with the attachment's role (``sbom``,
``provenance``, ``signature``; the fallback index as ``referrers-index``) before it becomes visible
in the store, under the build's lease when there is one. Layouts are written under their writer
lock, so a concurrent GC never sees a manifest whose blobs it could sweep.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import CHUNK, Hasher
from ocibuild.oci.manifest import Manifest
from ocibuild.store.base import Store
from ocibuild.store.referrers import link_referrer

ROLE_SBOM = "sbom"
ROLE_PROVENANCE = "provenance"
ROLE_SIGNATURE = "signature"
ROLE_REFERRERS_INDEX = "referrers-index"

Record = Callable[[Descriptor, str], None]
"""Called with each object and its role just before the object is written."""


def no_record(_desc: Descriptor, _role: str) -> None:
    """For callers without a ledger (tests of the format alone)."""


def store_location(store: Any) -> str:
    """How the ledger names a store: a layout's resolved path, else ``host/repository``."""
    from ocibuild.ledger.scratch import layout_location

    if hasattr(store, "path"):
        return layout_location(store.path)
    return f"{store.registry}/{store.repository}"


def ledger_record(ledger: Any, store: Any, lease_id: str | None = None) -> Record:
    """A ``Record`` writing ``objects`` rows (not ephemeral: the user asked for these) at ``store``."""
    location = store_location(store)

    def record(desc: Descriptor, role: str) -> None:
        ledger.record(desc, location=location, lease_id=lease_id, role=role, ephemeral=False)

    return record


@dataclass(frozen=True)
class Blob:
    """Content to write: small bytes in memory, or a file streamed (SBOMs may be large)."""

    media_type: str
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")  # type: ignore[arg-type]

    def descriptor(self) -> Descriptor:
        """Hashed while streaming: a file is never read whole."""
        hasher = Hasher("sha256")
        with self.open() as stream:
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
        return Descriptor(self.media_type, hasher.digest(), hasher.size, annotations=self.annotations)


@contextlib.contextmanager
def writing(store: Store) -> Iterator[None]:
    lock = getattr(store, "writer_lock", None)
    if lock is None:
        yield
        return
    with lock():
        yield


def put_blobs(store: Store, blobs: Sequence[tuple[Descriptor, Blob]], role: str, record: Record) -> None:
    for desc, blob in blobs:
        record(desc, role)
        if store.has_blob(desc):
            continue
        with blob.open() as stream:
            store.put_blob(desc, stream)


def put_manifest(store: Store, manifest: Manifest, role: str, record: Record, tag: str | None = None) -> Descriptor:
    """The manifest (recorded first); one with a ``subject`` is then linked where no API does it."""
    desc = manifest.descriptor()
    record(desc, role)

    def record_index(index: Descriptor) -> None:
        record(index, ROLE_REFERRERS_INDEX)

    if manifest.subject is not None and _is_registry(store):
        # A registry with the referrers API links it (OCI-Subject); else the store writes the
        # fallback index, recorded first.
        store.put_manifest(desc, manifest.raw, tag=tag, on_fallback=record_index)  # type: ignore[call-arg]
        return desc
    store.put_manifest(desc, manifest.raw, tag=tag)
    if manifest.subject is not None:
        link_referrer(store, desc, manifest.raw, record_index)
    return desc


def _is_registry(store: Any) -> bool:
    return not hasattr(store, "update_index") and hasattr(store, "registry") and hasattr(store, "repository")

