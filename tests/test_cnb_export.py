"""The exporter: layer order, labels, config, determinism; then the image really runs (umoci + chroot)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cnb_export_support import make_layers_dir, make_run_image
from ocibuild.cnb.apis import PLATFORM_API
from ocibuild.cnb.descriptor import GroupElement
from ocibuild.cnb.export import ExportError, ExportOptions, RunImageSource, export, previous_metadata, read_build_output
from ocibuild.store.base import load_config, load_manifest
from ocibuild.store.layout import LayoutStore


def _export(tmp_path: Path, layout: Path, tag: str = "app", **kw) -> tuple:
    run_store = LayoutStore(tmp_path / "run", create=True)
    if "run" not in run_store.tags():
        make_run_image(run_store, "run")
    layers, app = tmp_path / "layers", tmp_path / "workspace"
    if not layers.exists():
        make_layers_dir(tmp_path)
    target = LayoutStore(layout, create=True)
    opts = ExportOptions(layers_dir=layers, app_dir=app, uid=1000, gid=1000, **kw)
    result = export(target, tag, RunImageSource(run_store, "run", "example.com/run:latest", ("mirror.example/run",)), opts)
    return target, result


def _tar_names(store: LayoutStore, desc) -> dict[str, tarfile.TarInfo]:
    with open(store.blob_path(desc.digest), "rb") as fh, gzip.open(fh) as gz, tarfile.open(fileobj=gz) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_layer_order_labels_and_config(tmp_path: Path) -> None:
    target, result = _export(tmp_path, tmp_path / "out")
    _d, manifest = load_manifest(target, "app")
    config = load_config(target, manifest.config)
    history = [h.get("created_by") for h in config.get("history")]
    assert history == [
        "busybox", "run-1",
        "Layer: 'runtime', Created by buildpack: test/runtime@1.0.0",
        "Layer: 'deps', Created by buildpack: test/app@2.0.0",
        "Software Bill-of-Materials",
        "Application Slice: 1",
        "Application Layer",
        "Buildpacks Application Launcher",
        "Buildpacks Launcher Config",
        "Buildpacks Process Types",
    ]
    assert all(h["created"] == "1980-01-01T00:00:01Z" for h in config.get("history"))
    assert config.created == "1980-01-01T00:00:01Z"
    assert len(manifest.layers) == len(config.diff_ids) == 10

    md = json.loads(config.labels["io.buildpacks.lifecycle.metadata"])
    diff = [str(d) for d in config.diff_ids]
    assert [b["key"] for b in md["buildpacks"]] == ["test/runtime", "test/app"]
    runtime = md["buildpacks"][0]
    assert set(runtime["layers"]) == {"runtime"}  # build-only and cache-only layers are not exported
    assert runtime["layers"]["runtime"] == {"sha": diff[2], "data": {"version": "3.1"}, "build": False,
                                            "launch": True, "cache": True}
    assert runtime["store"] == {"metadata": {"remember": "me"}}
    assert md["sbom"]["sha"] == diff[4]
    assert md["app"] == [{"sha": diff[5]}, {"sha": diff[6]}]
    assert md["launcher"]["sha"] == diff[7] and md["config"]["sha"] == diff[8]
    assert md["process-types"]["sha"] == diff[9]
    assert md["runImage"]["topLayer"] == diff[1]
    assert md["runImage"]["image"] == "example.com/run:latest"
    assert md["runImage"]["mirrors"] == ["mirror.example/run"]
    assert md["runImage"]["reference"].startswith("example.com/run@sha256:")

    build_md = json.loads(config.labels["io.buildpacks.build.metadata"])
    assert build_md["buildpacks"] == [{"id": "test/runtime", "version": "1.0.0"}, {"id": "test/app", "version": "2.0.0"}]
    assert [p["type"] for p in build_md["processes"]] == ["web", "worker", "tool"]
    assert build_md["processes"][2]["working-dir"] == "/workspace/sub"
    assert build_md["buildpack-default-process-type"] == "web"
    assert json.loads(config.labels["io.buildpacks.project.metadata"]) == {}
    assert config.labels["org.example.app"] == "demo"
    assert config.labels["org.example.run"] == "run-1"  # run image labels kept

    cfg = config.get("config")
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PATH"] == "/cnb/process:/cnb/lifecycle:/usr/local/bin:/usr/bin:/bin"
    assert env["CNB_LAYERS_DIR"] == "/layers" and env["CNB_APP_DIR"] == "/workspace"
    assert env["CNB_PLATFORM_API"] == PLATFORM_API == "0.15" and env["CNB_DEPRECATION_MODE"] == "quiet"
    assert list(cfg["Entrypoint"]) == ["/cnb/process/web"] and not cfg.get("Cmd")
    assert cfg["WorkingDir"] == "/workspace"

    # Tar conventions: ancestors root-owned, layer content owned by CNB_USER_ID/GID, 1980 mtime.
    runtime_tar = _tar_names(target, manifest.layers[2])
    assert runtime_tar["layers"].uid == 0 and runtime_tar["layers/test_runtime"].uid == 0
    hello = runtime_tar["layers/test_runtime/runtime/bin/hello"]
    assert (hello.uid, hello.gid, hello.mtime, hello.mode, hello.uname) == (1000, 1000, 315532801, 0o755, "")
    slice_tar = _tar_names(target, manifest.layers[5])
    assert "workspace/static/index.html" in slice_tar and "workspace/data.txt" not in slice_tar
    app_tar = _tar_names(target, manifest.layers[6])
    assert "workspace/data.txt" in app_tar and "workspace/static/index.html" not in app_tar
    launcher = _tar_names(target, manifest.layers[7])["cnb/lifecycle/launcher"]
    assert launcher.mode == 0o755 and launcher.uid == 0
    procs = _tar_names(target, manifest.layers[9])
    assert procs["cnb/process/web"].issym() and procs["cnb/process/web"].linkname == "/cnb/lifecycle/launcher"
    sbom = _tar_names(target, manifest.layers[4])
    assert "layers/sbom/launch/test_runtime/runtime/sbom.cdx.json" in sbom

    # Same inputs, same digest; a second export into the same layout writes no blob.
    _t2, again = _export(tmp_path, tmp_path / "out")
    assert again.descriptor.digest == result.descriptor.digest
    assert again.uploaded == ()
    _t3, elsewhere = _export(tmp_path, tmp_path / "out2")
    assert elsewhere.descriptor.digest == result.descriptor.digest


def test_creation_time_and_launch_toml_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_layers_dir(tmp_path, with_metadata=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    target, result = _export(tmp_path, tmp_path / "out", default_process="worker")
    config = result.config
    assert config.created == "2023-11-14T22:13:20Z"
    assert list(config.get("config")["Entrypoint"]) == ["/cnb/process/worker"]
    build_md = json.loads(config.labels["io.buildpacks.build.metadata"])
    assert {p["buildpackID"] for p in build_md["processes"]} == {"test/app"}
    assert build_md["buildpack-default-process-type"] == "web"  # launch.toml's default=true


def test_launch_layer_reused_from_previous_image(tmp_path: Path) -> None:
    target, first = _export(tmp_path, tmp_path / "out")
    # The buildpack keeps its restored launch layer: only deps.toml is left, no directory.
    import shutil

    shutil.rmtree(tmp_path / "layers" / "test_app" / "deps")
    prev = previous_metadata(target, "app")
    run_store = LayoutStore(tmp_path / "run")
    second = export(target, "app2", RunImageSource(run_store, "run", "example.com/run:latest", ("mirror.example/run",)),
                    ExportOptions(layers_dir=tmp_path / "layers", app_dir=tmp_path / "workspace"), previous=prev)
    assert second.descriptor.digest == first.descriptor.digest
    assert second.uploaded == ()


def _unpack(tmp_path: Path, layout: Path, tag: str) -> Path:
    bundle = tmp_path / f"bundle-{tag}"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)],
                   check=True, capture_output=True)
    return bundle / "rootfs"


def _chroot(rootfs: Path, config, *argv: str) -> str:
    env = dict(e.split("=", 1) for e in config.get("config")["Env"])
    proc = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), *argv], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_image_runs_with_the_launch_environment(tmp_path: Path) -> None:
    layout = tmp_path / "out"
    _target, result = _export(tmp_path, layout)
    rootfs = _unpack(tmp_path, layout, "app")
    out = _chroot(rootfs, result.config, "/cnb/process/web")
    assert ("web GREETING=hi LIST=z,a,b ONLY_WEB=yes PROFILE= PWD=/workspace ARGS=first,"
            in out), out  # direct: no profile.d
    out = _chroot(rootfs, result.config, "/cnb/process/web", "extra")
    assert "ARGS=extra," in out, out  # buildpack API >= 0.9: user args replace the process's args
    assert "hello from runtime: x" in out  # bin/ of a launch layer is on PATH
    out = _chroot(rootfs, result.config, "/cnb/process/worker")
    assert out.strip() == "worker ONLY_WEB=unset PROFILE=sourced LD=/layers/test_app/deps/lib"
    out = _chroot(rootfs, result.config, "/cnb/process/tool")
    assert out == "sub data\n"  # working-dir honoured
    # Called as `launcher` there is no default process: the arguments are the command (lifecycle).
    out = _chroot(rootfs, result.config, "/cnb/lifecycle/launcher", "echo", "$LIST", "$FROM_PROFILE")
    assert out == "z,a,b sourced\n"  # through the shell: launch env and profile.d apply
    out = _chroot(rootfs, result.config, "/cnb/lifecycle/launcher", "--", "hello", "y")
    assert out == "hello from runtime: y\n"  # `--`: run directly, found on the launch PATH


def test_image_runs_under_podman(tmp_path: Path) -> None:
    layout = tmp_path / "out"
    _target, result = _export(tmp_path, layout, tag="podman")
    image = f"oci:{layout}:podman"
    proc = subprocess.run(
        ["podman", "run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
         "--ulimit", "nproc=4096:4096", image, "from-podman"],
        capture_output=True, text=True, timeout=120,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        assert "ARGS=from-podman," in proc.stdout and "LIST=z,a,b" in proc.stdout
    finally:
        subprocess.run(["podman", "rmi", "-f", result.config.digest.encoded], capture_output=True)


def test_group_is_read_as_group_elements(tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    (layers / "group.toml").write_text(
        '[[group]]\nid = "acme/a"\nversion = "1.0"\n\n'
        '[[group]]\nid = "acme/b"\nversion = "2.0"\napi = "0.9"\nhomepage = "https://b.test"\n')
    assert read_build_output(layers).buildpacks == (
        GroupElement("acme/a", "1.0", api="0.10"),  # no api in group.toml: 0.10 is assumed
        GroupElement("acme/b", "2.0", api="0.9", homepage="https://b.test"),
    )
    (layers / "group.toml").write_text('[[group]]\nid = "app"\nversion = "1"\n')
    with pytest.raises(ExportError, match="reserved"):
        read_build_output(layers)
