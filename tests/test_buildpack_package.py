"""``buildpack package``: package.toml to a buildpackage image in the real registry or a .cnb file,
in pack's format; ocibuild's own ``--buildpack IMAGE`` / ``--buildpack file.cnb`` read it, and a
build uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.registry import RegistryServer
from support.tools import run
from typer.testing import CliRunner

from ocibuild.cli.main import app
from ocibuild.cnb.buildpack import load_buildpacks
from ocibuild.store.registry.client import RegistryOptions

REPO = Path(__file__).resolve().parent.parent
META = REPO / "fixtures" / "builder" / "buildpacks" / "meta"
GREETER = REPO / "fixtures" / "build" / "buildpacks" / "greeter"
PROCFILE = "ocibuild/procfile@0.1.0"
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def labels(skopeo_ref: str) -> dict[str, object]:
    cfg = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--config", skopeo_ref], check=True).stdout)
    return {k: json.loads(v) for k, v in cfg["config"]["Labels"].items()}


def test_composite_package_in_the_registry_in_packs_format(registry: RegistryServer, fresh_repo: str,
                                                           tmp_path: Path) -> None:
    image = registry.ref(fresh_repo, "1")
    digest = ok(*registry.ocibuild_args(), "buildpack", "package", image, "--config", str(META / "package.toml")).strip()
    raw = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--raw", registry.skopeo_ref(fresh_repo, "1")],
                         check=True).stdout)
    assert len(raw["layers"]) == 3 and {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"}
    found = labels(registry.skopeo_ref(fresh_repo, "1"))
    meta = found["io.buildpacks.buildpackage.metadata"]
    assert (meta["id"], meta["version"], meta["stacks"]) == ("example/meta", "1.0.0", [{"id": "*"}])
    layers = found["io.buildpacks.buildpack.layers"]
    assert sorted((i, v) for i in layers for v in layers[i]) == [
        ("example/dep", "1.0.0"), ("example/hello", "0.0.1"), ("example/meta", "1.0.0")]
    assert layers["example/meta"]["1.0.0"]["order"][0]["group"][0] == {"id": "example/dep", "version": "1.0.0"}
    # the layers are the very layers a directory buildpack gives (one layer code path)
    from_image = load_buildpacks(image, options=RegistryOptions(insecure=frozenset({registry.host})))
    from_dirs = load_buildpacks(META)
    assert [bp.full_name for bp in from_image] == [bp.full_name for bp in from_dirs]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for img_bp, dir_bp in zip(from_image, from_dirs):
        assert img_bp.build_layer(tmp_path / "a").digest == dir_bp.build_layer(tmp_path / "b").digest
        assert layers[img_bp.id][img_bp.version]["layerDiffID"] == str(dir_bp.build_layer(tmp_path / "b").diff_id)
    # reproducible: packaging again gives the same digest
    again = ok(*registry.ocibuild_args(), "buildpack", "package", registry.ref(fresh_repo, "2"),
               "--config", str(META / "package.toml")).strip()
    assert again == digest


def test_cnb_file_is_an_oci_layout_tar_read_by_skopeo_and_ocibuild(tmp_path: Path) -> None:
    cnb = tmp_path / "meta.cnb"
    digest = ok("buildpack", "package", str(cnb), "--format", "file", "--config", str(META / "package.toml")).strip()
    raw = run(["skopeo", "inspect", "--raw", f"oci-archive:{cnb}"], check=True).stdout
    assert json.loads(raw)["layers"] and ok("digest", f"oci-archive:{cnb}").strip() == digest
    assert [bp.full_name for bp in load_buildpacks(cnb)] == [
        "example/meta@1.0.0", "example/dep@1.0.0", "example/hello@0.0.1"]


def test_build_uses_a_packaged_buildpack_image(registry: RegistryServer, fresh_repo: str, tmp_path: Path) -> None:
    pkg = tmp_path / "package.toml"
    pkg.write_text(f'[buildpack]\nuri = "{GREETER}"\n')
    image = registry.ref(fresh_repo, "greeter")
    ok(*registry.ocibuild_args(), "buildpack", "package", image, "--config", str(pkg))
    app_dir = tmp_path / "app"
    shutil.copytree(REPO / "examples" / "hello", app_dir)
    env = dict(os.environ, OCIBUILD_SCRATCH=str(tmp_path / "scratch"))
    proc = subprocess.run(
        [sys.executable, "-m", "ocibuild.cli.main", *registry.ocibuild_args(), "build", f"oci:{tmp_path}/out:app",
         "--path", str(app_dir), "--buildpack", image, "--buildpack", PROCFILE, "--json"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["group"] == ["test/greeter@1.0.0", PROCFILE]


@pytest.mark.parametrize("toml, code, words", [
    (None, 2, "no such package config"),
    ("[buildpack\n", 2, "invalid TOML"),
    ('[buildpack]\nuri = "META"\n', 2, "order needs example/dep@1.0.0"),
    ('[buildpack]\nuri = "/nonexistent/bp"\n', 2, "does not exist"),
])
def test_bad_package_config_is_one_line_and_writes_nothing(tmp_path: Path, toml, code, words) -> None:
    pkg = tmp_path / "package.toml"
    lone = tmp_path / "meta"  # the composite without the package.toml that brings its dependencies
    lone.mkdir()
    shutil.copy(META / "buildpack.toml", lone / "buildpack.toml")
    if toml is not None:
        pkg.write_text(toml.replace("META", str(lone)))
    result = cli("buildpack", "package", f"oci:{tmp_path / 'out'}:1", "--config", str(pkg))
    assert result.exit_code == code, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
    assert not (tmp_path / "out").exists()
    result = cli("buildpack", "package", str(tmp_path / "x.cnb"), "--format", "file", "--config", str(pkg))
    assert result.exit_code == code and not (tmp_path / "x.cnb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["meta", *(["package.toml"] if toml else [])])
