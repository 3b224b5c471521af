"""Buildpack sources: a directory, a .tgz, a .cnb buildpackage file and a buildpackage image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tomllib
from pathlib import Path

import pytest

from ocibuild.cnb.buildpack import load_buildpacks
from ocibuild.cnb.descriptor import Distro, Group, GroupElement, Order, TargetSpec, parse_descriptor
from ocibuild.cnb.errors import DescriptorError
from ocibuild.errors import UsageError

from support.builder_images import BUILDPACKS
from support.images import layer_tar, write_image

HELLO = BUILDPACKS / "hello"
EPOCH = 315532801


def _layer_entries(bp, workdir: Path) -> list[tuple[str, int, int, bytes | None]]:
    blob = bp.build_layer(workdir)
    with blob.open() as f:
        data = f.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == str(blob.digest) and len(data) == blob.size
    tar = gzip.decompress(data)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == str(blob.diff_id)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return [(m.name, m.mode, m.mtime, t.extractfile(m).read() if m.isreg() else None) for m in t]


def test_directory_source(tmp_path: Path) -> None:
    [bp] = load_buildpacks(HELLO)
    assert (bp.id, bp.version, bp.api, bp.name, bp.homepage) == (
        "example/hello", "0.0.1", "0.10", "Hello", "https://example.com/hello")
    assert bp.targets == (TargetSpec("linux", "amd64", "", (Distro("ubuntu", "22.04"),)),)
    assert bp.escaped_id == "example_hello" and not bp.is_composite
    entries = _layer_entries(bp, tmp_path)
    assert [(n, m) for n, m, _, _ in entries] == [
        ("cnb/buildpacks/example_hello", 0o755),
        ("cnb/buildpacks/example_hello/0.0.1", 0o755),
        ("cnb/buildpacks/example_hello/0.0.1/bin", 0o755),
        ("cnb/buildpacks/example_hello/0.0.1/bin/build", 0o755),
        ("cnb/buildpacks/example_hello/0.0.1/bin/detect", 0o755),
        ("cnb/buildpacks/example_hello/0.0.1/buildpack.toml", 0o644),
    ]
    assert {mtime for _, _, mtime, _ in entries} == {EPOCH}


def test_tgz_source_gives_the_same_layer_as_its_directory(tmp_path: Path) -> None:
    tgz = tmp_path / "hello.tgz"
    with tarfile.open(tgz, "w:gz") as t:
        for rel in ("bin", "bin/build", "bin/detect", "buildpack.toml"):  # the directory's walk order
            info = t.gettarinfo(str(HELLO / rel), arcname=f"./{rel}")
            info.mtime, info.uname, info.uid = 12345, "someone", 42
            if info.isreg():
                with open(HELLO / rel, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)
    [from_tgz] = load_buildpacks(tgz)
    [from_dir] = load_buildpacks(HELLO)
    assert from_tgz == from_dir
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert from_tgz.build_layer(tmp_path / "a").diff_id == from_dir.build_layer(tmp_path / "b").diff_id


def test_composite_directory_brings_its_dependencies() -> None:
    bps = load_buildpacks(BUILDPACKS / "meta")
    assert [bp.full_name for bp in bps] == ["example/meta@1.0.0", "example/dep@1.0.0", "example/hello@0.0.1"]
    assert bps[0].order == Order((Group((GroupElement("example/dep", "1.0.0"), GroupElement("example/hello", "0.0.1", True))),))


def _dist_layer(bp_id: str, version: str, files: dict[str, bytes]) -> dict:
    esc = bp_id.replace("/", "_")
    out: dict = {f"cnb/buildpacks/{esc}/{version}/{k}": v for k, v in files.items()}
    return out


def _write_package(layout: Path, tag: str | None = "pkg") -> tuple[object, list[str]]:
    meta_files = {"buildpack.toml": b'api = "0.10"\n[buildpack]\nid = "pkg/meta"\nversion = "2.0.0"\n'}
    dep_files = {"buildpack.toml": b'api = "0.9"\n[buildpack]\nid = "pkg/dep"\nversion = "3.0.0"\n',
                 "bin/build": (b"#!/bin/sh\n", 0o755), "bin/detect": (b"#!/bin/sh\n", 0o755)}
    layers = [_dist_layer("pkg/dep", "3.0.0", dep_files), _dist_layer("pkg/meta", "2.0.0", meta_files)]
    diff_ids = ["sha256:" + hashlib.sha256(layer_tar(files)).hexdigest() for files in layers]
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": "pkg/meta", "version": "2.0.0", "stacks": [{"id": "*"}]}),
        "io.buildpacks.buildpack.layers": json.dumps({
            "pkg/meta": {"2.0.0": {"api": "0.10", "order": [{"group": [{"id": "pkg/dep", "version": "3.0.0"}]}],
                                   "layerDiffID": diff_ids[1], "homepage": "https://example.com/meta"}},
            "pkg/dep": {"3.0.0": {"api": "0.9", "stacks": [{"id": "*"}], "layerDiffID": diff_ids[0]}},
        }),
    }
    info = write_image(layout, layers, tag=tag, labels=labels)
    return info, diff_ids


def _tar_layout(layout: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as t:  # uncompressed, as pack's SaveAsFile writes it
        for path in sorted(layout.rglob("*")):
            t.add(str(path), arcname=str(path.relative_to(layout)), recursive=False)
    return dest


def _check_package(bps, diff_ids) -> None:
    assert [bp.full_name for bp in bps] == ["pkg/meta@2.0.0", "pkg/dep@3.0.0"]
    meta, dep = bps
    assert meta.homepage == "https://example.com/meta" and meta.is_composite
    assert dep.api == "0.9" and dep.stacks[0].id == "*"


def test_cnb_file_source(tmp_path: Path) -> None:
    info, diff_ids = _write_package(tmp_path / "layout")
    cnb = _tar_layout(tmp_path / "layout", tmp_path / "pkg.cnb")
    bps = load_buildpacks(cnb)
    _check_package(bps, diff_ids)
    # the package layer is used byte for byte (same digest, same diffID)
    blob = bps[1].build_layer(tmp_path)
    assert str(blob.digest) == info.layers[0].digest and str(blob.diff_id) == diff_ids[0]
    with blob.open() as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == info.layers[0].digest


def test_buildpackage_image_reference(tmp_path: Path) -> None:
    info, diff_ids = _write_package(tmp_path / "layout")
    bps = load_buildpacks(f"oci:{tmp_path / 'layout'}:pkg")
    _check_package(bps, diff_ids)
    assert str(bps[0].build_layer(tmp_path).digest) == info.layers[1].digest


def test_bad_sources(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError):
        load_buildpacks(tmp_path / "empty")
    with pytest.raises(UsageError):
        load_buildpacks(tmp_path / "no" / "such" / "dir")
    with pytest.raises(DescriptorError):
        parse_descriptor(tomllib.loads('api = "0.10"\n[buildpack]\nid = "x"\n'), tmp_path)
    with pytest.raises(DescriptorError):
        parse_descriptor(tomllib.loads(
            'api = "0.10"\n[buildpack]\nid = "x"\nversion = "1"\n[[stacks]]\nid = "*"\n'
            '[[order]]\n[[order.group]]\nid = "y"\n'), tmp_path)


def test_directory_layer_conventions_links_and_special_files(tmp_path: Path) -> None:
    src = tmp_path / "bp"
    (src / "bin").mkdir(parents=True)
    (src / "buildpack.toml").write_text('api = "0.10"\n[buildpack]\nid = "t/links"\nversion = "1.0"\n')
    (src / "bin" / "build").write_text("#!/bin/sh\n")
    (src / "bin" / "build").chmod(0o600)  # not executable on disk: pack makes bin/build 0755 anyway
    (src / "lib").mkdir()
    (src / "lib" / "tool").write_text("x")
    (src / "lib" / "tool").chmod(0o700)
    (src / "lib" / "data").write_text("d")
    (src / "lib" / "same").hardlink_to(src / "lib" / "data")
    (src / "lib" / "link").symlink_to("data")
    os.mkfifo(src / "lib" / "pipe")
    [bp] = load_buildpacks(src)
    (tmp_path / "w1").mkdir()
    blob = bp.build_layer(tmp_path / "w1")
    with blob.open() as f:
        tar = gzip.decompress(f.read())
    base = "cnb/buildpacks/t_links/1.0/"
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        got = {m.name.removeprefix(base): (m.type, m.mode, m.linkname.removeprefix(base)) for m in t}
    assert got == {
        "cnb/buildpacks/t_links": (tarfile.DIRTYPE, 0o755, ""),
        "cnb/buildpacks/t_links/1.0": (tarfile.DIRTYPE, 0o755, ""),
        "bin": (tarfile.DIRTYPE, 0o755, ""),
        "bin/build": (tarfile.REGTYPE, 0o755, ""),
        "buildpack.toml": (tarfile.REGTYPE, 0o644, ""),
        "lib": (tarfile.DIRTYPE, 0o755, ""),
        "lib/data": (tarfile.REGTYPE, 0o644, ""),
        "lib/link": (tarfile.SYMTYPE, 0o777, "data"),
        "lib/same": (tarfile.LNKTYPE, 0o644, "lib/data"),  # a hard link to the first path, re-homed
        "lib/tool": (tarfile.REGTYPE, 0o755, ""),
    }  # the fifo is not buildpack content
    (tmp_path / "w2").mkdir()
    again = bp.build_layer(tmp_path / "w2")
    assert (again.digest, again.diff_id) == (blob.digest, blob.diff_id)
