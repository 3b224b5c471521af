"""Reading a scratch layout the way GC and fsck both need it: blob names, temp entries, cache roots.

Digests are plain ``"algorithm:encoded"`` strings here: GC handles tens of thousands of them and
builds no ``Digest`` objects. Every string this module returns or accepts as a digest has passed
``is_digest``, whose grammar cannot name a path outside ``blobs/<algorithm>/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from ocibuild.errors import ManifestError
from ocibuild.oci.manifest import MAX_MANIFEST_BYTES, Index

# image-spec descriptor.md grammar, plus the exact shape of the registered algorithms' encoded part
# (the same rules as ``Digest.parse``, as one match with no object built).
_DIGEST = re.compile(
    r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}"
    r"|(?!sha256:|sha512:)[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+)"
)
_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_FOREIGN_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+")


class Abort(Exception):
    """Something GC cannot judge safely: delete nothing."""


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def blob_file(layout: str, digest: str) -> str:
    """The path of ``digest`` (already checked by ``is_digest``) in the layout at ``layout``."""
    algorithm, _, encoded = digest.partition(":")
    return f"{layout}/blobs/{algorithm}/{encoded}"


def scan_blobs(layout: "str | os.PathLike[str]") -> tuple[dict[str, os.DirEntry[str]], list[str]]:
    """One pass over ``blobs/<alg>/``: ({digest: entry} of files named like a digest, foreign names).

    Entries carry their path and inode number without a stat. Foreign entries (``alg/name``) are
    not ours to judge: GC leaves them, fsck reports them.
    """
    found: dict[str, os.DirEntry[str]] = {}
    foreign: list[str] = []
    root = os.path.join(layout, "blobs")
    if not os.path.isdir(root):
        return found, foreign
    for alg in os.scandir(root):
        if not alg.is_dir(follow_symlinks=False):
            continue
        shape = _ENCODED.get(alg.name)
        if shape is None and not _ALGORITHM.fullmatch(alg.name):
            foreign += [f"{alg.name}/{e.name}" for e in os.scandir(alg.path)]
            continue
        shape = shape or _FOREIGN_ENCODED
        prefix = f"{alg.name}:"
        for entry in os.scandir(alg.path):
            if shape.fullmatch(entry.name):
                found[prefix + entry.name] = entry
            else:
                foreign.append(f"{alg.name}/{entry.name}")
    return found, foreign


def temp_entries(tmp: Path, now: float) -> Iterator[tuple[os.DirEntry[str], float]]:
    """Each entry of a layout's temp directory with its age in seconds (entries gone meanwhile skipped)."""
    if not tmp.is_dir():
        return
    for entry in os.scandir(tmp):
        try:
            yield entry, now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue


def cache_roots(cache: Path) -> list[tuple[str, str | None]]:
    """(digest, media type) of every manifest an ``index.json`` under ``cache`` (or one level below)
    points at. An unreadable cache index raises ``Abort``: its blobs must not be swept."""
    out: list[tuple[str, str | None]] = []
    if not cache.is_dir():
        return out
    for index_file in [*cache.glob("index.json"), *cache.glob("*/index.json")]:
        try:
            index = Index.parse(index_file.read_bytes())
        except (OSError, ManifestError) as exc:
            raise Abort(f"build cache index {index_file} unreadable: {one_line(exc)}") from None
        out += [(str(d.digest), d.media_type) for d in index.manifests]
    return out


def looks_like_json(path: "str | os.PathLike[str]") -> bool:
    """Small enough to be a manifest and starts like a JSON object."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_MANIFEST_BYTES:
                return False
            return fh.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False


def one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
