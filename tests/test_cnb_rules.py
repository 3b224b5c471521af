"""The lifecycle's edge cases (issue 10, item 3): one test named after each rule where its users found bugs.

Ambiguous rules were decided by reading buildpacks/lifecycle (``phase/restorer.go``,
``internal/layer/metadata_restorer.go``, ``phase/exporter.go``); the rows of docs/cnb-conformance.md
name these tests. Rules whose tests live next to the code they exercise:

- target data from the run image config, then ``io.buildpacks.base.distro.*``, then the build image's
  ``/etc/os-release``: ``test_cnb_platform_apis.py::test_target_distro_comes_from_the_build_images_os_release_without_labels``,
  ``::test_os_release_fills_only_missing_distro_data_and_follows_the_images_symlink``;
- ``io.buildpacks.rebasable=false`` and a run image outside the recorded ones need ``--force``:
  ``test_cnb_rebase.py::test_rebase_rules``, ``test_build.py`` (``rebase --run-image ... --force``);
- launcher ``/cnb/process/<type>``, ``--``, user args per buildpack API, exec.d order:
  ``test_launcher.py::test_process_choice_and_errors``, ``::test_launcher_runs_the_user_command``,
  ``::test_user_args_follow_the_buildpack_api``, ``::test_exec_d_output_is_exported_before_profiles``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from cnb_export_support import make_layers_dir, make_run_image
from ocibuild.cnb.cache import CACHE_LABEL, DirCache, restore
from ocibuild.cnb.env import LaunchEnv, launch_layer_ops
from ocibuild.cnb.export import ExportOptions, RunImageSource, export, previous_metadata, read_build_output
from ocibuild.cnb.launcher import LaunchProcess, launcher_bytes, render_process_table
from ocibuild.store.layout import LayoutStore

NORMALIZED_MTIME = 315532801  # 1980-01-01T00:00:01Z
REPO = Path(__file__).resolve().parent.parent


class _Built:
    """A layers dir (cnb_export_support), its app image and its cache, as one build left them."""

    def __init__(self, tmp: Path):
        make_layers_dir(tmp)
        self.tmp, self.layers = tmp, tmp / "layers"
        self.runs = LayoutStore(tmp / "runs", create=True)
        make_run_image(self.runs, "run")
        self.app = LayoutStore(tmp / "app", create=True)
        self.opts = ExportOptions(self.layers, tmp / "workspace")
        self.result = export(self.app, "app", RunImageSource(self.runs, "run", "example.com/run"), self.opts)
        self.cache = DirCache(tmp / "cache")
        self.cache.save(self.layers, uid=self.opts.uid, gid=self.opts.gid)  # the build user, as export does
        self.group = list(read_build_output(self.layers).buildpacks)

    def previous(self) -> dict:
        md = previous_metadata(self.app, "app")
        assert md is not None
        return md

    def edit_cache_metadata(self, edit) -> None:  # noqa: ANN001
        path = self.cache.committed / CACHE_LABEL
        doc = json.loads(path.read_text())
        edit({b["key"]: b["layers"] for b in doc["buildpacks"]})
        path.write_text(json.dumps(doc))

    def restore(self, previous: dict | None, cache: DirCache | None = None):  # noqa: ANN201
        fresh = self.tmp / f"fresh-{len(list(self.tmp.glob('fresh-*')))}"
        return fresh, restore(cache or self.cache, fresh, self.group, previous=previous)


# -- layer restore -----------------------------------------------------------------------------------------
def test_launch_cache_layer_restored_from_cache_without_previous_image(tmp_path: Path) -> None:
    """spec#406, lifecycle#1346: with no previous image, a launch+cache layer comes back from the cache."""
    b = _Built(tmp_path)
    fresh, got = b.restore(previous=None)
    assert sorted(got.content) == ["test/runtime:cache-only", "test/runtime:runtime"]
    assert got.metadata_only == ()  # launch-only layers live in an image, and there is none
    assert (fresh / "test_runtime" / "runtime" / "bin" / "hello").is_file()
    toml = (fresh / "test_runtime" / "runtime.toml").read_text()
    assert "[types]" in toml and "launch = true" in toml and "cache = true" in toml


def test_launch_layer_types_and_metadata_come_from_the_image_label(tmp_path: Path) -> None:
    """lifecycle#589: for a launch layer the previous image's label, not the cache, says what the layer
    is (``[types]``, Buildpack API >= 0.6) and what its metadata was."""
    b = _Built(tmp_path)

    def cache_side(layers: dict) -> None:
        layers["test/runtime"]["runtime"].update(build=True, data={"version": "from-the-cache"})

    b.edit_cache_metadata(cache_side)
    fresh, got = b.restore(previous=b.previous())
    assert "test/runtime:runtime" in got.content  # same sha in both: the content comes from the cache
    toml = (fresh / "test_runtime" / "runtime.toml").read_text()
    assert 'version = "3.1"' in toml and "build = false" in toml


