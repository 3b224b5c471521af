"""Remembers which layer a set of tar entries produced, so an unchanged layer is not written again.

Like make or rsync's quick check, a file is taken as unchanged when its size and modification time
(nanoseconds) are; in-memory files are keyed on the hash of their bytes. A layer that holds a file
with no fingerprint is never memoized. The memo only saves work: a hit is used only when the target
store already holds the blob, whose digest was verified when it was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from ocibuild.errors import OCIBuildError
from ocibuild.layer.tarwriter import FILE, TarEntry, TarOptions
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest

# Bump when the bytes the tar writer or the compressor produce for the same entries change.
WRITER_VERSION = "ocibuild-layer-1"


def entries_key(entries: Iterable[TarEntry], options: TarOptions, media_type: str) -> str | None:
    """A key for the layer these entries make, or None when some file's content is unknown."""
    h = hashlib.sha256()
    h.update(repr((WRITER_VERSION, media_type, options.uid, options.gid, options.mtime,
                   getattr(options.mode_policy, "__qualname__", repr(options.mode_policy)),
                   options.strip_setid, options.allow_devices)).encode())
    first_of_link: dict[object, str] = {}
    for e in sorted(entries, key=lambda x: x.path):
        if e.kind == FILE and e.fingerprint is None:
            return None
        link = first_of_link.setdefault(e.link_key, e.path) if e.link_key is not None else None
        h.update(repr((e.path, e.kind, e.mode, e.size, e.linkname, e.uid, e.gid, e.devmajor, e.devminor,
                       e.fingerprint, link)).encode())
    return h.hexdigest()


class LayerMemo:
    """One small JSON file per key in ``directory`` (written atomically; safe for concurrent builds)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def get(self, key: str) -> tuple[Descriptor, Digest] | None:
        try:
            doc = json.loads((self.directory / f"{key}.json").read_text())
            return Descriptor.from_dict(doc["descriptor"]), Digest.parse(doc["diffID"])
        except (OSError, ValueError, KeyError, TypeError, OCIBuildError):
            return None  # no memo, or an unreadable one: the layer is simply written

    def put(self, key: str, descriptor: Descriptor, diff_id: Digest) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"descriptor": descriptor.to_dict(), "diffID": str(diff_id)}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".memo-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, self.directory / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
