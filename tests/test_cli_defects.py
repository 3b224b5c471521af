"""Reviewer-found CLI defects: damaged archives, ``inspect --raw --platform``, symlinked docker config,
and failed commands that left an empty destination layout behind."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocibuild.cli.main import app
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.layout import LayoutStore
from support.copyimages import image, index

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def one_line_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocibuild: error: "), result.stderr
    return lines[0]


def files_under(path: Path) -> list[str]:
    """Content files of a layout (lock files come and go with every writer)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.name.endswith(".lock"))


@pytest.fixture
def base(tmp_path: Path) -> LayoutStore:
    store = LayoutStore(tmp_path / "base", create=True)
    image(store, "defects", tag="latest")
    return store


def _tar_bytes(tmp_path: Path) -> bytes:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    for i in range(20):
        (tree / f"f{i}").write_bytes(os.urandom(20000))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(tree, arcname="tree")
    return buf.getvalue()


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    full = _tar_bytes(tmp_path)
    return {
        "notar.txt": (b"hello\n", "not a valid tar archive"),
        "empty.tar": (b"", "not a valid tar archive (empty file)"),
        "layer.tar.xz": (lzma.compress(full), "xz compression is not supported"),
        "truncated.tar": (full[:200000], "not a valid tar archive"),
        "truncated.tar.gz": (gzip.compress(full)[:150000], "not a valid tar archive"),
    }


# -- 1. damaged tarballs and layers ------------------------------------------------------------------
def test_append_damaged_tarball_is_one_line_and_writes_nothing(tmp_path: Path, base: LayoutStore) -> None:
    for name, (data, reason) in _bad_inputs(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        dest = tmp_path / f"new-{name}"
        line = one_line_error(cli("append", f"oci:{base.path}:latest", str(path), "--tag", f"oci:{dest}:z"))
        assert line.startswith(f"ocibuild: error: {path}: ") and reason in line, line
        assert not dest.exists(), f"{name}: left {files_under(dest)}"


def test_append_plain_tar_whose_first_name_looks_like_a_compression_magic(tmp_path: Path, base: LayoutStore) -> None:
    tarball = tmp_path / "bzname.tar"
    with tarfile.open(tarball, "w") as tf:
        info = tarfile.TarInfo("BZh91AY")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"x\n"))
    result = cli("append", f"oci:{base.path}:latest", str(tarball), "--tag", f"oci:{tmp_path / 'out'}:t")
    assert result.exit_code == 0, result.output
    rootfs = tmp_path / "rootfs"
    assert cli("unpack", f"oci:{tmp_path / 'out'}:t", str(rootfs)).exit_code == 0
    assert (rootfs / "BZh91AY").read_text() == "x\n"


def test_append_damaged_tarball_into_existing_layout_leaves_it_unchanged(tmp_path: Path, base: LayoutStore) -> None:
    good = tmp_path / "good"
    (good / "etc").mkdir(parents=True)
    (good / "etc" / "x").write_text("x")
    dest = LayoutStore(tmp_path / "dest", create=True)
    before = files_under(dest.path)
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(gzip.compress(_tar_bytes(tmp_path))[:150000])
    # the good layer is built first, then the bad one fails: neither it nor the base blobs are written
    line = one_line_error(cli("append", f"oci:{base.path}:latest", str(good), str(bad), "--tag", f"oci:{dest.path}:z"))
    assert "not a valid tar archive" in line
    assert files_under(dest.path) == before
    assert dest.tags() == []


def test_append_truncated_gzip_subprocess_exit_code(tmp_path: Path, base: LayoutStore) -> None:
    bad = tmp_path / "t.tar.gz"
    bad.write_bytes(gzip.compress(_tar_bytes(tmp_path))[:150000])
    done = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "append", f"oci:{base.path}:latest", str(bad),
                           "--tag", f"oci:{tmp_path / 'x'}:z"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"ocibuild: error: {bad}: not a valid tar archive (") and done.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _image_with_layer(store: LayoutStore, blob: bytes, media_type: str, uncompressed: bytes) -> None:
    """An image whose one layer has the right digest and diffID but ``blob`` as content."""
    desc = Descriptor(media_type, Digest.of(blob), len(blob))
    store.put_blob(desc, io.BytesIO(blob))
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(uncompressed))]}})
    store.put_blob(cfg.descriptor(), io.BytesIO(cfg.raw))
    m = Manifest.build(cfg.descriptor(), [desc])
    store.put_manifest(m.descriptor(), m.raw, tag="bad")


@pytest.mark.parametrize("kind", ["notar", "truncated-tar", "truncated-gzip"])
def test_unpack_damaged_layer_is_one_line_and_removes_dir(tmp_path: Path, kind: str) -> None:
    full = _tar_bytes(tmp_path)
    notar = b"hello, not a tar at all\n" * 40
    blob, media_type, plain = {
        "notar": (notar, mt.OCI_LAYER, notar),
        "truncated-tar": (full[:200000], mt.OCI_LAYER, full[:200000]),
        "truncated-gzip": (gzip.compress(full)[:150000], mt.OCI_LAYER_GZIP, full),
    }[kind]
    store = LayoutStore(tmp_path / "layout", create=True)
    _image_with_layer(store, blob, media_type, plain)
    rootfs = tmp_path / "rootfs"
    line = one_line_error(cli("unpack", f"oci:{store.path}:bad", str(rootfs)))
    assert line.startswith("ocibuild: error: layer sha256:") and "not a valid tar archive (" in line, line
    assert not rootfs.exists()


