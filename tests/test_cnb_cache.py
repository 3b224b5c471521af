"""The build cache: save, restore (the lifecycle's rules) and reuse without rewriting unchanged layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cnb_export_support import make_layers_dir, make_run_image
from ocibuild.cnb.cache import CACHE_LABEL, DirCache, ImageCache, restore
from ocibuild.cnb.export import ExportOptions, RunImageSource, export, previous_metadata, read_build_output
from ocibuild.store.base import load_config, load_manifest
from ocibuild.store.layout import LayoutStore


def _round_trip(tmp_path: Path, cache) -> None:
    make_layers_dir(tmp_path)
    layers = tmp_path / "layers"
    first = cache.save(layers, uid=1000, gid=1000)
    names = {bp["key"]: set(bp["layers"]) for bp in first.metadata["buildpacks"]}
    assert names == {"test/runtime": {"runtime", "cache-only"}}  # only cache=true layers
    assert len(first.written) == 3 and first.reused == ()  # two layers and the cache SBOM layer
    assert first.metadata["sbom"]["sha"] == first.written[-1]
    second = cache.save(layers, uid=1000, gid=1000)
    assert second.written == () and sorted(second.reused) == sorted(first.written)

    # An app image, then a fresh layers dir restored from the cache and the image's metadata.
    runs = LayoutStore(tmp_path / "runs", create=True)
    make_run_image(runs, "run")
    app = LayoutStore(tmp_path / "app", create=True)
    export(app, "app", RunImageSource(runs, "run", "example.com/run"), ExportOptions(layers, tmp_path / "workspace"))
    group = list(read_build_output(layers).buildpacks)
    fresh = tmp_path / "fresh"
    got = restore(cache, fresh, group, previous=previous_metadata(app, "app"))
    assert sorted(got.content) == ["test/runtime:cache-only", "test/runtime:runtime"]
    assert got.metadata_only == ("test/app:deps",)  # launch-only: toml + sha, no content
    assert (fresh / "test_runtime" / "runtime" / "bin" / "hello").read_text().startswith("#!/bin/sh")
    assert (fresh / "test_runtime" / "cache-only" / "data").read_text() == "cached\n"
    assert 'version = "3.1"' in (fresh / "test_runtime" / "runtime.toml").read_text()
    sha = (fresh / "test_runtime" / "runtime.sha").read_text()
    assert sha == first.metadata["buildpacks"][0]["layers"]["runtime"]["sha"]
    assert (fresh / "test_app" / "deps.toml").exists() and not (fresh / "test_app" / "deps").exists()
    assert not (fresh / "test_runtime" / "build-only.toml").exists()  # build-only: never restored
    assert 'remember = "me"' in (fresh / "test_runtime" / "store.toml").read_text()
    # the runtime layer's SBOM came back with it, through layers/sbom/cache
    assert (fresh / "sbom" / "cache" / "test_runtime" / "runtime" / "sbom.cdx.json").is_file()
    assert (fresh / "test_runtime" / "runtime.sbom.cdx.json").read_bytes() == \
        (layers / "test_runtime" / "runtime.sbom.cdx.json").read_bytes()


def test_dir_cache(tmp_path: Path) -> None:
    cache = DirCache(tmp_path / "cache")
    _round_trip(tmp_path, cache)
    files = sorted(p.name for p in (tmp_path / "cache" / "committed").iterdir())
    assert CACHE_LABEL in files and all(f.startswith("sha256:") and f.endswith(".tar") for f in files if f != CACHE_LABEL)
    # A layer that changed replaces the old tar; the stale one is dropped.
    (tmp_path / "layers" / "test_runtime" / "cache-only" / "data").write_text("changed\n")
    res = cache.save(tmp_path / "layers", uid=1000, gid=1000)
    assert len(res.written) == 1
    assert len(list((tmp_path / "cache" / "committed").glob("*.tar"))) == 3


def test_image_cache(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "cache-image", create=True)
    cache = ImageCache(store, "cache")
    _round_trip(tmp_path, cache)
    _d, manifest = load_manifest(store, "cache")
    config = load_config(store, manifest.config)
    assert len(manifest.layers) == 3
    assert json.loads(config.labels[CACHE_LABEL])["buildpacks"][0]["key"] == "test/runtime"


def test_second_build_uploads_nothing(tmp_path: Path) -> None:
    """Restore + rebuild the same content: the exporter reuses every layer by digest."""
    make_layers_dir(tmp_path)
    runs = LayoutStore(tmp_path / "runs", create=True)
    make_run_image(runs, "run")
    app = LayoutStore(tmp_path / "app", create=True)
    cache = DirCache(tmp_path / "cache")
    opts = ExportOptions(tmp_path / "layers", tmp_path / "workspace")
    first = export(app, "app", RunImageSource(runs, "run", "example.com/run"), opts)
    # owned by the build user as export writes them: a launch+cache layer's cache sha is its image sha
    cache.save(tmp_path / "layers", uid=opts.uid, gid=opts.gid)
    group = list(read_build_output(tmp_path / "layers").buildpacks)
    # Second build: a fresh layers dir from the cache; the buildpacks keep runtime and deps as they are.
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "layers", saved)
    shutil.rmtree(tmp_path / "layers")
    restore(cache, tmp_path / "layers", group, previous=previous_metadata(app, "app"))
    # They opt in again by writing their <layer>.toml: the restored ones have no [types].
    for keep in ("group.toml", "config", "test_app/launch.toml", "test_runtime/runtime.sbom.cdx.json",
                 "test_runtime/runtime.toml", "test_app/deps.toml"):
        src, dst = saved / keep, tmp_path / "layers" / keep
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    second = export(app, "app", RunImageSource(runs, "run", "example.com/run"), opts,
                    previous=previous_metadata(app, "app"))
    assert second.uploaded == ()
    assert [l.descriptor.digest for l in second.layers] == [l.descriptor.digest for l in first.layers]
