"""The pure OCI model: digests, media types, descriptors, manifests, references. No I/O here.

The names below are re-exported lazily: importing one submodule (``ocibuild.oci.digest``) does not
load the others, which keeps command start-up short.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Descriptor": "descriptor", "EMPTY_DESCRIPTOR": "descriptor", "Platform": "descriptor",
    "Digest": "digest", "Hasher": "digest",
    "ImageConfig": "manifest", "Index": "manifest", "Manifest": "manifest", "canonical_json": "manifest",
    "parse_manifest": "manifest",
    "LayoutReference": "reference", "Reference": "reference", "parse_reference": "reference",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ocibuild.oci' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ocibuild.oci.{module}"), name)
