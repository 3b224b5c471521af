"""Composing from a registry builder of more than 200 MB fetches its manifest and config only.

The builder is made with ocibuild's own layer code: four incompressible 64 MiB layers (one random
file reused, plus a small file naming each layer, so the four digests differ) on top of a small
buildpack layer, with pack's builder labels. It is pushed to the real registry; then
``open_builder`` + ``compose_builder`` add a buildpack into a fresh scratch layout, and the
registry's access log must show no request for any layer's bytes. A whole ``ocibuild build`` runs
the buildpacks on the builder's file system: it fetches each layer once, then never again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocibuild.cnb.builder import open_builder
from ocibuild.cnb.compose import compose_builder
from ocibuild.layer import TarEntry, write_layer
from ocibuild.ledger.scratch import Scratch
from ocibuild.oci import Manifest
from ocibuild.store.layout import LayoutStore
from ocibuild.store.open import open_reference
from ocibuild.store.registry.client import RegistryOptions
from ocibuild.transfer.copy import copy_image

from support.builder_images import BASE_BP_LAYER, BUILDPACKS, write_builder_manifest
from support.images import busybox_files, layer_entries, write_busybox_image
from support.registry import RegistryServer

MIB = 1 << 20
RANDOM_BYTES = 64 * MIB
RANDOM_LAYERS = 4
HELLO = BUILDPACKS / "hello"
NOOP = Path(__file__).resolve().parent.parent / "fixtures" / "bench" / "buildpacks" / "noop"


@pytest.fixture(scope="module")
def large_builder(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Manifest]:
    """``HOST/test/large-builder:v1`` (> 256 MB of layers) in the session registry, and its manifest."""
    work = tmp_path_factory.mktemp("large-builder")
    random_file = work / "random.bin"
    with open(random_file, "wb") as fh:
        for _ in range(RANDOM_BYTES // (8 * MIB)):
            fh.write(os.urandom(8 * MIB))
    store = LayoutStore(work / "layout", create=True)
    results = [write_layer(layer_entries(BASE_BP_LAYER), tmp_dir=store.tmp_dir),
               write_layer(layer_entries(busybox_files()), tmp_dir=store.tmp_dir)]  # the build image's shell
    for i in range(RANDOM_LAYERS):
        results.append(write_layer([
            TarEntry("base/random.bin", size=RANDOM_BYTES, opener=lambda: open(random_file, "rb")),
            TarEntry.file("base/layer-name", f"large builder layer {i}\n".encode()),
        ], tmp_dir=store.tmp_dir))
    for r in results:
        store.put_blob_file(r.descriptor, r.path)
    random_file.unlink()
    manifest = write_builder_manifest(store, results, str(results[0].diff_id), "builder")
    assert sum(layer.size for layer in manifest.layers) > 200 * 1000 * 1000

    ref = registry.ref("test/large-builder", "v1")
    dst, tag = open_reference(ref, options=RegistryOptions(insecure=(registry.host,)))
    copy_image(store, "builder", dst, tag)
    return ref, manifest


def test_compose_from_a_large_registry_builder_fetches_no_layer(
    registry: RegistryServer, large_builder: tuple[str, Manifest], tmp_path: Path
) -> None:
    ref, manifest = large_builder
    scratch = Scratch.resolve(tmp_path / "scratch").ensure()
    ledger = scratch.open_ledger()
    mark = registry.log_mark()
    try:
        store, identifier = open_reference(ref, options=RegistryOptions(insecure=(registry.host,)))
        builder = open_builder(store, identifier or "latest")
        result = compose_builder(builder, buildpacks=[HELLO], scratch_store=scratch.open_layout(), ledger=ledger)
        sources = {str(layer.digest): ledger.sources(layer.digest) for layer in manifest.layers}
    finally:
        ledger.close()

    # the composed builder references every base layer and adds the buildpack's
    assert result.ephemeral
    assert result.manifest.layers[:len(manifest.layers)] == manifest.layers
    assert len(result.new_layers) >= 1
    layout = scratch.open_layout()
    assert not any(layout.has_blob(layer) for layer in manifest.layers)  # referenced, not copied

    # the registry saw manifest and config reads only
    entries = registry.access_since(mark)
    layer_paths = {f"/v2/test/large-builder/blobs/{layer.digest}" for layer in manifest.layers}
    assert not [e for e in entries if e.method == "GET" and e.path in layer_paths], entries
    blob_gets = {e.path for e in entries if e.method == "GET" and "/blobs/" in e.path}
    assert blob_gets == {f"/v2/test/large-builder/blobs/{manifest.config.digest}"}, entries
    assert {e.method for e in entries if "/manifests/" in e.path} <= {"GET", "HEAD"}
    assert all("/manifests/" in e.path or "/blobs/" in e.path or e.path == "/v2/" for e in entries), entries
    assert not [e for e in entries if e.method not in ("GET", "HEAD")], entries

    # the ledger says where each base layer lives
    location = f"{registry.host}/test/large-builder"
    assert sources == {str(layer.digest): [location] for layer in manifest.layers}


def test_build_with_a_large_registry_builder_fetches_each_layer_once(
    registry: RegistryServer, large_builder: tuple[str, Manifest], tmp_path: Path
) -> None:
    """``ocibuild build`` runs the buildpacks on the builder's file system, so the first build fetches
    each base layer once (extracted by diffID into the scratch dir); the next build fetches none."""
    ref, manifest = large_builder
    write_busybox_image(tmp_path / "run", tag="run")
    dst, tag = open_reference(registry.ref("test/large-run", "1"), options=RegistryOptions(insecure=(registry.host,)))
    copy_image(LayoutStore(tmp_path / "run"), "run", dst, tag)
    app = tmp_path / "app"
    app.mkdir()
    (app / "hello.txt").write_text("hi\n")
    layer_paths = {f"/v2/test/large-builder/blobs/{layer.digest}" for layer in manifest.layers}
    for expected_gets in (1, 0):
        mark = registry.log_mark()
        proc = subprocess.run(
            [sys.executable, "-m", "ocibuild.cli.main", "--insecure-registry", registry.host, "build",
             registry.ref("test/large-app", "1"), "--builder", ref, "--run-image", registry.ref("test/large-run", "1"),
             "--buildpack", str(NOOP), "--path", str(app), "--json"],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, OCIBUILD_SCRATCH=str(tmp_path / "s")))
        assert proc.returncode == 0, proc.stderr[-3000:]
        gets = [e.path for e in registry.access_since(mark) if e.method == "GET" and e.path in layer_paths]
        assert sorted(gets) == sorted(layer_paths) * expected_gets
    extracted = {p.name for p in (tmp_path / "s" / "rootfs" / "sha256").iterdir()}
    assert {f"{d.encoded}" for d in _diff_ids(manifest, registry, ref)} <= extracted


def _diff_ids(manifest: Manifest, registry: RegistryServer, ref: str) -> list:
    from ocibuild.store.base import load_config

    store, _ = open_reference(ref, options=RegistryOptions(insecure=(registry.host,)))
    return list(load_config(store, manifest.config).diff_ids)
