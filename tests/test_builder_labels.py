"""The Builder snapshot reads pack's labels; builder create/inspect (API and CLI); registry builders."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ocibuild.cli.builder import register
from ocibuild.cnb.descriptor import Group, GroupElement, Order
from ocibuild.cnb.builder import InvalidBuilder, RunImage, inspect_builder, open_builder
from ocibuild.cnb.compose import compose_builder
from ocibuild.errors import UsageError
from ocibuild.store.layout import LayoutStore

from support.builder_images import BASE_BP_DIFF_ID, BUILDPACKS, write_base_builder
from support.images import skopeo_copy, write_image


def test_open_builder_parses_labels(tmp_path: Path) -> None:
    info = write_base_builder(tmp_path / "base")
    b = open_builder(LayoutStore(info.layout), "builder")
    assert str(b.digest) == info.manifest.digest and b.descriptor.size == info.manifest.size
    assert (b.uid, b.gid, b.stack_id, b.mixins) == (1000, 1001, "io.buildpacks.stacks.jammy", ("build:git",))
    assert b.order == Order((Group((GroupElement("example/base", "1.0.0"),)),))
    assert b.layer_diff_id("example/base", "1.0.0") == BASE_BP_DIFF_ID and b.has_buildpack("example/base", "1.0.0")
    assert b.run_images == (RunImage("registry.example/run:base", ("mirror.example/run:base",)),)
    assert b.metadata.lifecycle_version == "0.20.1"
    assert b.metadata.lifecycle_apis.platform_supported == ("0.7", "0.12", "0.13")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.stack_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        b.buildpack_layers["x"] = {}  # type: ignore[index]
    shown = inspect_builder(b)
    assert shown["run_images"] == [{"name": "registry.example/run:base", "mirrors": ["mirror.example/run:base"]}]
    assert shown["buildpacks"] == [{"id": "example/base", "version": "1.0.0", "homepage": "", "name": ""}]
    assert shown["detection_order"] == [{"group": [{"id": "example/base", "version": "1.0.0", "optional": False}]}]
    assert shown["lifecycle"]["version"] == "0.20.1"


def test_not_a_builder(tmp_path: Path) -> None:
    write_image(tmp_path / "plain", tag="plain")
    with pytest.raises(InvalidBuilder):
        open_builder(LayoutStore(tmp_path / "plain"), "plain")
    info = write_base_builder(tmp_path / "nouid", env=("PATH=/bin",))
    b = open_builder(LayoutStore(info.layout), "builder")
    assert b.uid is None
    with pytest.raises(UsageError, match="CNB_USER_ID"):
        compose_builder(b, env={"A": "1"}, scratch_store=LayoutStore(info.layout))


def _lifecycle_tgz(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as t:
        def add(name: str, data: bytes, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            t.addfile(info, io.BytesIO(data))
        add("lifecycle.toml", b'[apis]\n[apis.buildpack]\ndeprecated = []\nsupported = ["0.9", "0.10"]\n'
            b'[apis.platform]\ndeprecated = ["0.7"]\nsupported = ["0.12", "0.13"]\n[lifecycle]\nversion = "0.99.0"\n', 0o644)
        for binary in ("detector", "analyzer", "restorer", "builder", "exporter", "launcher", "creator"):
            add(f"lifecycle/{binary}", b"#!/bin/sh\necho " + binary.encode() + b"\n")
    return path


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_builder_create_and_inspect_cli(tmp_path: Path) -> None:
    build = write_image(tmp_path / "build", [{"etc/os-release": b"ID=test\n"}], tag="build",
                        config={"Env": ["CNB_USER_ID=1000", "CNB_GROUP_ID=1000"], "User": "1000:1000"},
                        labels={"io.buildpacks.stack.id": "test.stack"})
    lifecycle = _lifecycle_tgz(tmp_path / "lifecycle.tgz")
    config = tmp_path / "builder.toml"
    config.write_text(f"""
description = "made by the test"

[[buildpacks]]
uri = "{BUILDPACKS / 'hello'}"

[[buildpacks]]
uri = "{BUILDPACKS / 'dep'}"

[[order]]
[[order.group]]
id = "example/hello"
[[order.group]]
id = "example/dep"
optional = true

[build]
image = "{build.ref}"

[[build.env]]
name = "BP_FOO"
value = "bar"

[[run.images]]
image = "registry.example/run:1"
mirrors = ["mirror.example/run:1"]

