"""Compose: the builder ocibuild writes equals, label by label and file by file, what pack makes.

Every expected value below is written by hand from cnb.md §1-2 (buildpacks/pack Builder.Save,
toDistTar, dist labels), not produced by ocibuild.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from ocibuild.cnb.buildpack import load_buildpacks
from ocibuild.cnb.builder import open_builder
from ocibuild.cnb.compose import compose_builder
from ocibuild.cnb.descriptor import Group, GroupElement, Order
from ocibuild.oci.descriptor import Platform
from ocibuild.store.layout import LayoutStore

from support.builder_images import BASE_BP_DIFF_ID, BUILDPACKS, LIFECYCLE_MD, write_base_builder

EPOCH = 315532801
HELLO = BUILDPACKS / "hello"


def _entries(layout: Path, digest: str) -> list[dict]:
    """Every entry of a gzip layer blob, read with the standard library."""
    data = gzip.decompress((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            out.append({
                "name": m.name, "type": m.type, "mode": m.mode, "uid": m.uid, "gid": m.gid, "mtime": m.mtime,
                "uname": m.uname, "gname": m.gname, "linkname": m.linkname,
                "data": tar.extractfile(m).read() if m.isreg() else None,
            })
    return out


def _diff_id(layout: Path, digest: str) -> str:
    data = gzip.decompress((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _names(layout: Path, digest: str) -> list[str]:
    return [e["name"] for e in _entries(layout, digest)]


def _snapshot(layout: Path) -> dict[str, bytes]:
    return {str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*"))
            if p.is_file() and ".tmp" not in p.parts and not p.name.endswith(".lock")}


@pytest.fixture
def base(tmp_path: Path):
    info = write_base_builder(tmp_path / "base")
    store = LayoutStore(tmp_path / "base")
    return info, store, open_builder(store, "builder")


def _config(layout: Path, result) -> dict:
    return json.loads((layout / "blobs" / "sha256" / result.manifest.config.digest.encoded).read_bytes())


def test_labels_and_layers_match_pack(base, tmp_path: Path) -> None:
    info, store, builder = base
    scratch = LayoutStore(tmp_path / "scratch", create=True)
    result = compose_builder(
        builder,
        buildpacks=load_buildpacks(HELLO),
        order=Order((
            Group((GroupElement("example/hello"),)),
            Group((GroupElement("example/base", "1.0.0", optional=True),)),
        )),
        env={"B_VAR": "two", "A_VAR": "one"},
        run_image="registry.example/run:new",
        scratch_store=scratch,
    )
    root = tmp_path / "scratch"
    assert result.ephemeral
    # base layers referenced as they are, then dirs, hello, order, stack, run, env
    layers = [str(d.digest) for d in result.manifest.layers]
    assert layers[:2] == [b.digest for b in info.layers]
    new = layers[2:]
    assert len(new) == 6 == len(result.new_layers)
    assert _names(root, new[0]) == [  # pack's directories, in the layer writer's sorted order
        "cnb", "cnb/build-config", "cnb/build-config/env", "cnb/buildpacks", "cnb/extensions", "layers",
        "platform", "platform/env", "workspace",
    ]
    dirs = {e["name"]: e for e in _entries(root, new[0])}
    assert (dirs["workspace"]["uid"], dirs["workspace"]["gid"]) == (1000, 1001)
    assert (dirs["layers"]["uid"], dirs["layers"]["gid"]) == (1000, 1001)
    assert (dirs["cnb"]["uid"], dirs["cnb"]["gid"], dirs["cnb"]["mode"]) == (0, 0, 0o755)

    hello = _entries(root, new[1])
    assert [e["name"] for e in hello] == [
        "cnb/buildpacks/example_hello",
        "cnb/buildpacks/example_hello/0.0.1",
        "cnb/buildpacks/example_hello/0.0.1/bin",
        "cnb/buildpacks/example_hello/0.0.1/bin/build",
        "cnb/buildpacks/example_hello/0.0.1/bin/detect",
        "cnb/buildpacks/example_hello/0.0.1/buildpack.toml",
    ]
    modes = {e["name"].rsplit("0.0.1/", 1)[-1]: e["mode"] for e in hello}
    assert modes["bin"] == 0o755 and modes["bin/build"] == 0o755 and modes["bin/detect"] == 0o755
    assert modes["buildpack.toml"] == 0o644
    assert all(e["mtime"] == EPOCH and e["uid"] == 0 and e["gid"] == 0 and e["uname"] == "" and e["gname"] == ""
               for e in hello)
    assert hello[3]["data"] == (HELLO / "bin" / "build").read_bytes()

    order = _entries(root, new[2])
    assert [e["name"] for e in order] == ["cnb/order.toml"]
    assert (order[0]["mode"], order[0]["mtime"], order[0]["uid"]) == (0o644, EPOCH, 0)
    assert order[0]["data"].decode() == (
        '[[order]]\n\n  [[order.group]]\n    id = "example/hello"\n    version = "0.0.1"\n\n'
        '[[order]]\n\n  [[order.group]]\n    id = "example/base"\n    version = "1.0.0"\n    optional = true\n'
    )
    stack = _entries(root, new[3])
    assert [e["name"] for e in stack] == ["cnb/stack.toml"]
    assert stack[0]["data"].decode() == '[run-image]\n  image = "registry.example/run:new"\n'
    run = _entries(root, new[4])
    assert [e["name"] for e in run] == ["cnb/run.toml"]
    assert run[0]["data"].decode() == '[[images]]\n  image = "registry.example/run:new"\n'
    env = _entries(root, new[5])
    assert [(e["name"], e["data"], e["mode"]) for e in env] == [
        ("platform/env/A_VAR", b"one", 0o644), ("platform/env/B_VAR", b"two", 0o644),
    ]

    config = _config(root, result)
    labels = config["config"]["Labels"]
    hello_diff = _diff_id(root, new[1])
    assert json.loads(labels["io.buildpacks.builder.metadata"]) == {
        "description": "tiny test builder",
        "buildpacks": [
            {"id": "example/base", "version": "1.0.0"},
            {"id": "example/hello", "name": "Hello", "version": "0.0.1", "homepage": "https://example.com/hello"},
        ],
        "extensions": [],
        "stack": {"runImage": {"image": "registry.example/run:new", "mirrors": None}},
        "lifecycle": LIFECYCLE_MD,
        "createdBy": {"name": "ocibuild", "version": "0.1.0"},
        "images": [{"image": "registry.example/run:new", "mirrors": None}],
    }
    assert json.loads(labels["io.buildpacks.buildpack.layers"]) == {
        "example/base": {"1.0.0": {"api": "0.10", "layerDiffID": BASE_BP_DIFF_ID}},
        "example/hello": {"0.0.1": {
            "api": "0.10",
            "targets": [{"os": "linux", "arch": "amd64", "distros": [{"name": "ubuntu", "version": "22.04"}]}],
            "layerDiffID": hello_diff,
            "homepage": "https://example.com/hello",
            "name": "Hello",
        }},
    }
    # the label keeps the order as given (no resolved versions)
    assert json.loads(labels["io.buildpacks.buildpack.order"]) == [
        {"group": [{"id": "example/hello"}]},
        {"group": [{"id": "example/base", "version": "1.0.0", "optional": True}]},
    ]
    assert json.loads(labels["io.buildpacks.stack.mixins"]) == ["build:git"]
    assert labels["org.example.keep"] == "yes"
    assert labels["io.buildpacks.stack.id"] == "io.buildpacks.stacks.jammy"
    assert config["config"]["WorkingDir"] == "/layers"
    assert config["config"]["Env"] == ["PATH=/usr/bin:/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1001"]
    assert config["config"]["User"] == "1000:1001"
    assert config["rootfs"]["diff_ids"] == list(info.diff_ids) + [_diff_id(root, d) for d in new]
    assert len(config["history"]) == len(config["rootfs"]["diff_ids"])
    # the result is tagged in the scratch layout with a name derived from its digest
    assert result.tag == f"ocibuild.local/builder/{result.digest.encoded[:20]}"
    assert scratch.resolve(result.tag).digest == result.digest
    # base layers are referenced, not copied
    for b in info.layers:
        assert not (root / "blobs" / "sha256" / b.digest.split(":")[1]).exists()


def test_compose_is_deterministic(base, tmp_path: Path) -> None:
    _, _, builder = base
    digests = set()
    for name in ("s1", "s2", "s2"):
        scratch = LayoutStore(tmp_path / name, create=True)
        result = compose_builder(builder, buildpacks=[HELLO, BUILDPACKS / "dep"], env={"X": "1"},
                                 order=Order((Group((GroupElement("example/dep"),)),)), scratch_store=scratch)
        digests.add(result.digest)
    assert len(digests) == 1


def test_original_builder_in_scratch_layout_is_untouched(base, tmp_path: Path) -> None:
    info, store, builder = base
    # a second tag on the same manifest
    store.tag(builder.descriptor, "also-builder")
    before = _snapshot(info.layout)
    entries_before = [e.to_dict() for e in store.index_entries()]
    result = compose_builder(builder, buildpacks=[HELLO], env={"A": "1"}, scratch_store=store)
    assert result.ephemeral and result.digest != builder.digest
    after = _snapshot(info.layout)
    for path, data in before.items():
        if path != "index.json":
            assert after[path] == data, path
    entries_after = [e.to_dict() for e in store.index_entries()]
    assert entries_after[: len(entries_before)] == entries_before
    assert store.resolve("builder").digest == builder.digest
    assert store.resolve("also-builder").digest == builder.digest
    # the frozen snapshot is unchanged and equals a fresh read
    assert open_builder(store, "builder") == builder
    with pytest.raises(dataclasses.FrozenInstanceError):
        builder.name = "pack.local/builder/x"  # type: ignore[misc]


def test_nothing_to_add_means_no_compose(base, tmp_path: Path) -> None:
    info, store, builder = base
    before = _snapshot(info.layout)
    result = compose_builder(builder, scratch_store=store, order=Order((Group(()),)), env={})
    assert not result.ephemeral
    assert result.digest == builder.digest and result.tag is None and result.new_layers == ()
    assert _snapshot(info.layout) == before


def test_same_diff_id_is_not_added_again(tmp_path: Path) -> None:
    hello = load_buildpacks(HELLO)[0]
    blob = hello.build_layer(tmp_path)
    with blob.open() as f:
        tar = gzip.decompress(f.read())
    files = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for m in t:
            if m.isreg():
                files[m.name] = (t.extractfile(m).read(), m.mode)
    info = write_base_builder(
        tmp_path / "base",
        extra_layers_label={"example/hello": {"0.0.1": {"api": "0.10", "layerDiffID": str(blob.diff_id)}}},
    )
    store = LayoutStore(info.layout)
    builder = open_builder(store, "builder")
    result = compose_builder(builder, buildpacks=[HELLO], scratch_store=store)
    names = [_names(info.layout, str(d.digest)) for d in result.new_layers]
    assert not any(n.startswith("cnb/buildpacks/") for layer in names for n in layer)
    assert len(result.new_layers) == 4  # dirs, stack, run, env


def test_changed_diff_id_gets_a_whiteout_first(tmp_path: Path) -> None:
    info = write_base_builder(
        tmp_path / "base",
        extra_layers_label={"example/hello": {"0.0.1": {"api": "0.10", "layerDiffID": "sha256:" + "0" * 64}}},
    )
    store = LayoutStore(info.layout)
    builder = open_builder(store, "builder")
    result = compose_builder(builder, buildpacks=[HELLO], scratch_store=store)
    lists = [_names(info.layout, str(d.digest)) for d in result.new_layers]
    assert lists[1] == ["cnb/buildpacks/example_hello/.wh.0.0.1"]
    assert lists[2][:2] == ["cnb/buildpacks/example_hello", "cnb/buildpacks/example_hello/0.0.1"]
    labels = _config(info.layout, result)["config"]["Labels"]
    new_diff = _diff_id(info.layout, str(result.new_layers[2].digest))
    assert json.loads(labels["io.buildpacks.buildpack.layers"])["example/hello"]["0.0.1"]["layerDiffID"] == new_diff


def test_new_layers_sorted_by_id_at_version(base, tmp_path: Path) -> None:
    _, _, builder = base
    scratch = LayoutStore(tmp_path / "scratch", create=True)
    result = compose_builder(builder, buildpacks=[BUILDPACKS / "hello-v2", HELLO, BUILDPACKS / "dep"],
                             scratch_store=scratch)
    firsts = [_names(tmp_path / "scratch", str(d.digest))[1] for d in result.new_layers[1:4]]
    assert firsts == [
        "cnb/buildpacks/example_dep/1.0.0",
        "cnb/buildpacks/example_hello/0.0.1",
        "cnb/buildpacks/example_hello/0.0.2",
    ]


def test_composite_brings_dependencies(base, tmp_path: Path) -> None:
    _, _, builder = base
    scratch = LayoutStore(tmp_path / "scratch", create=True)
    result = compose_builder(builder, buildpacks=[BUILDPACKS / "meta"], validate=True,
                             order=Order((Group((GroupElement("example/meta"),)),)), scratch_store=scratch)
    labels = _config(tmp_path / "scratch", result)["config"]["Labels"]
    layers = json.loads(labels["io.buildpacks.buildpack.layers"])
    assert sorted(layers) == ["example/base", "example/dep", "example/hello", "example/meta"]
    assert layers["example/meta"]["1.0.0"]["order"] == [{"group": [
        {"id": "example/dep", "version": "1.0.0"}, {"id": "example/hello", "version": "0.0.1", "optional": True},
    ]}]
    order_file = _entries(tmp_path / "scratch", str(result.new_layers[4].digest))
    assert order_file[0]["name"] == "cnb/order.toml"
    assert 'id = "example/meta"\n    version = "1.0.0"' in order_file[0]["data"].decode()


def test_multi_arch_index_picks_the_platform(tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    amd = write_base_builder(layout, tag=None, architecture="amd64")  # type: ignore[arg-type]
    arm = write_base_builder(layout, tag=None, architecture="arm64", env=(
        "CNB_USER_ID=2000", "CNB_GROUP_ID=2000"))  # type: ignore[arg-type]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {**amd.manifest.descriptor(), "platform": {"os": "linux", "architecture": "amd64"}},
        {**arm.manifest.descriptor(), "platform": {"os": "linux", "architecture": "arm64"}},
    ]}
    raw = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    from ocibuild.oci.descriptor import Descriptor

    store = LayoutStore(layout)
    desc = Descriptor.for_bytes("application/vnd.oci.image.index.v1+json", raw)
    store.put_manifest(desc, raw, tag="multi")
    builder = open_builder(store, "multi", platform=Platform("linux", "arm64"))
    assert str(builder.digest) == arm.manifest.digest and builder.uid == 2000
    assert builder.index_descriptor is not None and builder.index_descriptor.digest == desc.digest
    result = compose_builder(builder, env={"A": "1"}, scratch_store=store)
    assert _config(layout, result)["architecture"] == "arm64"
    assert str(open_builder(store, "multi", platform=Platform("linux", "amd64")).digest) == amd.manifest.digest
