"""A store that writes a ledger row before each blob or manifest becomes visible in it.

The export target of a build is wrapped in one, so that every digest the build creates (the app
image's layers, config and manifest, in a layout or a registry) is in the ledger, under the build's
lease, before anyone else can see it. Everything else is delegated, so the copy code still sees a
layout or a registry repository (``registry``, ``mount_blob``, ``tmp_dir``...). Rows are not
ephemeral: the user asked for the image.
"""

from __future__ import annotations

from typing import Any

from ocibuild.ledger.lease import Lease
from ocibuild.ledger.scratch import layout_location
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.store.base import Store

from ocibuild.ledger.db import ROLE_APP_IMAGE


class Recorded:
    def __init__(self, store: Store, lease: Lease, role: str = ROLE_APP_IMAGE):
        self._store = store
        self._lease = lease
        self._role = role
        path = getattr(store, "path", None)
        self._location = layout_location(path) if path is not None \
            else f"{getattr(store, 'registry')}/{getattr(store, 'repository')}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _record(self, desc: Descriptor) -> None:
        role = self._role if mt.is_manifest_like(desc.media_type) else (
            "config" if desc.media_type in mt.CONFIG_TYPES else "layer")
        self._lease.ledger.record(desc, location=self._location, lease_id=self._lease.id, role=role,
                                  ephemeral=False)

    def put_blob(self, desc: Descriptor, stream: Any, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_blob(desc, stream, *args, **kwargs)

    def put_blob_file(self, desc: Descriptor, path: Any, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_blob_file(desc, path, *args, **kwargs)  # type: ignore[attr-defined]

    def put_manifest(self, desc: Descriptor, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        self._record(desc)
        return self._store.put_manifest(desc, raw, *args, **kwargs)

    def mount_blob(self, desc: Descriptor, from_repository: str) -> bool:
        self._record(desc)
        return self._store.mount_blob(desc, from_repository)  # type: ignore[attr-defined]
