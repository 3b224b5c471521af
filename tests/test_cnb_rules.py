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
from ocibuild.cnb.cache import CACHE_LABEL, DirCache, ImageCache, restore
from ocibuild.cnb.descriptor import GroupElement, Target
from ocibuild.cnb.env import LaunchEnv, launch_layer_ops
from ocibuild.cnb.export import ExportOptions, RunImageSource, export, previous_metadata, read_build_output
from ocibuild.cnb.launcher import LaunchProcess, launcher_bytes, render_process_table
from ocibuild.cnb.runimage import target_of, with_build_os_release
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.base import load_config, load_manifest, put_bytes
from ocibuild.store.layout import LayoutStore
from test_launcher import _exec, _put_exec, _setup, shell  # noqa: F401 (shell is a fixture)
from test_pack_cli import app, build_json, write_buildpack  # noqa: F401 (app is a fixture)

NORMALIZED_MTIME = 315532801  # 1980-01-01T00:00:01Z
_GROUP = [GroupElement("test/runtime", "1.0.0", api="0.10"), GroupElement("test/app", "2.0.0", api="0.10")]
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
    assert 'version = "3.1"' in toml and "[types]" not in toml  # the buildpack opts in again (API >= 0.6)


def test_restored_layer_types_come_from_the_metadata_label_for_buildpack_api_0_6(tmp_path: Path) -> None:
    """lifecycle#589: for a launch layer the previous image's label, not the cache, decides whether and
    how it comes back and what its metadata was; the ``<layer>.toml`` restored for Buildpack API >= 0.6
    has ``[metadata]`` only (lifecycle ``layermetadata.DefaultEncoderDecoder``: every type false until
    the buildpack sets it again)."""
    b = _Built(tmp_path)

    def cache_side(layers: dict) -> None:
        layers["test/runtime"]["runtime"].update(build=True, data={"version": "from-the-cache"})

    b.edit_cache_metadata(cache_side)
    fresh, got = b.restore(previous=b.previous())
    assert "test/runtime:runtime" in got.content  # same sha in both: the content comes from the cache
    toml = (fresh / "test_runtime" / "runtime.toml").read_text()
    assert 'version = "3.1"' in toml and "from-the-cache" not in toml and "[types]" not in toml


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


def test_image_cache_metadata_without_its_layer_is_skipped_not_fatal(tmp_path: Path) -> None:
    """lifecycle#1381 for a cache image: its label names a layer the image no longer has."""
    store = LayoutStore(tmp_path / "cache-image", create=True)
    make_layers_dir(tmp_path)
    cache = ImageCache(store, "cache")
    saved = cache.save(tmp_path / "layers", uid=1000, gid=1000)
    _d, manifest = load_manifest(store, "cache")
    config = load_config(store, manifest.config)
    doc = json.loads(config.raw)
    doc["rootfs"]["diff_ids"] = doc["rootfs"]["diff_ids"][:1]  # the label still names both layers
    short = ImageConfig.build(doc)
    put_bytes(store, short.descriptor(), short.raw)
    trimmed = Manifest.build(short.descriptor(), list(manifest.layers[:1]))
    store.put_manifest(trimmed.descriptor(), trimmed.raw, tag="cache")
    got = restore(cache, tmp_path / "fresh", _GROUP)
    assert len(got.content) == 1 and len(saved.metadata["buildpacks"][0]["layers"]) == 2



# -- target data -----------------------------------------------------------------------------------------
def _run_image_with(store: LayoutStore, tag: str, *, variant: str | None, labels: dict[str, str]) -> None:
    make_run_image(store, "base", extra_labels=labels)
    _d, manifest = load_manifest(store, "base")
    doc = json.loads(load_config(store, manifest.config).raw)
    doc.update(architecture="arm64", os="linux")
    if variant:
        doc["variant"] = variant
    config = ImageConfig.build(doc)
    put_bytes(store, config.descriptor(), config.raw)
    new = Manifest.build(config.descriptor(), list(manifest.layers))
    store.put_manifest(new.descriptor(), new.raw, tag=tag)



