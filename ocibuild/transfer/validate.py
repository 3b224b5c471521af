"""``validate``: an image (or index) checked end to end, like ``crane validate``.

Every manifest's digest and size, every child's declared media type, every config's digest and
its ``rootfs.diff_ids`` against the layers, every layer's digest and size (streamed) and its
uncompressed diffID. OCI documents are also checked against the image-spec JSON Schemas when
they are available at run time (``OCIBUILD_SCHEMA_DIR``, or ``schemas=DIR``, and ``jsonschema``
installed); otherwise the report says the schema check was skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ocibuild.errors import NotFound, OCIBuildError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import CHUNK, Hasher
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, parse_manifest
from ocibuild.store.base import read_blob

if TYPE_CHECKING:
    from ocibuild.store.base import Store

SCHEMA_ENV = "OCIBUILD_SCHEMA_DIR"
_SCHEMA_FILES = {
    "manifest": "image-manifest-schema.json", "index": "image-index-schema.json", "config": "config-schema.json",
    "descriptor": "content-descriptor.json", "defs": "defs.json", "defs-descriptor": "defs-descriptor.json",
}


@dataclass
class Report:
    """What was checked (``checked``: one line each) and what is wrong (``problems``)."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    schemas: str = "skipped"

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problems": self.problems, "schemas": self.schemas}


def _schema_checker(directory: str | None) -> tuple[Callable[[bytes, str], list[str]] | None, str]:
    """A function (document, kind) -> violations, or None and why not."""
    directory = directory or os.environ.get(SCHEMA_ENV)
    if not directory:
        return None, f"skipped (set {SCHEMA_ENV} to the image-spec schema directory)"
    path = Path(directory)
    missing = [n for n in _SCHEMA_FILES.values() if not (path / n).is_file()]
    if missing:
        return None, f"skipped ({path} lacks {', '.join(missing)})"
    try:
        from jsonschema import Draft4Validator
        from referencing import Registry, Resource
        from referencing.exceptions import NoSuchResource
        from referencing.jsonschema import DRAFT4
    except ImportError:
        return None, "skipped (the jsonschema package is not installed)"
    by_name = {n: Resource.from_contents(json.loads((path / n).read_text()), default_specification=DRAFT4)
               for n in _SCHEMA_FILES.values()}
    pairs = [(n, r) for n, r in by_name.items()] + [(r.id(), r) for r in by_name.values() if r.id()]

    def retrieve(uri: str) -> Any:  # relative $refs resolve against nested ids: match on the file name
        name = uri.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if name in by_name:
            return by_name[name]
        raise NoSuchResource(ref=uri)

    registry = Registry(retrieve=retrieve).with_resources(pairs)  # type: ignore[call-arg, arg-type]

    def check(raw: bytes, kind: str) -> list[str]:
        schema = by_name[_SCHEMA_FILES[kind]].contents
        validator = Draft4Validator(schema, registry=registry)  # type: ignore[arg-type]
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(json.loads(raw))]

    return check, f"checked against {path}"


def _diff_id_of(store: "Store", layer: Descriptor) -> Any:
    """Stream a layer: the store's reader verifies digest and size; the uncompressed bytes are hashed."""
    from ocibuild.layer.compress import decompressor

    hasher = Hasher("sha256")
    with store.open_blob(layer) as blob:
        plain = decompressor(blob, mt.compression_of(layer.media_type))
        while chunk := plain.read(CHUNK):
            hasher.update(chunk)
        while blob.read(CHUNK):  # to EOF: the digest is verified there
            pass
    return hasher.digest()


