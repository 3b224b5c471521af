"""Unpacking images (whiteouts, verification) and refusing hostile archives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ocibuild.errors import DigestMismatch, UnsafeContent
from ocibuild.layer import TarEntry, write_layer
from ocibuild.layer.extract import ExtractOptions, safe_extract, unpack_image
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.layout import LayoutStore, create_layout


def _image(store: LayoutStore, layers: list[list[TarEntry]], media_type: str = mt.OCI_LAYER_GZIP,
           diff_ids: list[str] | None = None) -> Manifest:
    descs, ids = [], []
    for entries in layers:
        r = write_layer(entries, media_type=media_type, tmp_dir=store.tmp_dir)
        store.put_blob_file(r.descriptor, r.path)
        descs.append(r.descriptor)
        ids.append(str(r.diff_id))
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids or ids}})
    store.put_blob(cfg.descriptor(), io.BytesIO(cfg.raw))
    m = Manifest.build(cfg.descriptor(), descs)
    store.put_manifest(m.descriptor(), m.raw)
    return m


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_text()
    return out


@pytest.mark.parametrize("media_type", [mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER])
def test_unpack_applies_layers_and_whiteouts(tmp_path: Path, media_type: str) -> None:
    store = create_layout(tmp_path / "layout")
    base = [TarEntry.file("etc/a", b"A"), TarEntry.file("etc/b", b"B"), TarEntry.file("opq/old", b"old"),
            TarEntry.file("opq/sub/deep", b"deep"), TarEntry.file("keep/x", b"x"), TarEntry.symlink("lnk", "etc/a")]
    top = [TarEntry.file("etc/.wh.a", b""), TarEntry.file("opq/.wh..wh..opq", b""),
           TarEntry.file("opq/-new", b"new"), TarEntry.file("opq/new", b"new"), TarEntry.file("etc/b", b"B2"),
           TarEntry.file("keep/.wh.missing", b""), TarEntry.file("gone/.wh.x", b"")]
    m = _image(store, [base, top], media_type)
    dest = tmp_path / "rootfs"
    unpack_image(store, m, dest)
    assert _tree(dest) == {
        "etc": "dir", "etc/b": "B2", "keep": "dir", "keep/x": "x", "lnk": "-> etc/a",
        "opq": "dir", "opq/-new": "new", "opq/new": "new",
    }


def test_unpack_verifies_diff_ids_and_digests(tmp_path: Path) -> None:
    store = create_layout(tmp_path / "layout")
    wrong = "sha256:" + "0" * 64
    m = _image(store, [[TarEntry.file("f", b"1")]], diff_ids=[wrong])
    with pytest.raises(DigestMismatch, match="config says"):
        unpack_image(store, m, tmp_path / "r1")
    m2 = _image(store, [[TarEntry.file("g", b"2" * 5000)]])
    blob = store.blob_path(m2.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[-3] ^= 1  # inside the gzip trailer (size field): the blob digest must catch it
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        unpack_image(store, m2, tmp_path / "r2")


def _hostile(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


HOSTILE = {
    "dotdot": [(_info("../evil"), b"x")],
    "dotdot-inside": [(_info("a/../../evil"), b"x")],
    "symlink-escape-then-write": [(_info("esc", tarfile.SYMTYPE, "../outside"), None), (_info("esc/evil"), b"x")],
    "symlink-chain-escape": [(_info("d", tarfile.DIRTYPE), None), (_info("d/up", tarfile.SYMTYPE, "../.."), None),
                             (_info("d/up/evil"), b"x")],
    "hardlink-outside": [(_info("h", tarfile.LNKTYPE, "../outside/secret"), None)],
    "hardlink-through-symlink": [(_info("esc", tarfile.SYMTYPE, "../outside"), None),
                                 (_info("h", tarfile.LNKTYPE, "esc/secret"), None)],
    "char-device": [(_info("dev/null", tarfile.CHRTYPE), None)],
    "fifo": [(_info("fifo", tarfile.FIFOTYPE), None)],
    "whiteout-escape": [(_info("esc", tarfile.SYMTYPE, "../outside"), None), (_info("esc/.wh.secret"), b"")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    dest = tmp_path / "dest"
    before = _tree(tmp_path)
    with pytest.raises(UnsafeContent) as err:
        safe_extract(_hostile(tmp_path, *HOSTILE[case]), dest, options=ExtractOptions(whiteouts=True))
    assert "\n" not in str(err.value) and "tar entry" in str(err.value)
    assert _tree(outside) == {"secret": "keep me"}
    assert not (tmp_path / "evil").exists()
    after = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("dest")}
    assert after == {k: v for k, v in before.items() if not k.startswith("dest")}


def test_absolute_paths_and_links_stay_inside(tmp_path: Path) -> None:
    """Docker's rule: ``/x`` means ``x``; an absolute symlink resolves against the root, as in the container."""
    dest = tmp_path / "dest"
    stream = _hostile(
        tmp_path,
        (_info("/etc/passwd"), b"root:x:0:0"),
        (_info("abs", tarfile.SYMTYPE, str(tmp_path / "outside")), None),
        (_info("abs/file"), b"in"),
        (_info("etc/hard", tarfile.LNKTYPE, "/etc/passwd"), None),
    )
    safe_extract(stream, dest)
    assert (dest / "etc" / "passwd").read_text() == "root:x:0:0"
    assert not (tmp_path / "outside").exists()
    inner = dest / str(tmp_path / "outside").lstrip("/") / "file"
    assert inner.read_text() == "in"
    assert os.stat(dest / "etc" / "hard").st_ino == os.stat(dest / "etc" / "passwd").st_ino


