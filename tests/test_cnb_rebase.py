"""Rebase onto a second run image (app layers untouched, run layers replaced) and the CNB inspect view."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from cnb_export_support import make_layers_dir, make_run_image
from ocibuild.cnb.export import ExportOptions, RunImageSource, export
from ocibuild.cnb.inspect import cnb_lines, cnb_view
from ocibuild.cnb.rebase import RebaseError, rebase
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.base import load_config, load_manifest, put_bytes
from ocibuild.store.layout import LayoutStore


@pytest.fixture
def built(tmp_path: Path) -> tuple[LayoutStore, LayoutStore, object]:
    make_layers_dir(tmp_path)
    runs = LayoutStore(tmp_path / "runs", create=True)
    make_run_image(runs, "v1", marker="run-1")
    make_run_image(runs, "v2", marker="run-2")
    app = LayoutStore(tmp_path / "app", create=True)
    result = export(app, "app", RunImageSource(runs, "v1", "example.com/run:v1", ("mirror.example/run",)),
                    ExportOptions(layers_dir=tmp_path / "layers", app_dir=tmp_path / "workspace"))
    return runs, app, result


def _with_config(store: LayoutStore, tag: str, new_tag: str, edit: Callable[[dict], object]) -> None:
    """Tag ``new_tag``: the image ``tag`` with its config edited by ``edit`` (same layers)."""
    _d, manifest = load_manifest(store, tag)
    doc = load_config(store, manifest.config).to_dict()
    edit(doc)
    cfg = ImageConfig.build(doc)
    put_bytes(store, cfg.descriptor(), cfg.raw)
    changed = Manifest.build(cfg.descriptor(), manifest.layers)
    store.put_manifest(changed.descriptor(), changed.raw, tag=new_tag)


def test_rebase_swaps_run_layers_only(built, tmp_path: Path) -> None:
    runs, app, before = built
    _d, new_run = load_manifest(runs, "v2")
    new_cfg = load_config(runs, new_run.config)
    res = rebase(app, "app", runs, "v2", new_run_name="example.com/run:v2", dst_tag="rebased")
    assert res.replaced == 2
    assert res.manifest.layers[:2] == new_run.layers
    assert res.manifest.layers[2:] == before.manifest.layers[2:]  # app layers: same digests
    cfg = res.config
    assert [str(d) for d in cfg.diff_ids[:2]] == [str(d) for d in new_cfg.diff_ids]
    assert cfg.diff_ids[2:] == before.config.diff_ids[2:]
    md = json.loads(cfg.labels["io.buildpacks.lifecycle.metadata"])
    assert md["runImage"]["topLayer"] == str(new_cfg.diff_ids[-1])
    assert md["runImage"]["reference"] == f"example.com/run@{runs.resolve('v2').digest}"
    assert cfg.created == before.config.created
    assert [h.get("created_by") for h in cfg.get("history")][:3] == [
        "busybox", "run-2", "Layer: 'runtime', Created by buildpack: test/runtime@1.0.0"]
    assert app.resolve("rebased").digest == res.descriptor.digest
    assert app.resolve("app").digest == before.descriptor.digest
    # The rebased image unpacks (umoci checks every diff_id) and holds the new run image's file.
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{app.path}:rebased", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "rootfs" / "etc" / "run-image").read_text() == "run-2\n"
    assert (bundle / "rootfs" / "workspace" / "data.txt").read_text() == "app data\n"
    # Rebasing twice onto the same image is idempotent: same digest, nothing new written.
    again = rebase(app, "rebased", runs, "v2", new_run_name="example.com/run:v2")
    assert again.descriptor.digest == res.descriptor.digest and again.uploaded == ()


def test_rebase_rules(built) -> None:
    runs, app, before = built
    with pytest.raises(RebaseError, match="mirrors"):
        rebase(app, "app", runs, "v2", new_run_name="other.example/elsewhere:v2")
    forced = rebase(app, "app", runs, "v2", new_run_name="other.example/elsewhere:v2", force=True, dst_tag="f")
    md = json.loads(forced.config.labels["io.buildpacks.lifecycle.metadata"])
    assert md["runImage"]["image"] == "other.example/elsewhere:v2" and "mirrors" not in md["runImage"]
    # Allowed by mirror name.
    rebase(app, "app", runs, "v2", new_run_name="mirror.example/run:v2", dst_tag="m")

    # A run image for another architecture is refused (target mismatch) unless forced.
    _with_config(runs, "v2", "arm", lambda doc: doc.update(architecture="arm64"))
    with pytest.raises(RebaseError, match="arm64"):
        rebase(app, "app", runs, "arm", new_run_name="example.com/run:arm")
    assert rebase(app, "app", runs, "arm", force=True, dst_tag="a").config.architecture == "arm64"

    # io.buildpacks.rebasable=false is refused without force.
    _with_config(app, "app", "locked", lambda doc: doc["config"]["Labels"].update({"io.buildpacks.rebasable": "false"}))
    with pytest.raises(RebaseError, match="not rebasable"):
        rebase(app, "locked", runs, "v2", new_run_name="example.com/run:v2")
    rebase(app, "locked", runs, "v2", new_run_name="example.com/run:v2", force=True)


def test_inspect_view(built) -> None:
    _runs, _app, result = built
    view = cnb_view(result.config)
    assert view["stack"]["id"] == "io.ocibuild.test"
    assert [r["name"] for r in view["run_images"]] == ["example.com/run:v1", "mirror.example/run"]
    assert view["base_image"]["top_layer"] == str(result.config.diff_ids[1])
    assert view["buildpacks"] == [{"id": "test/runtime", "version": "1.0.0"}, {"id": "test/app", "version": "2.0.0"}]
    web = view["processes"][0]
    assert web["type"] == "web" and web["default"] and web["command"] == "sh" and web["shell"] == ""
    assert web["args"][0] == "-c" and web["args"][-1] == "first"
    worker = view["processes"][1]
    assert not worker["default"] and worker["shell"] == "bash"
    assert view["processes"][2]["working-dir"] == "/workspace/sub"
    text = "\n".join(cnb_lines(view))
    assert "web (default)" in text and "test/runtime  1.0.0" in text and "Top Layer: sha256:" in text
