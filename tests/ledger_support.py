"""Shared by the ledger, GC and fsck tests: tiny images built with ocibuild's model, and a worker
process (``python ledger_support.py ...``) that writes under a lease, for SIGKILL and concurrency tests."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocibuild.ledger.lease import Lease  # noqa: E402
from ocibuild.oci import mediatype as mt  # noqa: E402
from ocibuild.oci.descriptor import Descriptor  # noqa: E402
from ocibuild.oci.digest import Digest  # noqa: E402
from ocibuild.oci.manifest import ImageConfig, Index, Manifest  # noqa: E402


@dataclass(frozen=True)
class Image:
    manifest: Manifest
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def desc(self) -> Descriptor:
        return self.manifest.descriptor()

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Digest, ...]:
        return (self.manifest.digest, self.config.digest, *(layer.digest for layer in self.layers))


def layer_bytes(name: str, size: int = 256) -> bytes:
    """Deterministic, non-JSON bytes standing in for a compressed layer."""
    seed = name.encode()
    return (b"\x1f\x8b" + seed * (size // max(len(seed), 1) + 1))[:size]


def build_image(
    layer_names: list[str], *, label: str = "", subject: Descriptor | None = None
) -> tuple[Image, dict[Digest, bytes]]:
    layers = {name: layer_bytes(name) for name in layer_names}
    layer_descs = tuple(Descriptor.for_bytes(mt.OCI_LAYER_GZIP, data) for data in layers.values())
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"test": label or ",".join(layer_names)}},
        "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in layer_descs]},
    })
    manifest = Manifest.build(config.descriptor(), layer_descs, subject=subject)
    contents = {d.digest: data for d, data in zip(layer_descs, layers.values())}
    contents[config.digest] = config.raw
    return Image(manifest, config.descriptor(), layer_descs), contents


def write_image(store, layer_names: list[str], *, tag: str | None = None, label: str = "",
                subject: Descriptor | None = None, lease: Lease | None = None, role: str = "app-image",
                ephemeral: bool = False) -> Image:
    """Write config, layers and manifest (optionally tagged), under ``lease`` when given."""
    image, contents = build_image(layer_names, label=label, subject=subject)
    for desc in (image.config, *image.layers):
        data = contents[desc.digest]
        if lease is not None:
            lease.put_blob(store, desc, io.BytesIO(data), ephemeral=ephemeral)
        else:
            with store.writer_lock():
                store.put_blob(desc, io.BytesIO(data))
    if lease is not None:
        lease.put_manifest(store, image.desc, image.manifest.raw, tag=tag, role=role, ephemeral=ephemeral)
    else:
        with store.writer_lock():
            store.put_manifest(image.desc, image.manifest.raw, tag=tag)
    return image


def write_index(store, manifests: list[Descriptor], *, tag: str | None = None) -> Index:
    index = Index.build(manifests)
    with store.writer_lock():
        store.put_manifest(index.descriptor(), index.raw, tag=tag)
    return index


def tagged_images_complete(store) -> list[str]:
    """Problems with every tagged image: each manifest's config and layers must be present."""
    from ocibuild.oci.manifest import parse_manifest

    problems = []
    for entry in store.index_entries():
        path = store.blob_path(entry.digest)
        if not path.exists():
            problems.append(f"{entry.ref_name}: manifest missing")
            continue
        manifest = parse_manifest(path.read_bytes(), entry.media_type)
        for child in manifest.children():
            if not store.blob_path(child.digest).exists():
                problems.append(f"{entry.ref_name}: {child.digest} missing")
    return problems


def _worker_killable(scratch: str, ready: str) -> None:
    """Take a lease, write an ephemeral tagged builder and an untagged layer, then wait to be killed."""
    from ocibuild.ledger.scratch import Scratch

    sc = Scratch.resolve(scratch)
    store = sc.open_layout()
    lease = Lease(sc, ttl=600).acquire()
    write_image(store, ["killed-a", "killed-b"], tag="ephemeral-killed", lease=lease,
                role="ephemeral-builder", ephemeral=True)
    lease.put_blob(store, Descriptor.for_bytes(mt.OCI_LAYER_GZIP, layer_bytes("killed-orphan")),
                   io.BytesIO(layer_bytes("killed-orphan")))
    Path(ready).write_text(lease.id)
    import time

    time.sleep(600)


def _worker_loop(scratch: str, worker: int, rounds: int) -> None:
    """Write a tagged app image and a tagged ephemeral builder per round, release, collect."""
    from ocibuild.ledger.gc import collect
    from ocibuild.ledger.scratch import Scratch

    sc = Scratch.resolve(scratch)
    store = sc.open_layout()
    for n in range(rounds):
        with Lease(sc, ttl=120) as lease:
            write_image(store, ["shared-base", f"app-{worker}-{n}"], tag=f"app-{worker}-{n}", lease=lease)
            write_image(store, ["shared-base", "shared-eph", f"eph-{worker}-{n}"], tag=f"eph-{worker}-{n}",
                        lease=lease, role="ephemeral-builder", ephemeral=True)
        report = collect(sc, grace_seconds=0)
        if report.aborted:
            raise SystemExit(f"gc aborted: {report.errors}")


if __name__ == "__main__":
    if sys.argv[1] == "killable":
        _worker_killable(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "loop":
        _worker_loop(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]}")
