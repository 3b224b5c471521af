"""Image manifests, indexes and configs, each bound to its exact bytes.

A manifest that was read keeps the bytes it was read from (and so its digest): ocibuild never
re-serialises content someone else created. A manifest that ocibuild writes is encoded once by
``canonical_json`` and its digest is the digest of exactly those bytes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Union

from ocibuild.errors import InvalidDigest, ManifestError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor, Platform, _frozen_map, _string_map
from ocibuild.oci.digest import Digest

# Registries must accept at least 4 MB; refuse to parse anything far beyond that.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024


def canonical_json(obj: Any) -> bytes:
    """The one deterministic encoding of everything ocibuild writes: sorted keys, compact separators."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicate JSON key {key!r} (I-JSON forbids it)")
        out[key] = value
    return out


def load_json(raw: bytes, what: str = "document") -> Any:
    """Strict JSON: UTF-8, no duplicate keys, bounded size."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ManifestError(f"{what} is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None


def _descriptors(value: Any, what: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{what} must be a list")
    return tuple(Descriptor.from_dict(d) for d in value)


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{key} must be a string")
    return value


def _check_media_type(doc: Mapping[str, Any], content_type: str | None, default: str) -> str:
    declared = _optional_str(doc, "mediaType")
    if declared and content_type and content_type != declared and mt.is_manifest_like(content_type):
        raise ManifestError(f"manifest declares mediaType {declared} but was served as {content_type}")
    return declared or (content_type if mt.is_manifest_like(content_type) else None) or default


@dataclass(frozen=True)
class _Document:
    """Shared part of manifests and indexes: the exact bytes and the digest of those bytes."""

    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str

    def descriptor(self, **kwargs: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **kwargs)

    @property
    def size(self) -> int:
        return len(self.raw)

    def json(self) -> Any:
        """A fresh, mutable copy of the parsed document (never re-encode it as this manifest)."""
        return load_json(self.raw)


@dataclass(frozen=True)
class Manifest(_Document):
    config: Descriptor = field(default=None)  # type: ignore[assignment]
    layers: tuple[Descriptor, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    artifact_type: str | None = None
    subject: Descriptor | None = None

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: Iterable[Descriptor],
        *,
        media_type: str = mt.OCI_MANIFEST,
        annotations: Mapping[str, str] | None = None,
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
    ) -> "Manifest":
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_dict(),
            "layers": [layer.to_dict() for layer in layers],
        }
        if annotations:
            doc["annotations"] = dict(annotations)
        if artifact_type:
            doc["artifactType"] = artifact_type
        if subject is not None:
            doc["subject"] = subject.to_dict()
        return cls.parse(canonical_json(doc), media_type)

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None) -> "Manifest":
        doc = load_json(raw, "manifest")
        if not isinstance(doc, dict):
            raise ManifestError("manifest is not a JSON object")
        if doc.get("schemaVersion") != 2:
            raise ManifestError(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
        media_type = _check_media_type(doc, content_type, mt.OCI_MANIFEST)
        if "config" not in doc:
            raise ManifestError("image manifest has no config")
        config = Descriptor.from_dict(doc["config"])
        artifact_type = _optional_str(doc, "artifactType")
        if config.media_type == mt.OCI_EMPTY and not artifact_type and media_type == mt.OCI_MANIFEST:
            # image-spec: artifactType MUST be set when config is empty. Tolerated on read, refused on write.
            pass
        return cls(
            raw=bytes(raw),
            digest=Digest.of(raw),
            media_type=media_type,
            config=config,
            layers=_descriptors(doc.get("layers", []), "layers"),
            annotations=_frozen_map(_string_map(doc.get("annotations"), "annotations")),
            artifact_type=artifact_type,
            subject=Descriptor.from_dict(doc["subject"]) if doc.get("subject") is not None else None,
        )

    def children(self) -> tuple[Descriptor, ...]:
        """What a complete copy of this manifest needs: its config, then its layers."""
        return (self.config, *self.layers)

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST


@dataclass(frozen=True)
class Index(_Document):
    manifests: tuple[Descriptor, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    artifact_type: str | None = None
    subject: Descriptor | None = None

    @classmethod
    def build(
        cls,
        manifests: Iterable[Descriptor],
        *,
        media_type: str = mt.OCI_INDEX,
        annotations: Mapping[str, str] | None = None,
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
    ) -> "Index":
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [m.to_dict() for m in manifests],
        }
        if annotations:
            doc["annotations"] = dict(annotations)
        if artifact_type:
            doc["artifactType"] = artifact_type
        if subject is not None:
            doc["subject"] = subject.to_dict()
        return cls.parse(canonical_json(doc), media_type)

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None) -> "Index":
        doc = load_json(raw, "index")
        if not isinstance(doc, dict):
            raise ManifestError("index is not a JSON object")
        if doc.get("schemaVersion") != 2:
            raise ManifestError(f"unsupported index schemaVersion {doc.get('schemaVersion')!r}")
        media_type = _check_media_type(doc, content_type, mt.OCI_INDEX)
        if "manifests" not in doc:
            raise ManifestError("image index has no manifests")
        return cls(
            raw=bytes(raw),
            digest=Digest.of(raw),
            media_type=media_type,
            manifests=_descriptors(doc["manifests"], "manifests"),
            annotations=_frozen_map(_string_map(doc.get("annotations"), "annotations")),
            artifact_type=_optional_str(doc, "artifactType"),
            subject=Descriptor.from_dict(doc["subject"]) if doc.get("subject") is not None else None,
        )

    def children(self) -> tuple[Descriptor, ...]:
        return self.manifests

    def select(self, platform: Platform) -> Descriptor | None:
        """The first entry for ``platform`` (the order of the index is the publisher's preference)."""
        for entry in self.manifests:
            if entry.platform is not None and platform.matches(entry.platform):
                return entry
        return None


AnyManifest = Union[Manifest, Index]


def parse_manifest(raw: bytes, content_type: str | None = None) -> AnyManifest:
    """Parse a manifest or an index, deciding by ``mediaType``, else the content type, else the shape."""
    doc = load_json(raw, "manifest")
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    declared = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else None
    kind = declared or (content_type if mt.is_manifest_like(content_type) else None)
    if kind in (mt.DOCKER_MANIFEST_V1, mt.DOCKER_MANIFEST_V1_SIGNED) or doc.get("schemaVersion") == 1:
        raise ManifestError("Docker schema 1 manifests are not supported (deprecated since 2017)")
    if kind in mt.INDEX_TYPES or (kind is None and "manifests" in doc):
        return Index.parse(raw, content_type)
    if kind in mt.MANIFEST_TYPES or (kind is None and "config" in doc):
        return Manifest.parse(raw, content_type)
    raise ManifestError(f"not an image manifest or index (mediaType {kind!r})")


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _check_config_types(doc: Mapping[str, Any]) -> None:
    """Refuse, at parse time, the wrong JSON types behind the accessors (``null`` means absent)."""
    for key in ("os", "architecture", "variant", "os.version", "created"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise ManifestError(f"image config: {key} must be a string")
    for key in ("config", "rootfs"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ManifestError(f"image config: {key} must be an object")
    inner = doc.get("config") or {}
    env = inner.get("Env")
    if env is not None and not (isinstance(env, list) and all(isinstance(e, str) for e in env)):
        raise ManifestError("image config: config.Env must be a list of strings")
    _string_map(inner.get("Labels"), "image config: config.Labels")
    diff_ids = (doc.get("rootfs") or {}).get("diff_ids")
    if diff_ids is not None and not (isinstance(diff_ids, list) and all(isinstance(d, str) for d in diff_ids)):
        raise ManifestError("image config: rootfs.diff_ids must be a list of strings")
    for d in diff_ids or ():
        try:
            Digest.parse(d)
        except InvalidDigest as exc:
            raise ManifestError(f"image config: bad diff_id ({exc})") from None


@dataclass(frozen=True)
class ImageConfig:
    """An image config blob: exact bytes plus read-only accessors. Edit via ``to_dict()`` + ``build``."""

    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str = mt.OCI_CONFIG
    _doc: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def parse(cls, raw: bytes, media_type: str = mt.OCI_CONFIG) -> "ImageConfig":
        doc = load_json(raw, "image config")
        if not isinstance(doc, dict):
            raise ManifestError("image config is not a JSON object")
        _check_config_types(doc)
        return cls(bytes(raw), Digest.of(raw), media_type, _freeze(doc))

    @classmethod
    def build(cls, doc: Mapping[str, Any], media_type: str = mt.OCI_CONFIG) -> "ImageConfig":
        return cls.parse(canonical_json(doc), media_type)

    def to_dict(self) -> dict[str, Any]:
        """A deep, mutable copy of the document."""
        return copy.deepcopy(load_json(self.raw))

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    @property
    def _config(self) -> Mapping[str, Any]:
        return self._doc.get("config") or {}

    @property
    def os(self) -> str:
        return self._doc.get("os", "")

    @property
    def architecture(self) -> str:
        return self._doc.get("architecture", "")

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self._doc.get("variant") or None, self._doc.get("os.version"))

    @property
    def labels(self) -> Mapping[str, str]:
        return self._config.get("Labels") or MappingProxyType({})

    @property
    def env(self) -> tuple[str, ...]:
        return tuple(self._config.get("Env") or ())

    @property
    def diff_ids(self) -> tuple[Digest, ...]:
        rootfs = self._doc.get("rootfs") or {}
        try:
            return tuple(Digest.parse(d) for d in rootfs.get("diff_ids") or ())
        except Exception as exc:  # InvalidDigest: surfaced as a manifest problem
            raise ManifestError(f"image config: bad diff_id ({exc})") from None

    @property
    def created(self) -> str | None:
        return self._doc.get("created")

    def get(self, key: str, default: Any = None) -> Any:
        return self._doc.get(key, default)

    def iter_env(self) -> Iterator[tuple[str, str]]:
        for item in self.env:
            key, _, value = item.partition("=")
            yield key, value
