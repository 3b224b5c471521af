"""Validate what ocibuild writes against the OCI image-spec JSON Schemas (draft-04).

The schemas ship with the repository in ``fixtures/image-spec-schema`` (image-spec's own files,
Apache-2.0; override the directory with ``OCIBUILD_SCHEMA_DIR``). They use relative ``$ref``s resolved against
``id``s under ``https://opencontainers.org/schema/...``, and two of them have no ``id`` at all, so a
reference may resolve to several URIs: every schema is registered under its file name and its id,
and any other URI whose last segment is a schema file name resolves to that file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT4

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_ENV = "OCIBUILD_SCHEMA_DIR"
DEFAULT_SCHEMA_DIR = REPO_ROOT / "fixtures" / "image-spec-schema"

SCHEMA_FILES: Mapping[str, str] = {
    "manifest": "image-manifest-schema.json",
    "index": "image-index-schema.json",
    "config": "config-schema.json",
    "layout": "image-layout-schema.json",
    "descriptor": "content-descriptor.json",
    "defs": "defs.json",
    "defs-descriptor": "defs-descriptor.json",
}

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
MAX_JSON = 8 << 20


def schema_dir() -> Path:
    """The directory holding the seven image-spec schemas, or fail the test saying where it looked."""
    configured = os.environ.get(SCHEMA_ENV)
    path = Path(configured) if configured else DEFAULT_SCHEMA_DIR
    missing = [name for name in SCHEMA_FILES.values() if not (path / name).is_file()]
    if missing:
        pytest.fail(
            f"OCI image-spec JSON schemas not found in {path} (missing {', '.join(missing)}); "
            f"set {SCHEMA_ENV} to the directory holding them",
            pytrace=False,
        )
    return path


@functools.cache
def _load(directory: Path) -> tuple[Registry, dict[str, Resource]]:
    by_name: dict[str, Resource] = {}
    pairs: list[tuple[str, Resource]] = []
    for name in SCHEMA_FILES.values():
        contents = json.loads((directory / name).read_text())
        resource = Resource.from_contents(contents, default_specification=DRAFT4)
        by_name[name] = resource
        pairs.append((name, resource))
        if resource.id():
            pairs.append((resource.id(), resource))  # type: ignore[arg-type]

    def retrieve(uri: str) -> Resource:
        # A relative $ref resolved against a nested "id" gives URIs such as
        # https://opencontainers.org/schema/image/descriptor/defs-descriptor.json.
        name = uri.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if name in by_name:
            return by_name[name]
        raise NoSuchResource(ref=uri)

    return Registry(retrieve=retrieve).with_resources(pairs), by_name  # type: ignore[call-arg]


def validator(kind: str) -> Draft4Validator:
    """A draft-04 validator for ``kind``: manifest, index, config, layout or descriptor."""
    if kind not in SCHEMA_FILES:
        raise ValueError(f"unknown schema kind {kind!r}; one of {', '.join(SCHEMA_FILES)}")
    registry, by_name = _load(schema_dir())
    schema = by_name[SCHEMA_FILES[kind]].contents
    return Draft4Validator(schema, registry=registry, format_checker=Draft4Validator.FORMAT_CHECKER)


def _as_document(doc: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(doc, (bytes, bytearray, str)):
        return json.loads(doc)
    return doc


def schema_errors(doc: bytes | str | Mapping[str, Any], kind: str) -> list[str]:
    """Every schema violation of ``doc`` as ``"<json path>: <message>"``; empty when valid."""
    document = _as_document(doc)
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator(kind).iter_errors(document), key=lambda e: list(e.path))
    ]


def validate(doc: bytes | str | Mapping[str, Any], kind: str, what: str = "document") -> None:
    """Raise ``AssertionError`` listing the violations when ``doc`` is not a valid ``kind``."""
    errors = schema_errors(doc, kind)
    if errors:
        raise AssertionError(f"{what} is not a valid OCI {kind}:\n  " + "\n  ".join(errors[:20]))


def validate_manifest(doc: bytes | str | Mapping[str, Any]) -> None:
    validate(doc, "manifest", "manifest")


def validate_index(doc: bytes | str | Mapping[str, Any]) -> None:
    validate(doc, "index", "index")


def validate_config(doc: bytes | str | Mapping[str, Any]) -> None:
    validate(doc, "config", "config")


def validate_layout_header(doc: bytes | str | Mapping[str, Any]) -> None:
    validate(doc, "layout", "oci-layout")


@dataclass
class LayoutReport:
    """What ``validate_layout`` checked: digests of the JSON documents by kind, and missing blobs."""

    manifests: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def validate_layout(
    path: str | os.PathLike[str], *, require_complete: bool = True, verify_blobs: bool = False
) -> LayoutReport:
    """Validate an OCI layout: ``oci-layout``, ``index.json`` and every JSON blob reachable from it.

    Each JSON document is checked against its schema and its digest and size against the descriptor
    that names it. Other blobs are checked for presence and size (and digest with ``verify_blobs``).
    ``require_complete=False`` accepts absent children, as in a layout whose manifests reference
    registry blobs; absent blobs are listed in ``report.missing`` either way.
    """
    root = Path(path)
    header = root / "oci-layout"
    if not header.is_file():
        raise AssertionError(f"{root} is not an OCI layout: no oci-layout file")
    validate(header.read_bytes(), "layout", f"{header}")
    index_json = root / "index.json"
    if not index_json.is_file():
        raise AssertionError(f"{root} is not an OCI layout: no index.json")
    index_doc = json.loads(index_json.read_bytes())
    validate(index_doc, "index", f"{index_json}")

    report = LayoutReport()
    seen: set[str] = set()
    pending: list[tuple[dict[str, Any], str]] = [(d, "index.json") for d in index_doc.get("manifests", [])]
    while pending:
        desc, parent = pending.pop()
        digest, media_type, size = desc["digest"], desc.get("mediaType"), desc["size"]
        if digest in seen:
            continue
        seen.add(digest)
        algorithm, _, hexpart = digest.partition(":")
        blob = root / "blobs" / algorithm / hexpart
        if not blob.is_file():
            report.missing.append(digest)
            if require_complete:
                raise AssertionError(f"blob {digest} ({media_type}) named by {parent} is missing from {root}")
            continue
        kind = (
            "manifest" if media_type in MANIFEST_TYPES
            else "index" if media_type in INDEX_TYPES
            else "config" if media_type in CONFIG_TYPES and desc.get("_role") == "config"
            else None
        )
        if kind is None:
            actual = blob.stat().st_size
            if actual != size:
                raise AssertionError(f"blob {digest} named by {parent} has {actual} bytes, descriptor says {size}")
            if verify_blobs:
                _verify_file(blob, digest)
            report.blobs.append(digest)
            continue
        if size > MAX_JSON:
            raise AssertionError(f"{kind} {digest} is {size} bytes, more than a JSON document may be")
        raw = blob.read_bytes()
        _verify_bytes(raw, digest, size, f"{kind} blob named by {parent}")
        doc = json.loads(raw)
        validate(doc, kind, f"{kind} {digest}")
        if kind == "manifest":
            report.manifests.append(digest)
            config = dict(doc["config"], _role="config")
            pending.append((config, digest))
            pending.extend((layer, digest) for layer in doc.get("layers", []))
        elif kind == "index":
            report.indexes.append(digest)
            pending.extend((child, digest) for child in doc.get("manifests", []))
        else:
            report.configs.append(digest)
    return report


def _verify_bytes(raw: bytes, digest: str, size: int, what: str) -> None:
    if len(raw) != size:
        raise AssertionError(f"{what}: {len(raw)} bytes, descriptor says {size}")
    algorithm, _, hexpart = digest.partition(":")
    actual = hashlib.new(algorithm, raw).hexdigest()
    if actual != hexpart:
        raise AssertionError(f"{what}: content hashes to {algorithm}:{actual}, not {digest}")


def _verify_file(path: Path, digest: str) -> None:
    algorithm, _, hexpart = digest.partition(":")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != hexpart:
        raise AssertionError(f"blob {path} hashes to {algorithm}:{h.hexdigest()}, not {digest}")