def test_stale_launch_cache_layer_is_not_restored(tmp_path: Path) -> None:
    """The lifecycle's restorer: a launch+cache layer whose cached sha is not the image's is stale, and
    one the previous image lacks is too; the buildpack sees neither and remakes the layer."""
    b = _Built(tmp_path)
    other_sha = json.loads((b.cache.committed / CACHE_LABEL).read_text())["buildpacks"][0]["layers"]["cache-only"]["sha"]
    b.edit_cache_metadata(lambda layers: layers["test/runtime"]["runtime"].update(sha=other_sha))
    fresh, got = b.restore(previous=b.previous())
    assert "test/runtime:runtime" not in got.content
    assert not (fresh / "test_runtime" / "runtime.toml").exists() and not (fresh / "test_runtime" / "runtime").exists()
    assert "test/runtime:cache-only" in got.content  # cache-only layers do not depend on the image

    previous = b.previous()
    for bp in previous["buildpacks"]:
        bp["layers"].pop("runtime", None)
    b2 = _Built(tmp_path / "again")
    fresh, got = b2.restore(previous=previous)
    assert "test/runtime:runtime" not in got.content and not (fresh / "test_runtime" / "runtime").exists()


def test_cache_metadata_without_its_layer_is_skipped_not_fatal(tmp_path: Path) -> None:
    """lifecycle#1381: the cache names a layer it no longer holds; the build goes on without it."""
    b = _Built(tmp_path)
    sha = json.loads((b.cache.committed / CACHE_LABEL).read_text())["buildpacks"][0]["layers"]["cache-only"]["sha"]
    (b.cache.committed / f"{sha}.tar").unlink()
    fresh, got = b.restore(previous=b.previous())
    assert got.content == ("test/runtime:runtime",)
    assert not (fresh / "test_runtime" / "cache-only").exists()
    assert not (fresh / "test_runtime" / "cache-only.toml").exists()


def test_no_sbom_restore_from_an_empty_cache(tmp_path: Path) -> None:
    """lifecycle#831: an empty cache (or one whose metadata names no SBOM layer) restores no SBOM."""
    b = _Built(tmp_path)
    fresh, got = b.restore(previous=b.previous(), cache=DirCache(tmp_path / "empty-cache"))
    assert got.content == () and got.metadata_only == ("test/app:deps",)
    assert not (fresh / "sbom").exists()
    assert not list(fresh.glob("*/*.sbom.*"))
    doc = json.loads((b.cache.committed / CACHE_LABEL).read_text())
    doc.pop("sbom", None)
    (b.cache.committed / CACHE_LABEL).write_text(json.dumps(doc))
    fresh, got = b.restore(previous=b.previous())
    assert "test/runtime:runtime" in got.content and not (fresh / "sbom").exists()


