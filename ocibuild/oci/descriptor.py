"""Descriptors and platforms: the typed pointers that link manifests, configs and layers."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from ocibuild.errors import InvalidReference, ManifestError
from ocibuild.oci import mediatype as mt
from ocibuild.oci.digest import Digest

_EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def _frozen_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if not value:
        return _EMPTY_MAP
    return MappingProxyType(dict(value))


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"{what} must be an object of strings")
    return value


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as in an index entry or an image config."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
            raise InvalidReference(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Platform":
        if not isinstance(data, Mapping) or not isinstance(data.get("os"), str) or not isinstance(
            data.get("architecture"), str
        ):
            raise ManifestError("platform needs string fields os and architecture")
        for key in ("variant", "os.version"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ManifestError(f"platform {key} must be a string")
        features = data.get("os.features")
        if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
            raise ManifestError("platform os.features must be a list of strings")
        return cls(
            data["os"],
            data["architecture"],
            data.get("variant") or None,
            data.get("os.version") or None,
            tuple(data.get("os.features") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    def matches(self, other: "Platform") -> bool:
        """Whether ``other`` (an index entry) satisfies this (requested) platform.

        A request without a variant accepts any variant, as crane and skopeo do.
        """
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """An immutable content descriptor (image-spec descriptor.md)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY_MAP, hash=False)
    urls: tuple[str, ...] = ()
    data: bytes | None = None
    artifact_type: str | None = None
    platform: Platform | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.digest, Digest):
            object.__setattr__(self, "digest", Digest.parse(self.digest))
        if not isinstance(self.annotations, MappingProxyType):
            object.__setattr__(self, "annotations", _frozen_map(self.annotations))
        if isinstance(self.urls, list):
            object.__setattr__(self, "urls", tuple(self.urls))
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ManifestError(f"descriptor {self.digest}: size must be a non-negative integer")

    def __hash__(self) -> int:  # annotations are a mapping; identity is the digest anyway
        return hash((self.media_type, self.digest, self.size))

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes, **kwargs: Any) -> "Descriptor":
        return cls(media_type, Digest.of(data), len(data), **kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> "Descriptor":
        if not isinstance(data, dict):
            raise ManifestError("descriptor must be a JSON object")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError("descriptor has no mediaType")
        if not isinstance(digest, str):
            raise ManifestError("descriptor has no digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"descriptor {digest}: size must be a non-negative integer")
        raw_data = data.get("data")
        blob: bytes | None = None
        if raw_data is not None:
            try:
                blob = base64.b64decode(raw_data, validate=True)
            except (ValueError, TypeError):
                raise ManifestError(f"descriptor {digest}: data is not base64") from None
        urls = data.get("urls") or ()
        if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"descriptor {digest}: urls must be a list of strings")
        artifact_type = data.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ManifestError(f"descriptor {digest}: artifactType must be a string")
        try:
            parsed_digest = Digest.parse(digest)
        except InvalidReference as exc:
            raise ManifestError(str(exc)) from None
        return cls(
            media_type=media_type,
            digest=parsed_digest,
            size=size,
            annotations=_string_map(data.get("annotations"), f"descriptor {digest}: annotations"),
            urls=tuple(urls),
            data=blob,
            artifact_type=artifact_type,
            platform=Platform.from_dict(data["platform"]) if data.get("platform") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> "Descriptor":
        return replace(self, annotations=_frozen_map(annotations))

    def with_platform(self, platform: Platform | None) -> "Descriptor":
        return replace(self, platform=platform)

    @property
    def is_manifest_like(self) -> bool:
        return mt.is_manifest_like(self.media_type)

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)


ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR = Descriptor(mt.OCI_EMPTY, Digest.of(EMPTY_JSON), 2, data=EMPTY_JSON)
