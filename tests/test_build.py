"""``ocibuild build`` end to end: the seed's regression, failure paths, reproducibility, cache, registry + podman.

Every build runs the real CLI in a subprocess with its own scratch directory, the embedded default
builder (busybox-static + the Procfile buildpack) and test buildpacks from ``fixtures/build``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.tools import require_tool

REPO = Path(__file__).resolve().parent.parent
BUILDPACKS = REPO / "fixtures" / "build" / "buildpacks"
HELLO = REPO / "examples" / "hello"
PROCFILE = "ocibuild/procfile@0.1.0"


def ocibuild(*args: str, scratch: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, OCIBUILD_SCRATCH=str(scratch), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"ocibuild {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def build_json(*args: str, scratch: Path, app: Path) -> dict:
    return json.loads(ocibuild("build", *args, "--path", str(app), "--json", scratch=scratch).stdout)


def blobs(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


def snapshot(layout: Path) -> dict[str, bytes]:
    """index.json and every blob the index reaches directly, byte for byte."""
    index = (layout / "index.json").read_bytes()
    out = {"index.json": index}
    for entry in json.loads(index)["manifests"]:
        hexd = entry["digest"].split(":", 1)[1]
        out[hexd] = (layout / "blobs" / "sha256" / hexd).read_bytes()
    return out


@pytest.fixture
def app(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(HELLO, dest)
    return dest


@pytest.fixture
def warm_scratch(tmp_path: Path, app: Path) -> Path:
    """A scratch dir in which the default builder already exists (made by a first plain build)."""
    scratch = tmp_path / "scratch"
    build_json(f"oci:{tmp_path}/warm:app", scratch=scratch, app=app)
    return scratch


def assert_no_ephemeral_left(scratch: Path) -> None:
    rows = json.loads(ocibuild("ledger", "--ephemeral", "--json", scratch=scratch).stdout)
    assert rows == [] or rows.get("objects", rows) == [], f"ephemeral ledger rows left: {rows}"
    fsck = ocibuild("fsck", "--json", scratch=scratch, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_seed_regression_ephemeral_builder_is_collected_and_original_untouched(
    tmp_path: Path, app: Path, warm_scratch: Path
) -> None:
    layout = warm_scratch / "layout"
    before_blobs = blobs(layout)
    before = snapshot(layout)

    out = build_json(f"oci:{tmp_path}/out:app", "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack", PROCFILE,
                     "--env", "BP_FLAG=1", scratch=warm_scratch, app=app)

    ephemeral = out["ephemeral_builder"]
    assert ephemeral and ephemeral != out["builder_digest"], out
    assert out["group"] == ["test/greeter@1.0.0", PROCFILE]
    # pack's bug: the ephemeral builder stayed. Here it and every blob only it used are gone ...
    assert ephemeral.split(":", 1)[1] not in blobs(layout)
    assert blobs(layout) == before_blobs
    assert out["gc"]["removed_blobs"] >= 1
    # ... and the user's builder is byte-identical, with all its tags.
    assert snapshot(layout) == before
    assert_no_ephemeral_left(warm_scratch)


def test_no_compose_when_nothing_is_added(tmp_path: Path, app: Path, warm_scratch: Path) -> None:
    before = snapshot(warm_scratch / "layout")
    out = build_json(f"oci:{tmp_path}/out:app", scratch=warm_scratch, app=app)
    assert out["ephemeral_builder"] is None
    assert out["gc"]["removed_blobs"] == 0
    assert snapshot(warm_scratch / "layout") == before
    # The build closed its ledger: SQLite checkpointed and removed the write-ahead log on the last close.
    assert not (warm_scratch / "ledger.db-wal").exists()


@pytest.mark.parametrize(("buildpack", "code", "message"), [
    ("fail-detect", 20, "No buildpack groups passed detection."),
    ("fail-build", 51, "test/fail-build"),
])
def test_failed_builds_exit_like_the_lifecycle_and_leave_nothing(
    tmp_path: Path, app: Path, warm_scratch: Path, buildpack: str, code: int, message: str
) -> None:
    layout = warm_scratch / "layout"
    before_blobs, before = blobs(layout), snapshot(layout)
    proc = ocibuild("build", f"oci:{tmp_path}/out:app", "--path", str(app), "--buildpack",
                    str(BUILDPACKS / buildpack), scratch=warm_scratch, check=False)
    assert proc.returncode == code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ocibuild: error:") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "index.json").exists() or json.loads(
        (tmp_path / "out" / "index.json").read_text())["manifests"] == []
    assert blobs(layout) == before_blobs
    assert snapshot(layout) == before
    assert not any((warm_scratch / "work").iterdir())
    assert not (warm_scratch / "ledger.db-wal").exists()  # closed on the failure path too
    assert_no_ephemeral_left(warm_scratch)


def test_rebuild_is_reproducible_reuses_cache_and_uploads_nothing(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    args = (f"oci:{tmp_path}/out:app", "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack", PROCFILE)
    first = build_json(*args, scratch=scratch, app=app)
    proc = ocibuild("build", *args, "--path", str(app), "--json", scratch=scratch)
    second = json.loads(proc.stdout)
    assert second["digest"] == first["digest"]
    assert second["uploaded"] == 0 and second["uploaded_bytes"] == 0
    assert first["uploaded_bytes"] > 0
    rows = json.loads(ocibuild("ledger", "--role", "app-image", "--json", scratch=scratch).stdout)
    rows = rows.get("objects", rows) if isinstance(rows, dict) else rows
    assert [(r["digest"], r["location"]) for r in rows] == [(first["digest"], str(tmp_path / "out"))]
    assert "greeter: cache restored (built-once)" in proc.stderr
    # A different scratch dir (a different machine) gives the same image too.
    third = build_json(f"oci:{tmp_path}/other:app", "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack",
                       PROCFILE, scratch=tmp_path / "scratch2", app=app)
    assert third["digest"] == first["digest"]


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    podman = require_tool("podman")
    return subprocess.run([podman, *args], capture_output=True, text=True, timeout=180)


def test_build_to_registry_then_run_with_podman(tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    image = f"{fresh_repo}:1"
    proc = ocibuild("--registry", registry.host, "build", image, "--path", str(app), "--buildpack",
                    str(BUILDPACKS / "greeter"), "--buildpack", PROCFILE, "--json", scratch=scratch)
    digest = json.loads(proc.stdout)["digest"]
    ref = f"{registry.host}/{fresh_repo}@{digest}"
    run = ["run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
           "--ulimit", "nproc=4096:4096", "--tls-verify=false"]
    try:
        web = _podman(*run, ref)
        assert web.returncode == 0, web.stderr
        assert web.stdout.strip().splitlines()[-1] == \
            "Hello from ocibuild! built by procfile, greeting=from-greeter"
        worker = _podman(*run, "--entrypoint", "/cnb/process/worker", ref)
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout.strip().splitlines()[-1] == "worker process running in /workspace"
    finally:
        _podman("rmi", "-f", ref)
    assert_no_ephemeral_left(scratch)


def test_project_toml_filters_the_app_sets_env_and_labels(tmp_path: Path, app: Path) -> None:
    (app / "debug.log").write_text("not part of the image\n")
    (app / "project.toml").write_text(
        '[_]\nschema-version = "0.2"\nversion = "2.0.0"\n\n[io.buildpacks]\nexclude = ["*.log"]\n\n'
        '[[io.buildpacks.group]]\nid = "ocibuild/procfile"\nversion = "0.1.0"\n\n'
        '[[io.buildpacks.build.env]]\nname = "FROM_PROJECT"\nvalue = "yes"\n'
    )
    scratch = tmp_path / "scratch"
    out = build_json(f"oci:{tmp_path}/out:app", "--workspace", "/srv/app", scratch=scratch, app=app)
    assert out["group"] == [PROCFILE]
    assert out["ephemeral_builder"], "project env and group make an ephemeral builder, as in pack"
    config = json.loads(ocibuild("config", f"oci:{tmp_path}/out:app", scratch=scratch).stdout)
    labels = config["config"]["Labels"]
    assert json.loads(labels["io.buildpacks.project.metadata"]) == {
        "source": {"type": "project", "version": {"declared": "2.0.0"}, "metadata": {}}}
    assert config["config"]["WorkingDir"] == "/srv/app"
    bundle = tmp_path / "unpacked"
    ocibuild("unpack", f"oci:{tmp_path}/out:app", str(bundle), scratch=scratch)
    assert (bundle / "srv" / "app" / "Procfile").is_file()
    assert not (bundle / "srv" / "app" / "debug.log").exists()
    assert (app / "debug.log").exists(), "the user's app directory is never modified"
    assert_no_ephemeral_left(scratch)


def _lifecycle_tgz(path: Path, launcher: bytes) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        add("lifecycle.toml", b'[apis.buildpack]\nsupported = ["0.10"]\n[apis.platform]\nsupported = ["0.12"]\n'
                              b'[lifecycle]\nversion = "0.99.0"\n', 0o644)
        for binary in ("detector", "analyzer", "restorer", "builder", "exporter", "creator"):
            add(f"lifecycle/{binary}", b"#!/bin/sh\nexit 1\n")
        add("lifecycle/launcher", launcher)
    return path


def procfile_builder_toml(layout: Path, *, run_extra: str = "", extra: str = "") -> str:
    """A builder.toml: the default builder's build and run images (tags of ``layout``) with its
    procfile buildpack; ``run_extra`` goes into the run image entry, ``extra`` at the end."""
    from ocibuild.cnb.defaults import BUILD_TAG, RUN_TAG, default_buildpacks_dir

    return f"""
