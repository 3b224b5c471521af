"""Image references: Docker's grammar for registries, skopeo's ``oci:DIR[:TAG]`` for layouts."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Union

from ocibuild.errors import InvalidDigest, InvalidReference
from ocibuild.oci.digest import Digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

# distribution/reference grammar (regexp.go), written out once.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255
# image-spec annotations.md: characters allowed in org.opencontainers.image.ref.name
_LAYOUT_TAG = re.compile(r"^[A-Za-z0-9._:@/+-]+$")


def _looks_like_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def split_host_port(registry: str) -> tuple[str, int | None]:
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = registry.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return registry, None


def normalize_registry(registry: str) -> str:
    registry = registry.strip()
    for prefix in ("https://", "http://"):
        if registry.startswith(prefix):
            registry = registry[len(prefix):]
    registry = registry.rstrip("/")
    if registry.endswith("/v1") or registry.endswith("/v2"):
        registry = registry[:-3]
    if registry in _HUB_ALIASES:
        return DOCKER_HUB
    if not _DOMAIN.match(registry):
        raise InvalidReference(f"invalid registry {registry!r}: expected HOST[:PORT]")
    return registry


@dataclass(frozen=True)
class Reference:
    """A fully-qualified registry reference. ``tag`` and ``digest`` may both be set (digest wins)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        """The host:port to speak the distribution API to (Docker Hub's API lives elsewhere)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to put after ``/manifests/``: the digest if known, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> "Reference":
        return replace(self, digest=digest)

    def in_repository(self, repository: str) -> "Reference":
        return replace(self, repository=repository)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


@dataclass(frozen=True)
class LayoutReference:
    """``oci:DIR[:TAG]`` or ``oci:DIR@DIGEST``: an image in an OCI image layout directory."""

    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def identifier(self) -> str | None:
        if self.digest is not None:
            return str(self.digest)
        return self.tag

    def with_tag(self, tag: str) -> "LayoutReference":
        if not _LAYOUT_TAG.match(tag):
            raise InvalidReference(f"invalid layout tag {tag!r}: allowed characters are A-Za-z0-9._:@/+-")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> "LayoutReference":
        return replace(self, digest=digest, tag=None)

    def __str__(self) -> str:
        if self.digest is not None:
            return f"oci:{self.path}@{self.digest}"
        return f"oci:{self.path}:{self.tag}" if self.tag else f"oci:{self.path}"


OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class ArchiveReference:
    """skopeo's ``oci-archive:PATH[:TAG]`` (a tar of an OCI layout) or ``docker-archive:PATH[:REF|@N]``
    (``docker save``'s tar). ``tag`` is the layout ref name, or for a docker archive the familiar
    Docker reference (``app:1``) its ``RepoTags`` hold; ``index`` is a docker archive's ``@N``."""

    transport: str
    path: str
    tag: str | None = None
    digest: Digest | None = None
    index: int | None = None

    @property
    def identifier(self) -> str | None:
        if self.digest is not None:
            return str(self.digest)
        if self.index is not None:
            return f"@{self.index}"
        return self.tag

    @property
    def is_docker(self) -> bool:
        return self.transport == DOCKER_ARCHIVE

    def with_tag(self, tag: str) -> "ArchiveReference":
        if self.is_docker:
            return replace(self, tag=familiar_name(parse_docker_reference(tag)), digest=None, index=None)
        if not _LAYOUT_TAG.match(tag):
            raise InvalidReference(f"invalid layout tag {tag!r}: allowed characters are A-Za-z0-9._:@/+-")
        return replace(self, tag=tag, digest=None, index=None)

    def with_digest(self, digest: Digest) -> "ArchiveReference":
        return replace(self, digest=digest, tag=None, index=None)

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.transport}:{self.path}@{self.digest}"
        if self.index is not None:
            return f"{self.transport}:{self.path}:@{self.index}"
        return f"{self.transport}:{self.path}:{self.tag}" if self.tag else f"{self.transport}:{self.path}"


AnyReference = Union[Reference, LayoutReference, ArchiveReference]


def familiar_name(ref: "Reference") -> str:
    """``app:1`` for ``docker.io/library/app:1``: the form ``docker save`` writes into ``RepoTags``."""
    name = ref.name
    if ref.registry == DOCKER_HUB:
        name = ref.repository.removeprefix("library/") if ref.repository.count("/") == 1 else ref.repository
    return f"{name}:{ref.tag or 'latest'}"


