"""crane's verbs through the CLI against the real registry: tag, catalog, blob, export, flatten, validate.

skopeo and umoci judge the results; the access log shows what went over the wire.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from support.schemas import DEFAULT_SCHEMA_DIR
from support.images import write_busybox_image, write_image
from support.registry import RegistryServer
from support.tools import run
from typer.testing import CliRunner

from ocibuild.cli.main import app
from ocibuild.store.layout import LayoutStore

runner = CliRunner()

SCHEMAS = DEFAULT_SCHEMA_DIR  # shipped in the repository (fixtures/image-spec-schema)


def cli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = cli(*args, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def push(registry: RegistryServer, src: str, repo: str, tag: str) -> str:
    return ok(*registry.ocibuild_args(), "copy", src, registry.ref(repo, tag)).strip().splitlines()[-1]


#: Three layers: a base tree, then a whiteout of a file and an opaque directory, then a file over a dir.
LAYERS = (
    {"etc/keep": b"keep\n", "etc/gone": b"gone\n", "opt/old/a": b"a\n", "opt/old/b": b"b\n", "srv/dir/x": b"x\n"},
    {"etc/.wh.gone": b"", "opt/old/.wh..wh..opq": b"", "opt/old/new": b"new\n", "etc/keep": b"keep v2\n"},
    {"srv/dir": b"now a file\n"},
)


@pytest.fixture
def layered(tmp_path: Path):
    return write_image(tmp_path / "layered", list(LAYERS), tag="v1")


def _tar_files(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for info in tf:
            f = tf.extractfile(info) if info.isreg() else None
            out[info.name] = f.read() if f is not None else None
    return out


def _rootfs(bundle: Path) -> dict[str, bytes | None]:
    root = bundle / "rootfs"
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_tag_moves_no_blob(registry: RegistryServer, fresh_repo: str, tmp_path: Path) -> None:
    info = write_busybox_image(tmp_path / "src", "v1")
    digest = push(registry, info.ref, fresh_repo, "v1")
    mark = registry.log_mark()
    assert ok(*registry.ocibuild_args(), "tag", registry.ref(fresh_repo, "v1"), "release").strip() == digest
    entries = registry.access_since(mark)
    assert not [e for e in entries if "/blobs/" in e.path], entries
    assert [e.method for e in entries if e.method in ("PUT", "POST", "PATCH")] == ["PUT"]
    assert skopeo_digest(registry, fresh_repo, "release") == digest
    bad = cli(*registry.ocibuild_args(), "tag", registry.ref(fresh_repo, "v1"), "no/slashes")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1


def skopeo_digest(registry: RegistryServer, repo: str, tag: str) -> str:
    out = run(["skopeo", "inspect", "--tls-verify=false", registry.skopeo_ref(repo, tag)], check=True).stdout
    return json.loads(out)["Digest"]


def test_catalog_follows_link_pages(registry: RegistryServer, fresh_repo: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ocibuild.store.registry.store as store_module

    info = write_image(tmp_path / "src", tag="v1")
    repos = [f"{fresh_repo}-{i}" for i in range(3)]
    for repo in repos:
        push(registry, info.ref, repo, "v1")
    monkeypatch.setattr(store_module, "_TAGS_PAGE", 2)  # pages of two: the registry sends Link headers
    mark = registry.log_mark()
    names = json.loads(ok(*registry.ocibuild_args(), "catalog", "--json", registry.host))
    assert set(repos) <= set(names) and names == sorted(names)
    catalog_calls = [e for e in registry.access_since(mark) if e.path == "/v2/_catalog"]
    assert len(catalog_calls) >= 2  # more than one page was asked for
    listing = direct_catalog(registry)
    assert set(listing) == set(names)


def direct_catalog(registry: RegistryServer) -> list[str]:
    """The whole catalog, fetched directly (no ocibuild code)."""
    resp = registry.get("/v2/_catalog?n=1000")
    return resp.json()["repositories"]


def test_blob_streams_one_verified_blob(registry: RegistryServer, fresh_repo: str, tmp_path: Path) -> None:
    info = write_busybox_image(tmp_path / "src", "v1")
    push(registry, info.ref, fresh_repo, "v1")
    layer = info.layers[0]
    out = tmp_path / "layer.tgz"
    ok(*registry.ocibuild_args(), "blob", f"{registry.ref(fresh_repo)}@{layer.digest}", "-o", str(out))
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == layer.digest
    stdout = cli(*registry.ocibuild_args(), "blob", f"{registry.ref(fresh_repo)}@{info.config.digest}")
    assert stdout.stdout_bytes == info.config_bytes
    # a layout blob whose file was damaged: exit 1, one line, and -o leaves nothing
    store = LayoutStore(tmp_path / "src")
    path = store.blob_path(store.resolve("v1").digest.__class__.parse(layer.digest))
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = cli("blob", f"oci:{tmp_path / 'src'}@{layer.digest}", "-o", str(tmp_path / "bad.tgz"))
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.tgz", "src"]
    usage = cli("blob", registry.ref(fresh_repo, "v1"))
    assert usage.exit_code == 2 and "@DIGEST" in usage.stderr


def test_export_applies_whiteouts_like_umoci(tmp_path: Path, layered) -> None:
    out = tmp_path / "fs.tar"
    ok("export", layered.ref, str(out))
    files = _tar_files(out.read_bytes())
    assert files["etc/keep"] == b"keep v2\n" and files["opt/old/new"] == b"new\n"
    assert files["srv/dir"] == b"now a file\n"
    for hidden in ("etc/gone", "opt/old/a", "opt/old/b", "srv/dir/x"):
        assert hidden not in files
    assert not [n for n in files if ".wh." in n]
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--rootless", "--image", f"{layered.layout}:v1", bundle], check=True)
    assert _rootfs(bundle) == {k: v for k, v in files.items()}
    # to stdout too, byte for byte the same
    assert cli("export", layered.ref, "-").stdout_bytes == out.read_bytes()


def test_flatten_pushes_a_one_layer_image(registry: RegistryServer, fresh_repo: str, tmp_path: Path, layered) -> None:
    push(registry, layered.ref, fresh_repo, "v1")
    digest = ok(*registry.ocibuild_args(), "flatten", registry.ref(fresh_repo, "v1"),
                "-t", registry.ref(fresh_repo, "flat")).strip()
    assert skopeo_digest(registry, fresh_repo, "flat") == digest
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", registry.skopeo_ref(fresh_repo, "flat"),
         f"oci:{tmp_path / 'flat'}:f"], check=True)
    cfg = json.loads(run(["skopeo", "inspect", "--config", f"oci:{tmp_path / 'flat'}:f"], check=True).stdout)
    assert len(cfg["rootfs"]["diff_ids"]) == 1 and len(cfg["history"]) == 1
    run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'flat'}:f", tmp_path / "b1"], check=True)
    run(["umoci", "unpack", "--rootless", "--image", f"{layered.layout}:v1", tmp_path / "b2"], check=True)
    assert _rootfs(tmp_path / "b1") == _rootfs(tmp_path / "b2")
    ok(*registry.ocibuild_args(), "validate", registry.ref(fresh_repo, "flat"))


def test_validate_reports_damage(tmp_path: Path, layered) -> None:
    good = cli("validate", "--json", "--schemas", str(SCHEMAS), layered.ref)
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    assert report["ok"] and report["schemas"].startswith("checked") and len(report["checked"]) == 5
    store = LayoutStore(layered.layout)
    config_path = store.blob_path(store.resolve("v1").digest.parse(layered.config.digest))
    doc = json.loads(config_path.read_bytes())
    doc["rootfs"]["diff_ids"][0] = "sha256:" + "1" * 64
    raw = json.dumps(doc).encode()
    # a config that hashes right but lies about a diff_id: a new, self-consistent manifest around it
    from ocibuild.oci.descriptor import Descriptor
    from ocibuild.oci.manifest import Manifest
    from ocibuild.store.base import put_bytes

    cfg = Descriptor.for_bytes("application/vnd.oci.image.config.v1+json", raw)
    put_bytes(store, cfg, raw)
    manifest = Manifest.parse(layered.manifest_bytes)
    lying = Manifest.build(cfg, manifest.layers)
    store.put_manifest(lying.descriptor(), lying.raw, tag="lying")
    bad = cli("validate", f"oci:{layered.layout}:lying")
    assert bad.exit_code == 1 and "diff_id" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "FAIL" in bad.stdout
    # a damaged layer file
    layer_path = store.blob_path(manifest.layers[1].digest)
    data = bytearray(layer_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer_path.write_bytes(bytes(data))
    bad = cli("validate", layered.ref)
    assert bad.exit_code == 1 and str(manifest.layers[1].digest) in bad.stderr
    fast = cli("validate", "--fast", layered.ref)
    assert fast.exit_code == 0  # presence and size only


def test_validate_a_whole_layout(tmp_path: Path) -> None:
    from support.copyimages import index

    store = LayoutStore(tmp_path / "l", create=True)
    index(store, "v", tag="all")
    write_image(tmp_path / "l", tag="single")
    report = json.loads(ok("validate", "--json", f"oci:{tmp_path / 'l'}"))
    assert report["ok"] and sum(line.startswith("manifest ") for line in report["checked"]) == 4
    empty = LayoutStore(tmp_path / "e", create=True)
    result = cli("validate", f"oci:{empty.path}")
    assert result.exit_code == 1 and "no image" in result.stderr


def test_flatten_an_index_flattens_each_image(tmp_path: Path) -> None:
    from support.copyimages import index

    store = LayoutStore(tmp_path / "l", create=True)
    index(store, "v", tag="all")
    ok("flatten", f"oci:{store.path}:all", "-t", f"oci:{tmp_path / 'flat'}:all")
    raw = json.loads(run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'flat'}:all"], check=True).stdout)
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]
    for entry in raw["manifests"]:
        child = json.loads(ok("manifest", f"oci:{tmp_path / 'flat'}@{entry['digest']}"))
        assert len(child["layers"]) == 1
    run(["skopeo", "copy", "--quiet", "--all", f"oci:{tmp_path / 'flat'}:all", f"oci:{tmp_path / 'c'}:x"], check=True)
    ok("validate", f"oci:{tmp_path / 'flat'}:all")
