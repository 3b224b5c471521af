"""The pure OCI model: digests, media types, descriptors, manifests, references. No I/O here."""

from ocibuild.oci.descriptor import EMPTY_DESCRIPTOR, Descriptor, Platform
from ocibuild.oci.digest import Digest, Hasher
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, canonical_json, parse_manifest
from ocibuild.oci.reference import LayoutReference, Reference, parse_reference

__all__ = [
    "Descriptor", "Digest", "EMPTY_DESCRIPTOR", "Hasher", "ImageConfig", "Index", "LayoutReference",
    "Manifest", "Platform", "Reference", "canonical_json", "parse_manifest", "parse_reference",
]