# -- SBOM layout ---------------------------------------------------------------------------------------------
def _layer_members(store: LayoutStore, digest: str) -> list[tarfile.TarInfo]:
    data = gzip.decompress((store.path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_sbom_layout_is_one_launch_sbom_layer_recorded_in_the_metadata_label(tmp_path: Path) -> None:
    """``layers/sbom/launch/<bp>/<layer>/sbom.<ext>`` in one layer of the image, its diffID the
    ``sbom.sha`` of ``io.buildpacks.lifecycle.metadata``; the cache gets ``sbom/cache`` the same way."""
    b = _Built(tmp_path)
    sbom_layers = [layer for layer in b.result.layers if "Bill-of-Materials" in layer.created_by]
    assert len(sbom_layers) == 1
    members = {m.name for m in _layer_members(b.app, str(sbom_layers[0].descriptor.digest)) if m.isfile()}
    assert members == {"layers/sbom/launch/test_runtime/runtime/sbom.cdx.json"}
    md = json.loads(b.result.config.labels["io.buildpacks.lifecycle.metadata"])
    assert md["sbom"]["sha"] == str(sbom_layers[0].diff_id)
    cache_md = json.loads((b.cache.committed / CACHE_LABEL).read_text())
    with tarfile.open(b.cache.committed / f"{cache_md['sbom']['sha']}.tar") as tar:
        assert [m.name for m in tar.getmembers() if m.isfile()] == [
            "layers/sbom/cache/test_runtime/runtime/sbom.cdx.json"]


# -- reproducible layers --------------------------------------------------------------------------------------
def test_reproducible_layers_have_normalized_mtimes_and_the_build_users_ownership(tmp_path: Path) -> None:
    """The lifecycle's layer tars: every mtime 1980-01-01T00:00:01Z, the layer's files owned by the build
    user and its parent directories by root; the same content exported again is the same image."""
    b = _Built(tmp_path / "a")
    runtime = next(layer for layer in b.result.layers if "'runtime'" in layer.created_by)
    members = _layer_members(b.app, str(runtime.descriptor.digest))
    assert {m.mtime for m in members} == {NORMALIZED_MTIME}
    owners = {m.name: (m.uid, m.gid) for m in members}
    assert owners["layers"] == owners["layers/test_runtime"] == (0, 0)
    assert owners["layers/test_runtime/runtime/bin/hello"] == (b.opts.uid, b.opts.gid)
    os.utime(b.layers / "test_runtime" / "runtime" / "bin" / "hello", (1, 1))  # touched: a later checkout
    again = export(b.app, "again", RunImageSource(b.runs, "run", "example.com/run"), b.opts)
    assert again.descriptor.digest == b.result.descriptor.digest


def test_source_date_epoch_sets_the_created_time_and_keeps_the_layers(tmp_path: Path) -> None:
    """Platform API >= 0.9: ``SOURCE_DATE_EPOCH`` is the image's created time; layers stay normalized,
    so two builds at that epoch on two machines (scratch dirs) give one digest."""
    from test_build import BUILDPACKS, PROCFILE

    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    digests = []
    for n in (1, 2):
        env = {**os.environ, "OCIBUILD_SCRATCH": str(tmp_path / f"scratch{n}"), "SOURCE_DATE_EPOCH": "1700000000"}
        os.utime(app / "Procfile", (n * 1000, n * 1000))
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "build", f"oci:{tmp_path}/out{n}:app",
                               "--path", str(app), "--buildpack", str(BUILDPACKS / "greeter"), "--buildpack",
                               PROCFILE, "--json"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(json.loads(proc.stdout)["digest"])
        config = json.loads(subprocess.run(
            [sys.executable, "-m", "ocibuild.cli.main", "config", f"oci:{tmp_path}/out{n}:app"],
            capture_output=True, text=True, env=env, timeout=60, check=True).stdout)
        assert config["created"] == "2023-11-14T22:13:20Z"
    assert digests[0] == digests[1]
    store = LayoutStore(tmp_path / "out1")
    manifest = json.loads(store.get_manifest("app")[1])
    app_layer = manifest["layers"][-1]["digest"]
    assert {m.mtime for m in _layer_members(store, app_layer)} == {NORMALIZED_MTIME}


# -- env.launch/<process>/ and the launcher --------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_env_launch_process_directory_takes_every_suffix(tmp_path: Path) -> None:
    """Buildpack API: ``env.launch/<process>/`` files follow the same suffix rules as ``env/`` (``.append
    .prepend .override .default .delim``), after them, and for that process only."""
    layer = tmp_path / "layer"
    for name, value in {"env/A": "base", "env.launch/web/A.append": "web", "env.launch/web/A.delim": ",",
                        "env.launch/web/P.prepend": "first", "env.launch/web/P.delim": ":",
                        "env.launch/web/O.override": "over", "env.launch/web/D.default": "dflt",
                        "env.launch/web/K.default": "unused", "env.launch/worker/W": "w"}.items():
        _write(layer / name, value)
    launch = LaunchEnv(tuple(launch_layer_ops(layer, "/layers/bp/layer")))
    base = {"PATH": "/usr/bin", "P": "rest", "O": "old", "K": "kept"}
    web = launch.resolve(base, "web")
    assert (web["A"], web["P"], web["O"], web["D"], web["K"]) == ("base,web", "first:rest", "over", "dflt", "kept")
    assert "W" not in web
    other = launch.resolve(base, "worker")
    assert other["A"] == "base" and other["W"] == "w" and other["P"] == "rest" and "D" not in other


def test_launcher_runs_the_process_in_its_working_dir(tmp_path: Path) -> None:
    """``working-dir`` of a launch.toml process (Buildpack API >= 0.8): the launcher changes there,
    and a process without one runs in the app directory."""
    layers, app, other = tmp_path / "layers", tmp_path / "app", tmp_path / "elsewhere"
    for d in (layers / "config", app, other):
        d.mkdir(parents=True)
    procs = [LaunchProcess("web", ("pwd",), direct=True, buildpack_id="bp", working_dir=str(other)),
             LaunchProcess("plain", ("pwd",), direct=True, buildpack_id="bp")]
    (layers / "config" / "launch.sh").write_bytes(render_process_table([("bp", "0.10")], procs, "web"))
    launcher = tmp_path / "launcher"
    launcher.write_bytes(launcher_bytes())
    launcher.chmod(0o755)
    link_dir = tmp_path / "cnb" / "process"
    link_dir.mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "CNB_LAYERS_DIR": str(layers), "CNB_APP_DIR": str(app),
           "CNB_PLATFORM_API": "0.12"}
    seen = {}
    for name in ("web", "plain"):
        (link_dir / name).symlink_to(launcher)
        proc = subprocess.run([shutil.which("dash") or "/bin/sh", str(link_dir / name)], env=env,
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, proc.stderr
        seen[name] = proc.stdout.strip()
    assert seen == {"web": str(other), "plain": str(app)}
