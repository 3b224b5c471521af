"""``ocibuild.local/...``: the embedded default images, which live tagged in the scratch layout.

The embedded builder names its run image ``ocibuild.local/default-run:VERSION``, and so does every app
image built on it. No registry serves that name: it is opened in the scratch layout, where the
images are made again (deterministically, same digests) when they are missing. So a build on a
pushed copy of the embedded builder, and a rebase of an image built on it, work without a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ocibuild.errors import InvalidReference, NotFound

LOCAL_REGISTRY = "ocibuild.local"
ROLE_DEFAULT_BUILDER = "default-builder"


def local_tag(name: str) -> str | None:
    """The scratch-layout tag of an ``ocibuild.local/...`` name, else None."""
    from ocibuild.oci.reference import Reference, parse_reference

    try:
        ref = parse_reference(name)
    except InvalidReference:
        return None
    if not isinstance(ref, Reference) or ref.registry != LOCAL_REGISTRY or ref.digest is not None:
        return None
    return f"{ref.registry}/{ref.repository}:{ref.tag or 'latest'}"


def open_local(tag: str, scratch: str | os.PathLike[str] | None, lease: Any = None) -> tuple[Any, str]:
    """(scratch layout, tag) for an embedded image; made there first when it is missing."""
    from ocibuild.cnb.defaults import BUILD_TAG, BUILDER_TAG, RUN_TAG, ensure_default_builder
    from ocibuild.ledger import Lease, Scratch

    where = Scratch.resolve(Path(scratch) if scratch is not None else None).ensure()
    store = where.open_layout()
    if tag in set(store.tags()):
        return store, tag
    if tag not in (BUILDER_TAG, RUN_TAG, BUILD_TAG):
        raise NotFound(f"{tag} is an embedded image of another ocibuild version and is not in the scratch "
                       f"layout {store.path}: pass the run image explicitly")
    if lease is not None:
        ensure_default_builder(store, lease.publish_hook(store, ROLE_DEFAULT_BUILDER))
        return store, tag
    with Lease(where).acquire() as own:
        ensure_default_builder(store, own.publish_hook(store, ROLE_DEFAULT_BUILDER))
    return store, tag


def open_image(text: str, default_registry: str | None, options: Any, *, scratch: Any = None,
               for_write: bool = False) -> tuple[Any, str | None]:
    """``open_reference`` that also knows the embedded images (read-only: they are never pushed to)."""
    from ocibuild.store.open import open_reference

    tag = None if for_write else local_tag(text)
    if tag is not None:
        return open_local(tag, scratch)
    return open_reference(text, default_registry, options, for_write=for_write)