# -- 4. failed commands leave no new destination ------------------------------------------------------
def test_failed_copy_mutate_append_leave_no_new_layout(tmp_path: Path, base: LayoutStore) -> None:
    src = f"oci:{base.path}:nosuchtag"
    one_line_error(cli("copy", src, f"oci:{tmp_path / 'c'}"))
    one_line_error(cli("mutate", src, "--env", "A=b", "--tag", f"oci:{tmp_path / 'm'}:t"))
    (tmp_path / "dir").mkdir()
    one_line_error(cli("append", src, str(tmp_path / "dir"), "--tag", f"oci:{tmp_path / 'a'}:t"))
    assert not any((tmp_path / n).exists() for n in "cma")
    # success still creates it
    assert cli("copy", f"oci:{base.path}:latest", f"oci:{tmp_path / 'c'}").exit_code == 0
    assert LayoutStore(tmp_path / "c").tags() == ["latest"]


# -- 2. inspect --raw --platform ----------------------------------------------------------------------
def test_inspect_raw_with_platform_prints_the_child_manifest(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "idx", create=True)
    built, children = index(store, "multi", tag="multi")
    ref = f"oci:{store.path}:multi"
    assert cli("inspect", "--raw", ref).stdout_bytes == built.raw  # no platform: the index itself
    arm = cli("inspect", "--raw", "--platform", "linux/arm64", ref)
    assert arm.exit_code == 0, arm.output
    assert arm.stdout_bytes == children[1].raw
    assert cli("inspect", "--raw", "--platform", "linux/amd64", ref).stdout_bytes == children[0].raw
    assert cli("manifest", "--platform", "linux/arm64", ref).stdout_bytes == children[1].raw
    # an image manifest is printed as it is, whatever --platform says (crane manifest --platform)
    single = f"oci:{store.path}@{children[0].desc.digest}"
    assert cli("inspect", "--raw", "--platform", "linux/amd64", single).stdout_bytes == children[0].raw
    missing = one_line_error(cli("inspect", "--raw", "--platform", "linux/s390x", ref))
    assert "no image for platform linux/s390x" in missing


def test_inspect_raw_and_json_are_refused(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "idx", create=True)
    index(store, "multi", tag="multi")
    line = one_line_error(cli("inspect", "--raw", "--json", f"oci:{store.path}:multi"), exit_code=2)
    assert "--raw and --json" in line


# -- 3. login writes through a symlinked config.json ---------------------------------------------------
def test_login_writes_through_symlinked_config(tmp_path: Path, basic_registry, sentinel_password) -> None:
    docker = tmp_path / "docker"
    docker.mkdir()
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "docker-config.json"
    target.write_text(json.dumps({"auths": {"other.example": {"auth": "bzpv"}}, "psFormat": "x"}))
    link = docker / "config.json"
    link.symlink_to(os.path.relpath(target, docker))
    env = {"DOCKER_CONFIG": str(docker), "REGISTRY_AUTH_FILE": "", "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    host = basic_registry.host

    result = runner.invoke(app, ["login", host, "-u", basic_registry.username, "--password-stdin"],
                           input=sentinel_password + "\n", env=env)
    assert result.exit_code == 0, result.output
    assert sentinel_password not in result.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    doc = json.loads(target.read_text())
    assert host in doc["auths"] and doc["auths"]["other.example"] == {"auth": "bzpv"} and doc["psFormat"] == "x"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in docker.iterdir()) == ["config.json"]  # no temp file beside the link
    assert sorted(p.name for p in dotfiles.iterdir()) == ["docker-config.json"]

    assert cli("logout", host, env=env).exit_code == 0
    assert link.is_symlink() and host not in json.loads(target.read_text())["auths"]


def test_login_through_dangling_symlink_creates_the_target(tmp_path: Path, basic_registry, sentinel_password) -> None:
    docker = tmp_path / "docker"
    docker.mkdir()
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "config.json"
    (docker / "config.json").symlink_to(target)
    env = {"DOCKER_CONFIG": str(docker), "REGISTRY_AUTH_FILE": "", "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    result = runner.invoke(app, ["login", basic_registry.host, "-u", basic_registry.username, "-p", sentinel_password],
                           env=env)
    assert result.exit_code == 0, result.output
    assert (docker / "config.json").is_symlink()
    assert basic_registry.host in json.loads(target.read_text())["auths"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_build_with_a_truncated_buildpack_tgz_is_one_line(tmp_path: Path) -> None:
    # The CLI's last safety net: an EOFError from any compressed reader is one line, not click's "Aborted!".
    noop = Path(__file__).resolve().parent.parent / "fixtures" / "bench" / "buildpacks" / "noop"
    good = tmp_path / "bp.tgz"
    with tarfile.open(good, "w:gz") as tf:
        tf.add(noop, arcname=".")
    bad = tmp_path / "trunc.tgz"
    bad.write_bytes(good.read_bytes()[:300])
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text("web: echo hi\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ocibuild.cli.main", "build", f"oci:{tmp_path}/out:x", "--path", str(app_dir),
         "--buildpack", str(bad)],
        capture_output=True, text=True, env=dict(os.environ, OCIBUILD_SCRATCH=str(tmp_path / "scratch")),
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ocibuild: error: ") and "end" in last, proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()