def test_target_data_order_config_then_distro_labels_then_os_release(tmp_path: Path) -> None:
    """lifecycle#1352, #1337, #1371: os/arch/variant from the run image's config; the distro from its
    ``io.buildpacks.base.distro.*`` labels; the build image's /etc/os-release only when there are none."""
    store = LayoutStore(tmp_path / "runs", create=True)
    os_release = 'ID=ubuntu\nVERSION_ID="24.04"\n'
    _run_image_with(store, "labelled", variant="v8", labels={"io.buildpacks.base.distro.name": "debian",
                                                             "io.buildpacks.base.distro.version": "12"})
    labelled = with_build_os_release(target_of(store, "labelled"), os_release)
    assert labelled == Target(os="linux", arch="arm64", arch_variant="v8", distro_name="debian",
                              distro_version="12")
    _run_image_with(store, "bare", variant=None, labels={})
    bare = target_of(store, "bare")
    assert (bare.os, bare.arch, bare.arch_variant, bare.distro_name) == ("linux", "arm64", "", "")
    assert with_build_os_release(bare, os_release) == Target(os="linux", arch="arm64", distro_name="ubuntu",
                                                             distro_version="24.04")



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


def test_launcher_exec_d_runs_in_buildpack_order_then_file_name_order(shell: str, tmp_path: Path) -> None:
    layers, _ = _setup(tmp_path)
    # Written out of order: the launcher sorts by name within a directory, buildpacks in group order.
    for name in ("30-c", "10-a", "20-b"):
        _put_exec(layers, f"new_bp/l1/exec.d/{name}", f'printf \'SEEN = "%s{name}"\\n\' "${{SEEN:-}}" >&3\n')
    _put_exec(layers, "old_bp/l2/exec.d/00-first", "echo 'NEVER = \"x\"' >&3\n")  # buildpack API 0.4: no exec.d
    proc = _exec(shell, tmp_path, "web")
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert env["SEEN"] == "10-a20-b30-c" and "NEVER" not in env



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


# -- end to end: the cache alone brings a launch+cache layer back ---------------------------------------------
KEEPER = """\
layers="$1"
mkdir -p "$layers/both"
if [ -f "$layers/both.toml" ]; then
  echo "both: restored $(cat "$layers/both/stamp")"
  grep -q 'types' "$layers/both.toml" && echo "both: types came back"
else
  echo "both: $(date +%s%N)" > "$layers/both/stamp"
fi
printf '[types]\\nlaunch = true\\ncache = true\\n[metadata]\\nv = "1"\\n' > "$layers/both.toml"
mkdir -p "$layers/bin"
printf '[types]\\nlaunch = true\\n' > "$layers/bin.toml"
cat > "$layers/launch.toml" <<'EOF'
[[processes]]
type = "web"
command = ["cat", "/layers/test_keeper/both/stamp"]
default = true
EOF
"""


def test_launch_cache_layer_restored_from_cache_end_to_end_and_same_build_same_digest(
        tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:  # noqa: F811
    """Two builds into two repositories sharing only the cache (no ``--previous-image``): the
    launch+cache layer is restored from the cache with no types, and both images are the same digest."""
    scratch, cache = tmp_path / "scratch", tmp_path / "cache"
    keeper = write_buildpack(tmp_path / "keeper", "test/keeper", KEEPER)
    first = build_json(f"{registry.host}/{fresh_repo}-a:1", "-b", str(keeper), "--cache-dir", str(cache),
                       scratch=scratch, app=app)
    from test_build import ocibuild

    second_ref = f"{registry.host}/{fresh_repo}-b:1"
    proc = ocibuild("build", second_ref, "-b", str(keeper), "--cache-dir", str(cache), "--path", str(app),
                    "--json", scratch=scratch)
    assert "both: restored both: " in proc.stderr and "types came back" not in proc.stderr
    assert json.loads(proc.stdout)["digest"] == first["digest"]