def test_setid_stripped_and_modes_applied(tmp_path: Path) -> None:
    stream = _hostile(tmp_path, (_info("bin", tarfile.DIRTYPE, mode=0o700), None),
                      (_info("bin/su", mode=0o4755), b"x"), (_info("bin/sg", mode=0o2750), b"y"))
    dest = tmp_path / "dest"
    safe_extract(stream, dest)
    assert stat.S_IMODE(os.stat(dest / "bin" / "su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "bin" / "sg").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dest / "bin").st_mode) == 0o700
    kept = tmp_path / "kept"
    stream.seek(0)
    safe_extract(stream, kept, options=ExtractOptions(keep_setid=True))
    assert stat.S_IMODE(os.stat(kept / "bin" / "su").st_mode) == 0o4755


def test_safe_extract_prefix_filter(tmp_path: Path) -> None:
    stream = _hostile(tmp_path, (_info("pkg/buildpack.toml"), b"api"), (_info("pkg/bin/build", mode=0o755), b"b"),
                      (_info("other/file"), b"o"))
    dest = tmp_path / "dest"
    n = safe_extract(stream, dest, prefix_filter="pkg")
    assert n == 2 and _tree(dest) == {"bin": "dir", "bin/build": "b", "buildpack.toml": "api"}
    # without whiteout processing, .wh. files are ordinary files (buildpack archives)
    stream = _hostile(tmp_path, (_info(".wh.x"), b"w"))
    safe_extract(stream, tmp_path / "plain")
    assert (tmp_path / "plain" / ".wh.x").read_text() == "w"


def test_relative_symlinked_parent_inside_is_followed(tmp_path: Path) -> None:
    """usrmerge: a later layer writing lib/x lands in usr/lib/x, as in the container."""
    stream = _hostile(tmp_path, (_info("usr/lib", tarfile.DIRTYPE, mode=0o755), None),
                      (_info("lib", tarfile.SYMTYPE, "usr/lib"), None), (_info("lib/x"), b"so"))
    dest = tmp_path / "dest"
    safe_extract(stream, dest)
    assert (dest / "usr" / "lib" / "x").read_text() == "so" and (dest / "lib").is_symlink()
