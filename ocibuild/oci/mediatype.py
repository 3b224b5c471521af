"""Media types ocibuild understands. Anything else is passed through untouched, as a leaf."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# schema 1 is long deprecated; recognised only to refuse it with a clear message.
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
GZIP_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, OCI_LAYER_ND_GZIP, DOCKER_LAYER, DOCKER_FOREIGN_LAYER})
ZSTD_LAYER_TYPES = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_ND_ZSTD})
PLAIN_LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_ND})
LAYER_TYPES = GZIP_LAYER_TYPES | ZSTD_LAYER_TYPES | PLAIN_LAYER_TYPES
NON_DISTRIBUTABLE = frozenset({OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_FOREIGN_LAYER})

# The Accept header for manifest GET/HEAD: every manifest kind ocibuild can parse.
MANIFEST_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)


def is_manifest(media_type: str | None) -> bool:
    return media_type in MANIFEST_TYPES


def is_index(media_type: str | None) -> bool:
    return media_type in INDEX_TYPES


def is_manifest_like(media_type: str | None) -> bool:
    """Manifests and indexes: the things a registry serves under /manifests/."""
    return media_type in MANIFEST_TYPES or media_type in INDEX_TYPES


def is_layer(media_type: str | None) -> bool:
    return media_type in LAYER_TYPES


def compression_of(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type (unknown types are treated as opaque)."""
    if media_type in GZIP_LAYER_TYPES:
        return "gzip"
    if media_type in ZSTD_LAYER_TYPES:
        return "zstd"
    return "none"


def is_docker(media_type: str | None) -> bool:
    return bool(media_type) and media_type.startswith("application/vnd.docker.")  # type: ignore[union-attr]


def layer_type(compression: str, docker: bool = False) -> str:
    """The layer media type for a compression, in the family (OCI or Docker) of the manifest."""
    if docker:
        if compression != "gzip":
            raise ValueError(f"Docker v2s2 manifests have no {compression} layer type")
        return DOCKER_LAYER
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}[compression]
