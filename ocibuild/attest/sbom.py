"""The build's SBOMs as referrers of the app image, and ``sbom download`` (pack's command).

One artifact per format (``application/vnd.cyclonedx+json``, ``application/spdx+json``,
``application/vnd.syft+json``), one layer per file as the buildpack wrote it, titled with the path
the lifecycle gives it: ``layers/sbom/<launch|build>/<buildpack>/[<layer>/]sbom.<ext>``.
``sbom download`` writes those same paths under the output directory, from the referrers when the
image has them, else from the image's own SBOM layer (``<layers>/sbom/launch``, launch SBOMs only).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ocibuild.attest.publish import ROLE_SBOM, Blob, Record, no_record
from ocibuild.attest.referrers import TITLE, attach
from ocibuild.errors import NotFound, UnsafeContent
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.manifest import Manifest, parse_manifest
from ocibuild.store.base import Store, load_config

SBOM_MEDIA_TYPES: dict[str, str] = {
    "cdx.json": "application/vnd.cyclonedx+json",
    "spdx.json": "application/spdx+json",
    "syft.json": "application/vnd.syft+json",
}
SBOM_ARTIFACT_TYPES = tuple(SBOM_MEDIA_TYPES.values())
LIFECYCLE_METADATA = "io.buildpacks.lifecycle.metadata"


@dataclass(frozen=True)
class SBOMSource:
    """One SBOM file a buildpack wrote (what ``cnb.launch.SBOMFile`` says of it)."""

    path: Path
    buildpack_id: str
    layer_type: str  # launch | build
    layer_name: str  # "" for buildpack-level SBOMs
    extension: str

    @property
    def title(self) -> str:
        parts = ["layers", "sbom", self.layer_type, self.buildpack_id.replace("/", "_")]
        if self.layer_name:
            parts.append(self.layer_name)
        return "/".join([*parts, f"sbom.{self.extension}"])


def sbom_sources(built: Any) -> list[SBOMSource]:
    """The launch and build SBOMs of a build result (``cnb.build.BuildResult``), in a stable order."""
    out: dict[str, SBOMSource] = {}
    for bp in getattr(built, "buildpacks", ()) or ():
        for sbom in getattr(bp, "sbom_files", ()) or ():
            if sbom.layer_type not in ("launch", "build") or sbom.extension not in SBOM_MEDIA_TYPES:
                continue
            src = SBOMSource(Path(sbom.path), sbom.buildpack_id, sbom.layer_type, sbom.layer_name, sbom.extension)
            out.setdefault(src.title, src)
    return [out[title] for title in sorted(out)]


def attach_sboms(store: Store, image: Descriptor, sources: Iterable[SBOMSource],
                 record: Record = no_record) -> list[Descriptor]:
    """One artifact per SBOM format present; returns their manifest descriptors."""
    by_type: dict[str, list[Blob]] = {}
    for src in sources:
        media = SBOM_MEDIA_TYPES[src.extension]
        by_type.setdefault(media, []).append(Blob(media, path=src.path, annotations={TITLE: src.title}))
    return [attach(store, image, media, blobs, ROLE_SBOM, record=record) for media, blobs in sorted(by_type.items())]


# -- download -------------------------------------------------------------------------------------
def _safe_title(title: str) -> PurePosixPath:
    path = PurePosixPath(title)
    if path.is_absolute() or ".." in path.parts or not title.startswith("layers/sbom/") or len(path.parts) < 4:
        raise UnsafeContent(f"SBOM title {title!r} is not a path under layers/sbom/")
    return path


def _write_blob(store: Store, desc: Descriptor, target: Path) -> None:
    """Stream a verified blob to ``target`` atomically (temp file beside it, fsync, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sbom-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, store.open_blob(desc) as stream:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_referrers(store: Store, image: Descriptor, out: Path) -> list[Path]:
    written: list[Path] = []
    for artifact_type in SBOM_ARTIFACT_TYPES:
        for entry in store.referrers(image, artifact_type):
            desc, raw = store.get_manifest(str(entry.digest))
            manifest = parse_manifest(raw, desc.media_type)
            if not isinstance(manifest, Manifest) or manifest.subject is None \
                    or manifest.subject.digest != image.digest:
                continue  # listed, but not this image's: ``verify`` reports it
            for layer in manifest.layers:
                title = layer.annotations.get(TITLE)
                if not title:
                    continue
                target = out / Path(*_safe_title(title).parts)
                _write_blob(store, layer, target)
                written.append(target)
    return written


def _sbom_layer_name(name: str) -> str | None:
    """``<layers>/sbom/...`` in the image -> ``layers/sbom/...`` on disk (pack's layout); others skipped."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
    if "sbom" not in parts[1:]:
        return None
    i = parts.index("sbom", 1)
    return "/".join(["layers", *parts[i:]])


def _from_layer(store: Store, manifest: Manifest, out: Path) -> list[Path]:
    from ocibuild.layer.compress import decompressor
    from ocibuild.layer.extract import safe_extract
    from ocibuild.oci import mediatype as mt

    config = load_config(store, manifest.config)
    try:
        meta = json.loads(config.labels.get(LIFECYCLE_METADATA) or "{}")
    except ValueError:
        return []
    sha = ((meta.get("sbom") or {}) if isinstance(meta, dict) else {}).get("sha")
    if not sha:
        return []
    by_diff = dict(zip((str(d) for d in config.diff_ids), manifest.layers))
    desc = by_diff.get(sha)
    if desc is None:
        raise NotFound(f"{store.name}: the SBOM layer {sha} named by {LIFECYCLE_METADATA} is not in the image")
    out.mkdir(parents=True, exist_ok=True)
    with store.open_blob(desc) as blob:
        stream = decompressor(blob, mt.compression_of(desc.media_type))
        safe_extract(stream, out, _sbom_layer_name)
        while stream.read(1 << 20):  # to EOF, where the blob's digest is verified
            pass
    return sorted(p for p in (out / "layers" / "sbom").rglob("*") if p.is_file())


@dataclass(frozen=True)
class Downloaded:
    source: str  # "referrers" | "layer" | "none"
    files: tuple[Path, ...]


def download_sboms(store: Store, identifier: str, out: Path) -> Downloaded:
    """The image's SBOMs under ``out/layers/sbom/``: from its referrers first, else from its SBOM layer."""
    image, raw = store.get_manifest(identifier)
    image = Descriptor(image.media_type, image.digest, len(raw))
    files = _from_referrers(store, image, out)
    if files:
        return Downloaded("referrers", tuple(files))
    manifest = parse_manifest(raw, image.media_type)
    if isinstance(manifest, Manifest):
        files = _from_layer(store, manifest, out)
        if files:
            return Downloaded("layer", tuple(files))
    return Downloaded("none", ())
