"""The one hook ``ocibuild build`` calls after export: SBOMs and provenance attached, then the signature.

Everything is written to the store the app image went to, recorded in the ledger under the build's
lease with its role (``sbom``, ``provenance``, ``signature``, ``referrers-index``). Signing is the
last write, so a signed image already carries its attestations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ocibuild.attest.provenance import BuildpackUsed, ProvenanceInputs, attach_provenance
from ocibuild.attest.publish import Record, ledger_record, no_record
from ocibuild.attest.sbom import attach_sboms, sbom_sources
from ocibuild.oci.descriptor import Descriptor


@dataclass(frozen=True)
class Attestations:
    sboms: tuple[Descriptor, ...]
    provenance: Descriptor
    signature: Descriptor | None  # the sha256-<hex>.sig manifest
    also: tuple["Attestations", ...] = ()  # the same, in each other repository the image was tagged in


def provenance_inputs(image: str, builder: Any, builder_digest: Any, effective: Any, group: Any,
                      run_store: Any, run_id: str, run_name: str, source: Path) -> ProvenanceInputs:
    """What the pipeline knows, as provenance: the builder's digest (as read before composing), the
    group with each buildpack's layer diffID on the (composed) builder, and the run image's digest."""
    layers = getattr(effective, "buildpack_layers", None) or {}
    used = tuple(
        BuildpackUsed(e.id, e.version, str((layers.get(e.id) or {}).get(e.version, {}).get("layerDiffID") or "")
                      or None)
        for e in group
    )
    run_digest = str(run_store.resolve(run_id).digest)
    return ProvenanceInputs(image=image, builder=str(getattr(builder, "name", builder)),
                            builder_digest=str(builder_digest), buildpacks=used,
                            run_image=run_name or run_id, run_image_digest=run_digest, source=Path(source))


def other_repositories(dest: Any, options: Any, lease: Any) -> list[Any]:
    """The stores of a build's ``-t`` tags in repositories other than IMAGE's (``Destinations``),
    opened for writing and recorded under the build's lease: attested and signed there too, as
    ``cosign sign`` would sign each of those references."""
    from ocibuild.cnb.recorded import Recorded
    from ocibuild.store.open import open_parsed

    return [Recorded(open_parsed(ref, options, for_write=True), lease) for ref in dest.other_repositories]


def attach_build_attestations(
    target_store: Any,
    image: Descriptor,
    built: Any,
    inputs: ProvenanceInputs,
    *,
    sign_key: str | None = None,
    lease: Any = None,
    say: Callable[[str], None] = lambda _m: None,
    also: Sequence[Any] = (),
) -> Attestations:
    """Attach the build's SBOMs (one artifact per format) and its provenance to ``image``; sign with
    ``sign_key``. The same in each store of ``also`` (where the image was tagged too)."""
    signing_key = None
    if sign_key is not None:
        from ocibuild.attest.keys import load_signing_key

        signing_key = load_signing_key(sign_key)  # a bad key fails before anything is attached
    image = Descriptor(image.media_type, image.digest, image.size)
    first = _attest(target_store, image, built, inputs, signing_key, lease, say)
    others = []
    for store in also:
        others.append(_attest(store, image, built, inputs, signing_key, lease, lambda _m: None))
        say(f"attested {image.digest.short()} in {store.name}" + (" and signed it" if signing_key else ""))
    return Attestations(first.sboms, first.provenance, first.signature, tuple(others))


def _attest(store: Any, image: Descriptor, built: Any, inputs: ProvenanceInputs, signing_key: Any, lease: Any,
            say: Callable[[str], None]) -> Attestations:
    record: Record = ledger_record(lease.ledger, store, lease.id) if lease is not None else no_record
    sboms = tuple(attach_sboms(store, image, sbom_sources(built), record))
    for desc in sboms:
        say(f"attached SBOM {desc.digest.short()}")
    provenance = attach_provenance(store, image, inputs, record)
    say(f"attached provenance {provenance.digest.short()}")
    signature = None
    if signing_key is not None:
        from ocibuild.attest.sign import sign_image

        signed = sign_image(store, image, signing_key, record)
        signature = signed.manifest
        say(f"signed {image.digest.short()}: {signed.tag}")
    return Attestations(sboms, provenance, signature)
