"""skopeo's ``oci-archive:`` and ``docker-archive:`` transports through the CLI, judged by skopeo and umoci.

Every archive ocibuild writes is read by skopeo (and the reverse), digests compared on both sides;
bad input is one line, the right exit code, and nothing written.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from support.images import write_busybox_image, write_image
from support.copyimages import index
from support.registry import RegistryServer
from support.tools import run
from typer.testing import CliRunner

from ocibuild.cli.main import app
from ocibuild.store.layout import LayoutStore

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def skopeo_json(*args: str) -> dict:
    return json.loads(run(["skopeo", *args], check=True).stdout)


@pytest.fixture
def busybox(tmp_path: Path):
    return write_busybox_image(tmp_path / "src", "v1")


def test_oci_archive_written_by_ocibuild_is_read_by_skopeo_and_back(tmp_path: Path, busybox) -> None:
    archive = tmp_path / "app.tar"
    assert ok("copy", busybox.ref, f"oci-archive:{archive}:t1").strip().endswith(busybox.manifest.digest)
    with tarfile.open(archive) as tf:
        names = sorted(tf.getnames())
    assert names[-2:] == ["index.json", "oci-layout"] and f"blobs/sha256/{busybox.layers[0].digest[7:]}" in names
    raw = run(["skopeo", "inspect", "--raw", f"oci-archive:{archive}:t1"], check=True).stdout
    assert raw.encode() == busybox.manifest_bytes
    run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}:t1", f"oci:{tmp_path / 'by-skopeo'}:s"], check=True)
    assert LayoutStore(tmp_path / "by-skopeo").resolve("s").digest.__str__() == busybox.manifest.digest
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'by-skopeo'}:s", bundle], check=True)
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()

    # skopeo's own oci-archive, read by ocibuild: tags, digest, a bare name for its one image
    theirs = tmp_path / "theirs.tar"
    run(["skopeo", "copy", "--quiet", busybox.ref, f"oci-archive:{theirs}:x"], check=True)
    assert ok("tags", f"oci-archive:{theirs}").split() == ["x"]
    assert ok("digest", f"oci-archive:{theirs}").strip() == busybox.manifest.digest
    ok("copy", f"oci-archive:{theirs}:x", f"oci:{tmp_path / 'back'}:1")
    assert str(LayoutStore(tmp_path / "back").resolve("1").digest) == busybox.manifest.digest


def test_docker_archive_written_by_ocibuild_is_read_by_skopeo(tmp_path: Path, busybox) -> None:
    archive = tmp_path / "d.tar"
    ok("copy", busybox.ref, f"docker-archive:{archive}:team/app:1")
    with tarfile.open(archive) as tf:
        listing = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert listing[0]["RepoTags"] == ["team/app:1"]
    info = skopeo_json("inspect", f"docker-archive:{archive}:team/app:1")
    assert info["Layers"] == list(busybox.diff_ids)  # skopeo serves the layers decompressed: their diff_ids
    run(["skopeo", "copy", "--quiet", f"docker-archive:{archive}", f"oci:{tmp_path / 'sk'}:1"], check=True)
    cfg = skopeo_json("inspect", "--config", f"oci:{tmp_path / 'sk'}:1")
    assert cfg["rootfs"]["diff_ids"] == list(busybox.diff_ids)
    # ocibuild reads its own archive back to the very same image (the layer is kept as it came)
    assert ok("digest", f"docker-archive:{archive}:team/app:1").strip() == busybox.manifest.digest
    assert ok("digest", f"docker-archive:{archive}:@0").strip() == busybox.manifest.digest


def test_docker_archive_written_by_skopeo_is_read_by_ocibuild(tmp_path: Path, busybox, registry: RegistryServer,
                                                               fresh_repo: str) -> None:
    archive = tmp_path / "s.tar"
    run(["skopeo", "copy", "--quiet", busybox.ref, f"docker-archive:{archive}:app:2"], check=True)
    assert ok("tags", f"docker-archive:{archive}").split() == ["app:2"]
    inspected = json.loads(ok("inspect", "--json", f"docker-archive:{archive}:docker.io/library/app:2"))
    assert [layer["mediaType"] for layer in inspected["layers"]] == ["application/vnd.oci.image.layer.v1.tar"]
    assert [layer["digest"] for layer in inspected["layers"]] == list(busybox.diff_ids)
    # streamed into a registry, verified on the way; skopeo reads it from there
    ok(*registry.ocibuild_args(), "copy", f"docker-archive:{archive}:app:2", registry.ref(fresh_repo, "2"))
    cfg = skopeo_json("inspect", "--tls-verify=false", "--config", registry.skopeo_ref(fresh_repo, "2"))
    assert cfg["rootfs"]["diff_ids"] == list(busybox.diff_ids)
    ok("unpack", f"docker-archive:{archive}", str(tmp_path / "rootfs"))
    assert (tmp_path / "rootfs" / "bin" / "busybox").is_file()


def test_an_archive_name_never_reaches_a_registry(tmp_path: Path) -> None:
    """``oci-archive:x.tar`` used to parse as the Docker Hub image ``oci-archive`` tag ``x.tar``."""
    started = time.monotonic()
    result = cli("copy", f"oci-archive:{tmp_path / 'missing.tar'}", f"oci:{tmp_path / 'y'}:1")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"ocibuild: error: oci-archive:{tmp_path / 'missing.tar'}: no such file"
    assert time.monotonic() - started < 2 and not (tmp_path / "y").exists()
    result = cli("inspect", f"docker-archive:{tmp_path / 'missing.tar'}:app:1")
    assert result.exit_code == 1 and "docker.io" not in result.stderr


def test_an_index_into_a_docker_archive_is_refused_and_nothing_written(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path / "multi", create=True)
    index(store, "m", tag="all")
    archive = tmp_path / "m.tar"
    archive.write_bytes(b"before")
    result = cli("copy", f"oci:{store.path}:all", f"docker-archive:{archive}")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--platform" in result.stderr
    assert archive.read_bytes() == b"before"  # the old file stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar", "multi"]  # no staging or temp file left
    ok("copy", "--platform", "linux/arm64", f"oci:{store.path}:all", f"docker-archive:{archive}:m:arm")
    assert skopeo_json("inspect", f"docker-archive:{archive}")["Architecture"] == "arm64"


def test_a_tampered_archive_fails_the_copy_and_writes_nothing(tmp_path: Path) -> None:
    info = write_image(tmp_path / "src", [{"a.txt": b"A" * 5000}], tag="v1")
    archive = tmp_path / "a.tar"
    ok("copy", info.ref, f"oci-archive:{archive}:v1")
    with tarfile.open(archive) as tf:
        member = tf.getmember(f"blobs/sha256/{info.layers[0].digest[7:]}")
    with open(archive, "r+b") as fh:
        fh.seek(member.offset_data + member.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = cli("copy", f"oci-archive:{archive}:v1", f"oci:{tmp_path / 'dst'}:v1")
    assert result.exit_code == 1 and "sha256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists() or LayoutStore(tmp_path / "dst").tags() == []  # no tag on a part
    result = cli("copy", f"oci-archive:{archive}:v1", f"oci-archive:{tmp_path / 'again.tar'}")
    assert result.exit_code == 1 and not (tmp_path / "again.tar").exists()


@pytest.mark.parametrize("args, code, words", [
    (("inspect", "oci-archive:"), 2, "needs a file"),
    (("inspect", "docker-archive:x.tar:@x"), 2, "@N"),
    (("inspect", "docker-archive:x.tar:app@sha256:" + "0" * 64), 2, "not a digest"),
    (("copy", "oci-archive:SRC", "docker-archive:OUT:@1"), 2, "@N"),
    (("copy", "oci-archive:SRC", "oci-archive:/nonexistent/dir/x.tar"), 1, "does not exist"),
    (("delete", "oci-archive:SRC:v1"), 1, "read as an archive"),
])
def test_bad_archive_input_is_one_line(tmp_path: Path, busybox, args, code, words) -> None:
    src = tmp_path / "src.tar"
    ok("copy", busybox.ref, f"oci-archive:{src}:v1")
    argv = [a.replace("SRC", str(src)).replace("OUT", str(tmp_path / "out.tar")) for a in args]
    result = cli(*argv)
    assert result.exit_code == code, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
    assert not (tmp_path / "out.tar").exists()


def test_append_reads_and_writes_archives(tmp_path: Path, busybox) -> None:
    src = tmp_path / "base.tar"
    ok("copy", busybox.ref, f"docker-archive:{src}:base:1")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "note.txt").write_text("hi\n")
    out = tmp_path / "out.tar"
    digest = ok("append", f"docker-archive:{src}", str(extra), "--tag", f"oci-archive:{out}:v2").strip()
    assert ok("digest", f"oci-archive:{out}:v2").strip() == digest
    cfg = skopeo_json("inspect", "--config", f"oci-archive:{out}:v2")
    assert len(cfg["rootfs"]["diff_ids"]) == 2 and cfg["rootfs"]["diff_ids"][0] == busybox.diff_ids[0]


def test_build_writes_into_both_archive_kinds(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    app_dir = Path(__file__).resolve().parent.parent / "examples" / "hello"
    env = dict(os.environ, OCIBUILD_SCRATCH=str(tmp_path / "scratch"))
    digests = []
    for image in (f"oci-archive:{tmp_path / 'app.tar'}:1", f"docker-archive:{tmp_path / 'd.tar'}:app:1"):
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "-q", "build", image, "--path", str(app_dir)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.strip().splitlines()[-1])
    assert skopeo_json("inspect", f"oci-archive:{tmp_path / 'app.tar'}:1")["Digest"] == digests[0]
    with tarfile.open(tmp_path / "d.tar") as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["app:1"]  # type: ignore[arg-type]
    assert ok("digest", f"docker-archive:{tmp_path / 'd.tar'}:app:1").strip() == digests[1]
    cfg = skopeo_json("inspect", "--config", f"docker-archive:{tmp_path / 'd.tar'}")
    assert "io.buildpacks.lifecycle.metadata" in cfg["config"]["Labels"]


def _docker_archive(path: Path, members: dict[str, bytes], listing: object) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in {**members, "manifest.json": json.dumps(listing).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("case", ["lying layer", "missing layer", "escaping name", "diff_id count"])
def test_hostile_docker_archives_fail_in_one_line(tmp_path: Path, case: str) -> None:
    import hashlib

    from support.images import layer_tar

    layer = layer_tar({"a.txt": b"A\n"})
    other = layer_tar({"a.txt": b"B\n"})
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest()]
    if case == "diff_id count":
        diff_ids.append(diff_ids[0])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    layer_name = {"missing layer": "nothere.tar", "escaping name": "../../etc/passwd"}.get(case, "l.tar")
    members = {"c.json": config, "l.tar": other if case == "lying layer" else layer}
    archive = tmp_path / "h.tar"
    _docker_archive(archive, members, [{"Config": "c.json", "RepoTags": ["h:1"], "Layers": [layer_name]}])
    result = cli("copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'dst'}:1")
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists() or LayoutStore(tmp_path / "dst").tags() == []
    assert not (tmp_path / "etc").exists()


def test_a_docker_archive_with_gzip_layers_under_any_name(tmp_path: Path) -> None:
    """go-containerregistry's tarball writes compressed layers as ``<hex>.tar.gz``: hashed once, verified."""
    import gzip
    import hashlib

    from support.images import layer_tar

    layer = layer_tar({"z.txt": b"zipped\n"})
    packed = gzip.compress(layer, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    archive = tmp_path / "g.tar"
    _docker_archive(archive, {"cfg.json": config, "layer-one.tar.gz": packed},
                    [{"Config": "cfg.json", "RepoTags": ["index.docker.io/library/g:1"], "Layers": ["layer-one.tar.gz"]}])
    assert ok("tags", f"docker-archive:{archive}").split() == ["g:1"]
    info = json.loads(ok("inspect", "--json", f"docker-archive:{archive}:g:1"))
    assert info["layers"][0]["digest"] == "sha256:" + hashlib.sha256(packed).hexdigest()
    assert info["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    ok("copy", f"docker-archive:{archive}:g:1", f"oci:{tmp_path / 'o'}:g")
    ok("validate", f"oci:{tmp_path / 'o'}:g")
    assert skopeo_json("inspect", "--config", f"oci:{tmp_path / 'o'}:g")["rootfs"]["diff_ids"] == json.loads(
        config)["rootfs"]["diff_ids"]
