"""Reproducible tars and layer compression."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from ocibuild.errors import UnsafeContent
from ocibuild.layer import NORMALIZED_MTIME, TarEntry, TarOptions, pack_mode, write_layer
from ocibuild.layer.compress import compress_stream
from ocibuild.layer.tarwriter import tar_source
from ocibuild.oci import mediatype as mt


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o700)
    (root / "etc").mkdir()
    (root / "etc" / "conf").write_text("a=1\n")
    os.chmod(root / "etc" / "conf", 0o600)
    (root / "etc" / "link").symlink_to("conf")
    os.link(root / "etc" / "conf", root / "etc" / "hard")
    (root / "a-b").write_text("dash")
    (root / ("x" * 120)).write_text("long name")
    (root / "naïve.txt").write_text("unicode")
    (root / "suid").write_text("s")
    os.chmod(root / "suid", 0o4755)
    return root


def _text(n: int, seed: int) -> bytes:
    """Compressible pseudo-text, made at C speed."""
    table = bytes((b"abcdefghijklmno \n" * 16)[:256])
    return random.Random(seed).randbytes(n).translate(table)


def _tar_bytes(source, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    tar_source(source, buf, **kw)
    return buf.getvalue()


def test_same_tree_same_digest_whatever_mtime_and_owner(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    r1 = write_layer(a, tmp_dir=tmp_path)
    r2 = write_layer(a, tmp_dir=tmp_path)
    assert r1.path.read_bytes() == r2.path.read_bytes() and r1.digest == r2.digest
    for p in [a, *a.rglob("*")]:
        os.utime(p, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
        os.lchown(p, 1234, 5678)
    os.chmod(a / "suid", 0o4755)  # chown clears setuid; the mode itself is content
    r3 = write_layer(a, tmp_dir=tmp_path)
    assert (r3.digest, r3.diff_id) == (r1.digest, r1.diff_id)
    # digest and diffID are the hashes of the blob and of the uncompressed tar
    blob = r1.path.read_bytes()
    assert r1.descriptor.size == len(blob) and r1.digest.encoded == hashlib.sha256(blob).hexdigest()
    plain = gzip.decompress(blob)
    assert r1.diff_id.encoded == hashlib.sha256(plain).hexdigest() and r1.uncompressed_size == len(plain)
    assert r1.descriptor.media_type == mt.OCI_LAYER_GZIP
    # gzip header: no mtime, no file name
    assert blob[4:8] == b"\0\0\0\0" and blob[3] & 0x08 == 0


def test_tar_normalisation(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    data = _tar_bytes(a)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert not any(n.startswith("/") for n in names)
    assert all(m.mtime == NORMALIZED_MTIME and m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.uname == "" and m.gname == "" for m in members)
    by = {m.name: m for m in members}
    assert by["etc/link"].issym() and by["etc/link"].linkname == "conf"
    # the hard link group is kept: the first path in sorted order holds the data
    assert by["etc/conf"].isreg() and by["etc/hard"].islnk() and by["etc/hard"].linkname == "etc/conf"
    assert by["suid"].mode == 0o4755  # keep_mode is the default
    assert "x" * 120 in by and "naïve.txt" in by
    # PAX only where needed: the plain entries are USTAR headers
    raw = {data[i:i + 512][:100].rstrip(b"\0"): data[i + 257:i + 263] for i in range(0, len(data), 512)}
    assert raw[b"bin/tool"] == b"ustar\x00"
    assert b"././@PaxHeader" in data
    assert b"GNU" not in data[:2048]


def test_pack_mode_policy_and_setid_strip(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    data = _tar_bytes(a, options=TarOptions(mode_policy=pack_mode, uid=1000, gid=1001, strip_setid=True))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        by = {m.name: m for m in tf.getmembers()}
    assert by["bin"].mode == 0o755 and by["bin/tool"].mode == 0o755
    assert by["etc/conf"].mode == 0o644 and by["a-b"].mode == 0o644
    assert by["suid"].mode == 0o755
    assert by["bin/tool"].uid == 1000 and by["bin/tool"].gid == 1001


def test_prefix_parents_and_in_memory_entries(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    data = _tar_bytes(a, prefix="/cnb/buildpacks/x/1.0")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
    assert names[:4] == ["cnb", "cnb/buildpacks", "cnb/buildpacks/x", "cnb/buildpacks/x/1.0"]
    assert "cnb/buildpacks/x/1.0/bin/tool" in names
    no_parents = _tar_bytes(a, prefix="cnb/buildpacks/x/1.0", include_parents=False)
    with tarfile.open(fileobj=io.BytesIO(no_parents)) as tf:
        assert tf.getnames()[0] == "cnb/buildpacks/x/1.0"

    entries = [TarEntry.file("/cnb/order.toml", b"[[order]]\n"), TarEntry.dir("cnb"),
               TarEntry.symlink("cnb/lifecycle", "/lifecycle", uid=1000)]
    data = _tar_bytes(entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        by = {m.name: m for m in tf.getmembers()}
        assert tf.extractfile(by["cnb/order.toml"]).read() == b"[[order]]\n"  # type: ignore[union-attr]
    assert list(by) == ["cnb", "cnb/lifecycle", "cnb/order.toml"]
    assert by["cnb/lifecycle"].uid == 1000 and by["cnb/order.toml"].uid == 0
    with pytest.raises(UnsafeContent):
        TarEntry.file("../escape", b"")


def test_existing_tarball_is_renormalised(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    messy = tmp_path / "messy.tar.gz"
    with tarfile.open(messy, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for p in sorted(a.rglob("*"), reverse=True):  # unsorted, real mtimes and owners
            tf.add(p, arcname="./" + str(p.relative_to(a)), recursive=False)
    from_dir = write_layer(a, tmp_dir=tmp_path)
    from_tar = write_layer(messy, tmp_dir=tmp_path)
    with tarfile.open(from_tar.path) as tf:
        by = {m.name: m for m in tf.getmembers()}
    assert by["etc/conf"].isreg() and by["etc/hard"].islnk()
    assert (from_tar.diff_id, from_tar.digest) == (from_dir.diff_id, from_dir.digest)


def test_compressions_and_thread_independence(tmp_path: Path) -> None:
    payload = _text(5_000_000, 7)  # several 1 MiB blocks
    entries = [TarEntry.file("data.txt", payload)]
    one = write_layer(entries, tmp_dir=tmp_path, threads=1)
    two = write_layer(entries, tmp_dir=tmp_path, threads=2)
    assert one.path.read_bytes() == two.path.read_bytes()
    with tarfile.open(one.path) as tf:
        assert tf.extractfile("data.txt").read() == payload  # type: ignore[union-attr]

    z = write_layer(entries, tmp_dir=tmp_path, media_type=mt.OCI_LAYER_ZSTD)
    plain_z = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(z.path.read_bytes())).read()
    assert hashlib.sha256(plain_z).hexdigest() == z.diff_id.encoded == one.diff_id.encoded
    none = write_layer(entries, tmp_dir=tmp_path, media_type=mt.OCI_LAYER)
    assert none.digest == none.diff_id == one.diff_id
    docker = write_layer(entries, tmp_dir=tmp_path, media_type=mt.DOCKER_LAYER)
    assert docker.descriptor.media_type == mt.DOCKER_LAYER and docker.digest == one.digest


def test_failed_producer_leaves_no_temp_file(tmp_path: Path) -> None:
    def boom(out):  # type: ignore[no-untyped-def]
        out.write(b"x" * 1000)
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        compress_stream(boom, tmp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_gzip_at_least_twice_as_fast_as_gzip_6(tmp_path: Path) -> None:
    payload = _text(16_000_000, 3)
    src = tmp_path / "data"
    src.write_bytes(payload)

    def produce(out):  # type: ignore[no-untyped-def]
        with open(src, "rb") as fh:
            while chunk := fh.read(1 << 20):
                out.write(chunk)

    t0 = time.perf_counter()
    ours = compress_stream(produce, tmp_dir=tmp_path)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["gzip", "-6", "-c", str(src)], stdout=subprocess.DEVNULL, check=True)
    t_gzip = time.perf_counter() - t0
    assert gzip.decompress(ours.path.read_bytes()) == payload
    assert t_gzip / t_ours >= 2, f"ocibuild {t_ours:.2f}s vs gzip -6 {t_gzip:.2f}s"
