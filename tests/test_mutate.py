"""append_layers and mutate_image, checked with umoci and oci-image-tool."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocibuild.errors import UsageError
from ocibuild.layer import TarEntry, write_layer
from ocibuild.mutate import append_layers, mutate_image
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.manifest import ImageConfig, Index, Manifest
from ocibuild.store.base import load_config, load_manifest
from ocibuild.store.layout import LayoutStore, create_layout


def _base(store: LayoutStore, tag: str = "base", docker: bool = False) -> Manifest:
    media = mt.DOCKER_LAYER if docker else mt.OCI_LAYER_GZIP
    r = write_layer([TarEntry.file("etc/os-release", b"ID=test\n")], media_type=media, tmp_dir=store.tmp_dir)
    store.put_blob_file(r.descriptor, r.path)
    cfg = ImageConfig.build(
        {"architecture": "amd64", "os": "linux",
         "config": {"Env": ["PATH=/usr/bin", "KEEP=1"], "Labels": {"a": "1", "drop": "x"}, "Cmd": ["sh"]},
         "rootfs": {"type": "layers", "diff_ids": [str(r.diff_id)]},
         "history": [{"created_by": "base"}]},
        mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
    )
    store.put_blob(cfg.descriptor(), io.BytesIO(cfg.raw))
    m = Manifest.build(cfg.descriptor(), [r.descriptor], media_type=mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
                       annotations=None if docker else {"org.example": "base"})
    store.put_manifest(m.descriptor(), m.raw, tag=tag)
    return m


def _blob_count(store: LayoutStore) -> int:
    return len(list(store.iter_blobs()))


def test_append_directory_and_tarball(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    base = _base(store)
    base_raw = store.get_manifest("base")[1]
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "run").write_text("#!/bin/sh\necho app\n")
    tarball = tmp_path / "extra.tar"
    with tarfile.open(tarball, "w") as tf:
        info = tarfile.TarInfo("opt/extra.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"extra"))
    n_before = _blob_count(store)
    desc = append_layers(store, "base", [app, tarball], store, "app")
    assert store.resolve("app").digest == desc.digest
    _, m = load_manifest(store, "app")
    assert isinstance(m, Manifest) and m.media_type == mt.OCI_MANIFEST
    assert m.layers[0] == base.layers[0] and len(m.layers) == 3
    assert all(layer.media_type == mt.OCI_LAYER_GZIP for layer in m.layers)
    cfg = load_config(store, m.config)
    base_cfg = load_config(store, base.config)
    assert cfg.diff_ids[0] == base_cfg.diff_ids[0] and len(cfg.diff_ids) == 3
    history = cfg.get("history")
    assert len(history) == 3 and history[0] == {"created_by": "base"}
    # the base is untouched; only new layers + config + manifest were written
    assert store.get_manifest("base")[1] == base_raw
    assert _blob_count(store) == n_before + 4
    # reproducible: doing it again gives the same image
    assert append_layers(store, "base", [app, tarball], store, "app2").digest == desc.digest
    # peers accept the result and see every file
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{store.path}:app", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "etc" / "os-release").read_text() == "ID=test\n"
    assert (rootfs / "bin" / "run").read_text().endswith("echo app\n")
    assert (rootfs / "opt" / "extra.txt").read_text() == "extra"
    ok = subprocess.run(["oci-image-tool", "validate", "--type", "image", str(store.path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_append_into_another_store_copies_base_blobs(tmp_path: Path) -> None:
    src = create_layout(tmp_path / "src")
    _base(src)
    dst = create_layout(tmp_path / "dst")
    app = tmp_path / "app"
    app.mkdir()
    (app / "f").write_text("f")
    append_layers(src, "base", [app], dst, "out", prefix="/workspace")
    _, m = load_manifest(dst, "out")
    assert all(dst.has_blob(d) for d in m.children())
    assert dst.tags() == ["out"] and src.tags() == ["base"]
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{dst.path}:out", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "rootfs" / "workspace" / "f").read_text() == "f"


def test_docker_family_is_kept(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    _base(store, docker=True)
    app = tmp_path / "app"
    app.mkdir()
    (app / "f").write_text("f")
    append_layers(store, "base", [app], store, "app")
    _, m = load_manifest(store, "app")
    assert m.media_type == mt.DOCKER_MANIFEST and m.config.media_type == mt.DOCKER_CONFIG
    assert [layer.media_type for layer in m.layers] == [mt.DOCKER_LAYER, mt.DOCKER_LAYER]
    mutate_image(store, "app", env={"X": "1"}, dst_tag="mut")
    _, mm = load_manifest(store, "mut")
    assert mm.media_type == mt.DOCKER_MANIFEST and load_config(store, mm.config).env[-1] == "X=1"
    with pytest.raises(UsageError):
        mutate_image(store, "app", annotations={"a": "b"})


def test_mutate_config_and_annotations(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    base = _base(store)
    base_cfg_raw = store.blob_path(base.config.digest).read_bytes()
    desc = mutate_image(store, "base", env={"PATH": "/bin", "NEW": "v", "KEEP": None}, entrypoint=["/bin/app"],
                        cmd=["--serve"], labels={"b": "2", "drop": None}, user="1000:1000", workdir="/workspace",
                        annotations={"org.example.new": "yes"}, dst_tag="mutated")
    _, m = load_manifest(store, "mutated")
    assert m.digest == desc.digest and m.layers == base.layers
    assert dict(m.annotations) == {"org.example": "base", "org.example.new": "yes"}
    cfg = load_config(store, m.config)
    c = cfg.get("config")
    assert list(c["Env"]) == ["PATH=/bin", "NEW=v"]
    assert list(c["Entrypoint"]) == ["/bin/app"] and list(c["Cmd"]) == ["--serve"]
    assert dict(c["Labels"]) == {"a": "1", "b": "2"}
    assert c["User"] == "1000:1000" and c["WorkingDir"] == "/workspace"
    assert cfg.diff_ids == load_config(store, base.config).diff_ids
    # the inputs are not modified
    assert store.resolve("base").digest == base.digest
    assert store.blob_path(base.config.digest).read_bytes() == base_cfg_raw
    # into another store: layers are copied along
    other = create_layout(tmp_path / "other")
    mutate_image(store, "base", user="root", dst_store=other, dst_tag="x")
    _, mo = load_manifest(other, "x")
    assert all(other.has_blob(d) for d in mo.children())


def test_index_base_needs_a_platform(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    base = _base(store)
    idx = Index.build([base.descriptor(platform=Platform("linux", "amd64"))])
    store.put_manifest(idx.descriptor(), idx.raw, tag="multi")
    with pytest.raises(UsageError):
        mutate_image(store, "multi", user="x")
    desc = mutate_image(store, "multi", user="x", platform=Platform.parse("linux/amd64"), dst_tag="one")
    _, m = load_manifest(store, "one")
    assert m.digest == desc.digest and isinstance(m, Manifest)


def test_append_digest_depends_on_content_not_on_the_source_name(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    _base(store)
    digests = []
    for name in ("app", "elsewhere-named"):
        d = tmp_path / name
        d.mkdir()
        (d / "hello.txt").write_text("same content\n")
        digests.append(append_layers(store, "base", [d], store, name).digest)
    assert digests[0] == digests[1]
    config = load_config(store, load_manifest(store, "app")[1].config)
    assert config.raw.count(b"ocibuild append sha256:") == 1  # history names the layer by its diff_id