[lifecycle]
uri = "lifecycle.tgz"
""")
    runner = CliRunner()
    out = runner.invoke(_app(), ["builder", "create", "--config", str(config), "--tag", f"oci:{tmp_path / 'out'}:b1", "--json"])
    assert out.exit_code == 0, out.output
    created = json.loads(out.stdout)
    store = LayoutStore(tmp_path / "out")
    assert str(store.resolve("b1").digest) == created["digest"]
    b = open_builder(store, "b1")
    # the whole image is in the output layout (base layer copied there too)
    for layer in b.manifest.layers:
        assert store.has_blob(layer)
    meta = json.loads(b.labels["io.buildpacks.builder.metadata"])
    assert meta["description"] == "made by the test"
    assert meta["lifecycle"] == {
        "version": "0.99.0", "api": {"buildpack": "0.9", "platform": "0.7"},
        "apis": {"buildpack": {"deprecated": [], "supported": ["0.9", "0.10"]},
                 "platform": {"deprecated": ["0.7"], "supported": ["0.12", "0.13"]}},
    }
    assert meta["images"] == [{"image": "registry.example/run:1", "mirrors": ["mirror.example/run:1"]}]
    names, modes = [], {}
    for layer in b.manifest.layers[1:]:
        data = gzip.decompress((tmp_path / "out" / "blobs" / "sha256" / layer.digest.encoded).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            names.append([m.name for m in t])
            modes.update({m.name: (m.mode, m.mtime, m.uid, m.uname) for m in t})
    # lifecycle binaries keep their modes; the compat symlink is 0644 as pack writes it
    assert modes["cnb/lifecycle/detector"] == (0o755, 315532801, 0, "")
    assert modes["lifecycle"][0] == 0o644 and modes["cnb/lifecycle"][0] == 0o755
    assert names[1] == ["cnb/lifecycle"] + [f"cnb/lifecycle/{x}" for x in (  # sorted by the layer writer
        "analyzer", "builder", "creator", "detector", "exporter", "launcher", "restorer")] + ["lifecycle"]
    assert names[2][1] == "cnb/buildpacks/example_dep/1.0.0" and names[3][1] == "cnb/buildpacks/example_hello/0.0.1"
    assert names[-2] == ["cnb/build-config/env/BP_FOO"]
    assert names[-1] == []  # the platform env layer is always there, empty here

    out = runner.invoke(_app(), ["builder", "inspect", f"oci:{tmp_path / 'out'}:b1", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["lifecycle"]["platform_apis"] == {"deprecated": ["0.7"], "supported": ["0.12", "0.13"]}
    assert [bp["id"] for bp in shown["buildpacks"]] == ["example/dep", "example/hello"]
    assert shown["detection_order"] == [{"group": [
        {"id": "example/hello", "optional": False}, {"id": "example/dep", "optional": True}]}]
    assert shown["run_images"] == [{"name": "registry.example/run:1", "mirrors": ["mirror.example/run:1"]}]
    out = runner.invoke(_app(), ["builder", "inspect", f"oci:{tmp_path / 'out'}:b1"])
    assert out.exit_code == 0 and "Detection Order:" in out.stdout and "example/dep    (optional)" in out.stdout


def test_compose_from_registry_fetches_no_layers(tmp_path: Path, registry, fresh_repo: str) -> None:
    from ocibuild.ledger.db import Ledger
    from ocibuild.store.open import open_reference

    info = write_base_builder(tmp_path / "base")
    skopeo_copy(info.ref, f"docker://{registry.ref(fresh_repo, 'builder')}", registry)
    store, identifier = open_reference(registry.ref(fresh_repo, "builder"))
    mark = registry.log_mark()
    builder = open_builder(store, identifier)
    ledger = Ledger(tmp_path / "ledger.db")
    scratch = LayoutStore(tmp_path / "scratch", create=True)
    result = compose_builder(builder, buildpacks=[BUILDPACKS / "hello"], scratch_store=scratch, ledger=ledger)
    blob_gets = [e for e in registry.access_since(mark) if "/blobs/" in e.path and e.method == "GET"]
    assert [e.path.rsplit("/", 1)[-1] for e in blob_gets] == [info.config.digest]
    for layer in info.layers:
        assert ledger.sources(layer.digest) == [f"{registry.host}/{fresh_repo}"]
        assert not scratch.has_blob(next(d for d in result.manifest.layers if str(d.digest) == layer.digest))


def test_builder_create_to_registry_mounts_base_layers(tmp_path: Path, registry, fresh_repo: str) -> None:
    from ocibuild.cnb.builder_config import create_builder, read_builder_config
    from ocibuild.store.open import open_reference

    build = write_image(tmp_path / "build", [{"etc/os-release": b"ID=test\n"}], tag="build",
                        config={"Env": ["CNB_USER_ID=1000", "CNB_GROUP_ID=1000"]})
    skopeo_copy(build.ref, f"docker://{registry.ref(fresh_repo + '-build', 'latest')}", registry)
    config = tmp_path / "builder.toml"
    config.write_text(f'[[buildpacks]]\nuri = "{BUILDPACKS / "hello"}"\n[[order]]\n[[order.group]]\nid = "example/hello"\n'
                      f'[build]\nimage = "{registry.ref(fresh_repo + "-build", "latest")}"\n'
                      f'[[run.images]]\nimage = "registry.example/run:1"\n')
    mark = registry.log_mark()
    result, desc = create_builder(read_builder_config(config), registry.ref(fresh_repo, "builder"))
    entries = registry.access_since(mark)
    base_layer = build.layers[0].digest
    assert not [e for e in entries if e.method == "GET" and e.path.endswith(base_layer)]
    assert any(e.method == "POST" and "mount=" + base_layer.replace(":", "%3A") in e.uri and e.status == 201 for e in entries)
    store, identifier = open_reference(registry.ref(fresh_repo, "builder"))
    b = open_builder(store, identifier)
    assert b.digest == desc.digest == result.digest
    assert all(store.has_blob(layer) for layer in b.manifest.layers)
