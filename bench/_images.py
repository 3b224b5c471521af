"""Images the benchmarks build with ocibuild's own code: large incompressible builders.

Random data is generated once (one file per distinct size) and reused by every layer; each layer
also carries a small file naming it, so no two layers share a digest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from _common import REPO

TESTS_DIR = str(REPO / "tests")  # for support.builder_images

MIB = 1 << 20
LAYER_BYTES = 100 * MIB
"""The largest random file; a builder is as many layers of at most this size as it needs."""


def parse_size(text: str) -> int:
    """``20M``, ``200M``, ``1G``, ``512K`` or a byte count."""
    text = text.strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RandomFiles:
    """Random files of the sizes asked for, written once into ``root`` (urandom, no compression)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, size: int) -> Path:
        path = self.root / f"random-{size}.bin"
        if not path.exists():
            with open(path, "wb") as fh:
                left = size
                while left:
                    chunk = min(left, 8 * MIB)
                    fh.write(os.urandom(chunk))
                    left -= chunk
        return path


def incompressible_layer(store, random_file: Path, size: int, name: str):  # noqa: ANN001, ANN201
    """A gzip layer of ``size`` random bytes plus a small file ``name``: written with ``write_layer``
    into ``store``'s temp dir and published. Returns the ``LayerResult``."""
    from ocibuild.layer import TarEntry, write_layer

    entries = [
        TarEntry(f"bench/{name}/random.bin", size=size, opener=lambda: open(random_file, "rb")),
        TarEntry.file(f"bench/{name}/name", name.encode()),
    ]
    result = write_layer(entries, tmp_dir=store.tmp_dir)
    store.put_blob_file(result.descriptor, result.path)
    return result


def write_builder(layout: Path, total: int, randoms: RandomFiles, tag: str = "builder") -> int:
    """A builder image (pack's labels and env, as ``tests/support/builder_images.py`` writes them)
    whose layers are one small buildpack layer and ``total`` bytes of random layers. Returns the
    sum of the blob sizes (manifest, config and layers)."""
    import sys

    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    from support.builder_images import BASE_BP_LAYER, write_builder_manifest

    from ocibuild.layer import write_layer
    from ocibuild.store.layout import LayoutStore

    store = LayoutStore(layout, create=True)
    src = layout.parent / f"{layout.name}-bp"
    for rel, value in BASE_BP_LAYER.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    bp = write_layer(src, tmp_dir=store.tmp_dir)
    store.put_blob_file(bp.descriptor, bp.path)
    shutil.rmtree(src)
    results = [bp]
    left, i = total, 0
    while left > 0:
        size = min(left, LAYER_BYTES)
        results.append(incompressible_layer(store, randoms.get(size), size, f"{layout.name}-{i}"))
        left -= size
        i += 1
    manifest = write_builder_manifest(store, results, str(bp.diff_id), tag)
    return manifest.size + manifest.config.size + sum(r.descriptor.size for r in results)
