"""From what a user typed to a store: ``oci:DIR[:TAG]``, ``oci:DIR@DIGEST``, ``oci-archive:PATH[:TAG]``,
``docker-archive:PATH[:REF]``, ``docker://REF`` or a Docker ref.

The store modules are imported here, lazily, so that parsing a reference (and ``ocibuild --help``)
never pays for ``requests`` or the layout code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ocibuild.oci.reference import ArchiveReference, LayoutReference, Reference, parse_reference

if TYPE_CHECKING:
    from ocibuild.store.base import Store

ENV_REGISTRY = "OCIBUILD_REGISTRY"


def default_registry_from_env() -> str | None:
    """``OCIBUILD_REGISTRY`` when set and not blank: where short names live."""
    value = os.environ.get(ENV_REGISTRY, "").strip()
    return value or None


def open_layout(ref: LayoutReference, *, for_write: bool = False) -> "Store":
    from ocibuild.store.layout import LayoutStore

    return LayoutStore(ref.path, create=for_write)


def open_archive(ref: ArchiveReference, *, for_write: bool = False) -> "Store":
    from ocibuild.store.archive import open_archive as _open

    return _open(ref, for_write=for_write)  # type: ignore[return-value]


def open_registry(ref: Reference, options: Any = None) -> "Store":
    from ocibuild.store.registry import get_registry_store

    return get_registry_store(ref, options)


def open_reference(
    text: str,
    default_registry: str | None = None,
    options: Any = None,
    *,
    for_write: bool = False,
) -> tuple["Store", str | None]:
    """Open the store ``text`` points into and return it with the identifier (tag or digest) it names.

    ``default_registry`` is where short names live (``--registry``); ``options`` is a
    ``RegistryOptions`` (None: defaults). ``for_write`` creates a missing layout directory. The
    identifier is None only for a bare ``oci:DIR`` (a layout, no image chosen) and for a bare
    archive being written or holding several images (a bare archive read names its only image).
    """
    ref = parse_reference(text, default_registry)
    if isinstance(ref, LayoutReference):
        return open_layout(ref, for_write=for_write), ref.identifier
    if isinstance(ref, ArchiveReference):
        store = open_archive(ref, for_write=for_write)
        identifier = ref.identifier
        if identifier is None and not for_write:
            identifier = store.only_image()  # type: ignore[attr-defined]
        return store, identifier
    return open_registry(ref, options), ref.identifier


def open_parsed(ref: LayoutReference | Reference, options: Any = None, *, for_write: bool = False) -> "Store":
    """The store of an already parsed reference (used when the CLI rewrites a tag)."""
    if isinstance(ref, LayoutReference):
        return open_layout(ref, for_write=for_write)
    if isinstance(ref, ArchiveReference):
        return open_archive(ref, for_write=for_write)
    return open_registry(ref, options)