def parse_archive_reference(transport: str, text: str) -> ArchiveReference:
    """skopeo's grammar: the first ``:`` ends the path. An oci-archive takes ``TAG`` or ``@DIGEST``
    (as ``oci:``); a docker-archive takes a Docker ``NAME:TAG`` or ``@N`` (the N-th image)."""
    if not text:
        raise InvalidReference(f"{transport}: reference needs a file, e.g. {transport}:./image.tar")
    if transport == OCI_ARCHIVE:
        layout = parse_layout_reference(text)
        return ArchiveReference(transport, layout.path, layout.tag, layout.digest)
    path, sep, rest = text.partition(":")
    if not path:
        raise InvalidReference(f"invalid reference {transport}:{text!r}: empty file name")
    if not sep:
        return ArchiveReference(transport, path)
    if rest.startswith("@"):
        if not rest[1:].isdigit():
            raise InvalidReference(f"invalid reference {transport}:{text!r}: @N needs an image number")
        return ArchiveReference(transport, path, index=int(rest[1:]))
    ref = parse_docker_reference(rest)
    if ref.digest is not None:
        raise InvalidReference(f"invalid reference {transport}:{text!r}: a docker-archive names NAME:TAG, not a digest")
    return ArchiveReference(transport, path, familiar_name(ref))


def parse_layout_reference(text: str) -> LayoutReference:
    """``DIR[:TAG]`` or ``DIR@DIGEST`` (the part after ``oci:``); like skopeo, the first ``:`` splits."""
    if not text:
        raise InvalidReference("oci: reference needs a directory, e.g. oci:./layout:latest")
    at = text.rfind("@")
    if at > 0 and ":" in text[at:]:
        path, digest_text = text[:at], text[at + 1:]
        if ":" not in path:
            try:
                return LayoutReference(path, None, Digest.parse(digest_text))
            except InvalidDigest:
                pass
    path, sep, tag = text.partition(":")
    if not path:
        raise InvalidReference(f"invalid layout reference oci:{text!r}: empty directory")
    if not sep:
        return LayoutReference(path)
    if not tag or not _LAYOUT_TAG.match(tag):
        raise InvalidReference(f"invalid layout tag {tag!r}: allowed characters are A-Za-z0-9._:@/+-")
    return LayoutReference(path, tag)


def parse_reference(text: str, default_registry: str | None = None) -> AnyReference:
    """Parse what a user typed: ``oci:DIR[:TAG]``, ``oci-archive:``/``docker-archive:PATH[:REF]``,
    ``docker://REF`` or a Docker reference.

    ``default_registry`` (``--registry``) is where short names (no domain part) live; without it,
    Docker Hub with its ``library/`` prefix, exactly as ``docker pull`` does.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("empty image reference")
    text = text.strip()
    if text.startswith("oci:"):
        return parse_layout_reference(text[4:])
    if text.startswith("ocidir://"):
        return parse_layout_reference(text[len("ocidir://"):])
    for transport in (OCI_ARCHIVE, DOCKER_ARCHIVE):
        if text.startswith(transport + ":"):
            return parse_archive_reference(transport, text[len(transport) + 1:])
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    return parse_docker_reference(text, default_registry)


def parse_docker_reference(text: str, default_registry: str | None = None) -> Reference:
    original = text
    digest: Digest | None = None
    if "@" in text:
        text, _, digest_text = text.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest:
            raise InvalidReference(f"invalid reference {original!r}: bad digest {digest_text!r}") from None
    tag: str | None = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference {original!r}: bad tag {tag!r}")
    first, sep, rest = text.partition("/")
    if sep and _looks_like_domain(first):
        registry, path = normalize_registry(first), rest
    elif default_registry:
        registry, path = normalize_registry(default_registry), text
    else:
        registry, path = DOCKER_HUB, text
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not _PATH.match(path):
        raise InvalidReference(
            f"invalid reference {original!r}: repository names are lowercase letters, digits and separators"
        )
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise InvalidReference(f"invalid reference {original!r}: name longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def parse_repository(text: str, default_registry: str | None = None) -> Reference:
    """A repository without tag or digest (for ``tags REPO``)."""
    ref = parse_docker_reference(text.removeprefix("docker://"), default_registry)
    return replace(ref, tag=None, digest=None)


def is_loopback_host(registry: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1: registries that speak plain HTTP by default."""
    host, _ = split_host_port(registry)
    host = host.lower()
    return host == "localhost" or host.startswith("127.") and re.fullmatch(r"127(?:\.\d{1,3}){3}", host) is not None or host == "::1"