def validate_image(store: "Store", identifier: str, *, fast: bool = False, schemas: str | None = None) -> Report:
    """Check the graph ``identifier`` names; ``fast`` checks layer presence and size, not content."""
    from ocibuild.transfer.copy import fetch_manifest

    report = Report()
    check, report.schemas = _schema_checker(schemas)

    def schema(raw: bytes, kind: str, what: str) -> None:
        if check is not None:
            for problem in check(raw, kind)[:5]:
                report.problems.append(f"{what}: schema: {problem}")

    def manifest(desc: Descriptor, raw: bytes, path: tuple[Any, ...]) -> None:
        what = f"manifest {desc.digest}"
        if desc.digest in path:
            report.problems.append(f"{what}: index cycle")
            return
        try:
            doc = parse_manifest(raw, desc.media_type if mt.is_manifest_like(desc.media_type) else None)
        except OCIBuildError as exc:
            report.problems.append(f"{what}: {exc}")
            return
        if mt.is_manifest_like(desc.media_type) and doc.media_type != desc.media_type:
            report.problems.append(f"{what}: declared {desc.media_type}, is {doc.media_type}")
        report.checked.append(f"{what} ({doc.media_type}, {len(raw)} bytes)")
        if isinstance(doc, Index):
            schema(raw, "index", what) if doc.media_type == mt.OCI_INDEX else None
            for child in doc.manifests:
                try:
                    child_raw = fetch_manifest(store, child)
                except OCIBuildError as exc:
                    report.problems.append(f"manifest {child.digest}: {exc}")
                    continue
                manifest(child, child_raw, (*path, desc.digest))
            return
        assert isinstance(doc, Manifest)
        schema(raw, "manifest", what) if doc.media_type == mt.OCI_MANIFEST else None
        image(doc)

    def image(doc: Manifest) -> None:
        what = f"config {doc.config.digest}"
        try:
            config_raw = read_blob(store, doc.config)
        except OCIBuildError as exc:
            report.problems.append(f"{what}: {exc}")
            return
        report.checked.append(f"{what} ({doc.config.media_type}, {doc.config.size} bytes)")
        diff_ids: tuple[Any, ...] = ()
        if doc.config.media_type in mt.CONFIG_TYPES:
            schema(config_raw, "config", what) if doc.config.media_type == mt.OCI_CONFIG else None
            try:
                diff_ids = ImageConfig.parse(config_raw, doc.config.media_type).diff_ids
            except OCIBuildError as exc:
                report.problems.append(f"{what}: {exc}")
                return
            if len(diff_ids) != len(doc.layers):
                report.problems.append(f"{what}: {len(diff_ids)} diff_ids for {len(doc.layers)} layers")
                diff_ids = ()
        for i, layer in enumerate(doc.layers):
            lwhat = f"layer {layer.digest}"
            if not mt.is_layer(layer.media_type) and doc.config.media_type in mt.CONFIG_TYPES:
                report.problems.append(f"{lwhat}: unknown layer media type {layer.media_type}")
                continue
            if layer.media_type in mt.NON_DISTRIBUTABLE and layer.urls and not store.has_blob(layer):
                report.checked.append(f"{lwhat} (foreign, not present)")
                continue
            try:
                if fast:
                    if not store.has_blob(layer):
                        report.problems.append(f"{lwhat}: missing")
                    else:
                        report.checked.append(f"{lwhat} (present)")
                    continue
                got = _diff_id_of(store, layer) if mt.is_layer(layer.media_type) else None
            except OCIBuildError as exc:
                report.problems.append(f"{lwhat}: {exc}")
                continue
            except (OSError, EOFError, ValueError) as exc:
                report.problems.append(f"{lwhat}: cannot decompress ({exc})")
                continue
            if diff_ids and got is not None and got != diff_ids[i]:
                report.problems.append(f"{lwhat}: uncompressed content is {got}, the config's diff_id is {diff_ids[i]}")
                continue
            report.checked.append(f"{lwhat} ({layer.size} bytes, diff_id {got})")

    try:
        desc, raw = store.get_manifest(identifier)
    except NotFound:
        raise
    except OCIBuildError as exc:
        report.problems.append(f"{identifier}: {exc}")
        return report
    manifest(desc, raw, ())
    return report