[[buildpacks]]
uri = "{default_buildpacks_dir() / 'procfile'}"

[[order]]
[[order.group]]
id = "ocibuild/procfile"

[build]
image = "oci:{layout}:{BUILD_TAG}"

[[run.images]]
image = "oci:{layout}:{RUN_TAG}"
{run_extra}
{extra}"""


def test_the_builders_own_launcher_is_used_when_it_has_a_lifecycle(tmp_path: Path, app: Path,
                                                                     warm_scratch: Path) -> None:
    from ocibuild.cnb.launcher import launcher_bytes

    scratch_layout = warm_scratch / "layout"
    launcher = b"#!/bin/sh\n# the builder's own lifecycle launcher (a stand-in)\nexec \"$@\"\n"
    (tmp_path / "builder.toml").write_text(procfile_builder_toml(
        scratch_layout, extra=f'[lifecycle]\nuri = "{_lifecycle_tgz(tmp_path / "lifecycle.tgz", launcher)}"\n'))
    ocibuild("builder", "create", "--config", str(tmp_path / "builder.toml"), "--tag",
             f"oci:{tmp_path}/builder:b1", scratch=warm_scratch)
    for name, builder, expected in (("own", f"oci:{tmp_path}/builder:b1", launcher),
                                    ("default", None, launcher_bytes())):
        args = ("--builder", builder) if builder else ()
        build_json(f"oci:{tmp_path}/out-{name}:app", *args, scratch=warm_scratch, app=app)
        bundle = tmp_path / f"unpacked-{name}"
        ocibuild("unpack", f"oci:{tmp_path}/out-{name}:app", str(bundle), scratch=warm_scratch)
        assert (bundle / "cnb" / "lifecycle" / "launcher").read_bytes() == expected, name
        assert os.readlink(bundle / "cnb" / "process" / "web") == "/cnb/lifecycle/launcher"


def test_rebase_swaps_the_run_image_layers_and_keeps_the_app_layers(tmp_path: Path, app: Path,
                                                                      warm_scratch: Path) -> None:
    from ocibuild.cnb.defaults import RUN_TAG

    out = f"oci:{tmp_path}/out:app"
    build_json(out, scratch=warm_scratch, app=app)
    extra = tmp_path / "security-fix"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "patched").write_text("yes\n")
    run2 = f"oci:{tmp_path}/run2:2"
    ocibuild("append", f"oci:{warm_scratch}/layout:{RUN_TAG}", str(extra), "--tag", run2, scratch=warm_scratch)

    def layers(ref: str) -> list[str]:
        manifest = json.loads(ocibuild("manifest", ref, scratch=warm_scratch).stdout)
        return [layer["digest"] for layer in manifest["layers"]]

    old_run, new_run, before = layers(f"oci:{warm_scratch}/layout:{RUN_TAG}"), layers(run2), layers(out)
    refused = ocibuild("rebase", out, "--run-image", run2, scratch=warm_scratch, check=False)
    assert refused.returncode != 0 and "ocibuild: error:" in refused.stderr  # another run image name: needs --force
    ocibuild("rebase", out, "--run-image", run2, "--force", scratch=warm_scratch)
    after = layers(out)
    assert after[:len(new_run)] == new_run
    assert after[len(new_run):] == before[len(old_run):]  # the app's layers, untouched
    bundle = tmp_path / "rebased"
    ocibuild("unpack", out, str(bundle), scratch=warm_scratch)
    assert (bundle / "etc" / "patched").read_text() == "yes\n"
    assert (bundle / "workspace" / "Procfile").is_file()


def test_layer_memo_never_reuses_a_changed_layer(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    target = f"oci:{tmp_path}/out:app"
    first = build_json(target, scratch=scratch, app=app)
    assert list((scratch / "cache" / "layer-memo").glob("*.json")), "export remembers the layers it wrote"
    procfile = app / "Procfile"
    original, stat = procfile.read_bytes(), procfile.stat()
    procfile.write_bytes(original.replace(b"worker process", b"WORKER PROCESS"))  # same size, new mtime
    changed = build_json(target, scratch=scratch, app=app)
    assert changed["digest"] != first["digest"]
    assert changed["uploaded"] >= 1
    procfile.write_bytes(original)
    os.utime(procfile, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = build_json(target, scratch=scratch, app=app)
    assert again["digest"] == first["digest"]
    assert again["uploaded"] == 0


def test_sboms_reach_the_image_and_the_output_dir(tmp_path: Path, app: Path, warm_scratch: Path) -> None:
    out = f"oci:{tmp_path}/out:app"
    build_json(out, "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack", PROCFILE,
               "--sbom-output-dir", str(tmp_path / "sbom"), scratch=warm_scratch, app=app)
    layer_sbom = json.loads((tmp_path / "sbom" / "launch" / "test_greeter" / "greeting" / "sbom.cdx.json").read_text())
    assert layer_sbom["components"] == [{"name": "greeting"}]
    assert (tmp_path / "sbom" / "launch" / "test_greeter" / "sbom.cdx.json").is_file()
    bundle = tmp_path / "unpacked"
    ocibuild("unpack", out, str(bundle), scratch=warm_scratch)
    in_image = bundle / "layers" / "sbom" / "launch" / "test_greeter" / "greeting" / "sbom.cdx.json"
    assert json.loads(in_image.read_text()) == layer_sbom


def test_inspect_shows_the_buildpacks_view(tmp_path: Path, app: Path, warm_scratch: Path) -> None:
    out = f"oci:{tmp_path}/out:app"
    build_json(out, "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack", PROCFILE, scratch=warm_scratch, app=app)
    cnb = json.loads(ocibuild("inspect", "--json", out, scratch=warm_scratch).stdout)["cnb"]
    assert [(p["type"], p["default"]) for p in cnb["processes"]] == [("web", True), ("worker", False)]
    assert [b["id"] for b in cnb["buildpacks"]] == ["test/greeter", "ocibuild/procfile"]
    assert [r["name"] for r in cnb["run_images"]] == ["ocibuild.local/default-run:0.1.0"]
    assert cnb["base_image"]["reference"].startswith("ocibuild.local/default-run@sha256:")
    human = ocibuild("inspect", out, scratch=warm_scratch).stdout
    assert "Processes:" in human and "web (default)" in human and "test/greeter" in human
    plain = ocibuild("inspect", f"oci:{warm_scratch}/layout:ocibuild.local/default-run:0.1.0", scratch=warm_scratch)
    assert "Processes:" not in plain.stdout  # not a buildpacks image: no such section
