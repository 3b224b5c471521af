"""Hostile archives through the real CLI: image layers (``ocibuild unpack``), buildpack ``.tgz``,
``.cnb`` buildpackage files and buildpackage layouts (``ocibuild build --buildpack``).

Every case aims at a victim directory *outside* the target (``../`` climbs, absolute paths, links
to it, whiteouts through links). Whatever the outcome, the victim is untouched and nothing new
appears next to it. Cases that cannot be made safe (``..``, hard links out, devices, over-long
names) must fail with exactly one ``ocibuild: error:`` line and a non-zero exit; the rest (an
absolute path, a setuid bit, a symlink to the host) may be *contained* instead: written inside the
target, in a safe form (Docker semantics: ``/x`` is ``x``; setuid bits stripped).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from support.images import canonical, init_layout

EPOCH = 315532801
HOSTILE_COUNTS: Counter[str] = Counter()
REPO = Path(__file__).resolve().parent.parent

Entry = tuple[tarfile.TarInfo, "bytes | None"]


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, linkname: str = "", size: int = 0,
          devmajor: int = 0, devminor: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size, info.mtime = kind, mode, linkname, size, EPOCH
    info.devmajor, info.devminor = devmajor, devminor
    return info


def _file(name: str, data: bytes = b"pwned\n", mode: int = 0o644) -> Entry:
    return _info(name, mode=mode, size=len(data)), data


def hostile_entries(case: str, outside: Path) -> list[Entry]:
    """Entries aimed at ``outside`` (an absolute directory holding ``victim``)."""
    climb = "../" * 40 + str(outside).lstrip("/")
    if case == "dotdot":
        return [_file(f"{climb}/pwned")]
    if case == "dotdot-inside":  # ``a/../b`` stays inside, still refused: no layer needs it
        return [(_info("a", tarfile.DIRTYPE, mode=0o755), None), _file("a/../pwned")]
    if case == "absolute":
        return [_file(f"{outside}/pwned")]
    if case == "symlink-abs-write":
        return [(_info("esc", tarfile.SYMTYPE, mode=0o777, linkname=str(outside)), None), _file("esc/pwned"),
                _file("esc/victim", b"overwritten\n")]
    if case == "symlink-rel-write":
        return [(_info("esc", tarfile.SYMTYPE, mode=0o777, linkname=climb), None), _file("esc/pwned")]
    if case == "symlink-chain-write":
        return [(_info("l1", tarfile.SYMTYPE, mode=0o777, linkname="l2"), None),
                (_info("l2", tarfile.SYMTYPE, mode=0o777, linkname="../" * 10), None), _file("l1/pwned")]
    if case == "hardlink-abs":
        return [(_info("hl", tarfile.LNKTYPE, linkname=f"{outside}/victim"), None), _file("hl", b"overwritten\n")]
    if case == "hardlink-climb":
        return [(_info("hl", tarfile.LNKTYPE, linkname=f"{climb}/victim"), None)]
    if case == "hardlink-via-symlink":
        return [(_info("esc", tarfile.SYMTYPE, mode=0o777, linkname=climb), None),
                (_info("hl", tarfile.LNKTYPE, linkname="esc/victim"), None)]
    if case == "char-device":
        return [(_info("dev-null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None)]
    if case == "block-device":
        return [(_info("dev-sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0), None)]
    if case == "fifo":
        return [(_info("pipe", tarfile.FIFOTYPE, mode=0o644), None)]
    if case == "setuid":
        return [_file("suid", b"#!/bin/sh\n", 0o6755)]
    if case == "huge-name":
        return [_file("n" * 4000)]
    if case == "duplicates":
        return [_file("dup", b"first\n"), _file("dup", b"second\n"),
                (_info("dup2", tarfile.DIRTYPE, mode=0o755), None), _file("dup2", b"now a file\n")]
    if case == "whiteout-climb":
        return [_file(f"{climb}/.wh.victim", b"")]
    if case == "whiteout-through-symlink":
        return [(_info("esc", tarfile.SYMTYPE, mode=0o777, linkname=str(outside)), None),
                _file("esc/.wh.victim", b""), _file("esc/.wh..wh..opq", b"")]
    if case == "whiteout-through-climbing-symlink":
        return [(_info("esc", tarfile.SYMTYPE, mode=0o777, linkname=climb), None),
                _file("esc/.wh.victim", b""), _file("esc/.wh..wh..opq", b"")]
    raise AssertionError(case)


CASES = ("dotdot", "dotdot-inside", "absolute", "symlink-abs-write", "symlink-rel-write", "symlink-chain-write",
         "hardlink-abs", "hardlink-climb", "hardlink-via-symlink", "char-device", "block-device", "fifo", "setuid",
         "huge-name", "duplicates", "whiteout-climb", "whiteout-through-symlink", "whiteout-through-climbing-symlink")
#: Buildpack sources cost a build each: the cases that exercise a different defence there.
BUILD_CASES = ("dotdot", "absolute", "hardlink-climb", "char-device", "setuid", "duplicates",
               "whiteout-through-climbing-symlink")
#: Cases with no safe reading: the command must fail (one line, non-zero exit).
MUST_REFUSE = {"dotdot", "dotdot-inside", "hardlink-climb", "char-device", "block-device", "fifo", "huge-name",
               "whiteout-climb", "whiteout-through-climbing-symlink"}
#: pack's toDistTar leaves fifos and device nodes out of a buildpack's layer: dropped, not refused.
DROPPED_FROM_BUILDPACK_ARCHIVES = {"char-device", "block-device", "fifo"}


def tar_bytes(entries: list[Entry], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            if prefix:
                info = _renamed(info, prefix + info.name)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _renamed(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    out = _info(name, info.type, mode=info.mode, linkname=info.linkname, size=info.size,
                devmajor=info.devmajor, devminor=info.devminor)
    return out


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def write_raw_image(layout: Path, layer_tars: list[bytes], tag: str = "latest",
                    labels: dict[str, str] | None = None) -> str:
    """An image whose layers are exactly ``layer_tars`` (gzip), tagged in ``index.json``; returns its digest."""
    init_layout(layout)
    layers = []
    for t in layer_tars:
        gz = gzip.compress(t, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _blob(layout, gz),
                       "size": len(gz)})
    config = canonical({"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layer_tars]}})
    manifest = canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": _blob(layout, config), "size": len(config)},
                          "layers": layers})
    digest = _blob(layout, manifest)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": tag}, "platform": {"architecture": "amd64", "os": "linux"}}]}
    (layout / "index.json").write_bytes(canonical(index))
    return digest


def ocibuild(*args: str, scratch: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OCIBUILD_SCRATCH=str(scratch), XDG_CACHE_HOME=str(scratch / "xdg"))
    return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)


def tree(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    out: dict[str, tuple[str, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (oct(st.st_mode), p.read_bytes())
            else:
                out[rel] = (oct(st.st_mode), None)
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """The victim directory: ``victim`` (a file) and ``keep/`` (a directory); must stay exactly so."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_bytes(b"original\n")
    (d / "keep").mkdir()
    (d / "keep" / "file").write_bytes(b"keep\n")
    before = tree(d)
    yield d
    assert tree(d) == before, "the victim directory outside the target changed"


def check_outcome(proc: subprocess.CompletedProcess[str], case: str, where: str) -> str:
    """'refused' (one error line, non-zero exit) or 'contained' (success); anything else fails."""
    HOSTILE_COUNTS[where] += 1
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
        assert len(lines) == 1, proc.stderr
        assert proc.returncode in (1, 2)
        return "refused"
    must = MUST_REFUSE - DROPPED_FROM_BUILDPACK_ARCHIVES if where.startswith("buildpack .tgz") else MUST_REFUSE
    assert case not in must, f"{where}: {case} was accepted:\n{proc.stderr[-2000:]}"
    return "contained"


def assert_contained(root: Path, case: str) -> None:
    """After a successful extraction: the hostile entries landed inside ``root``, made safe."""
    for rel, (mode, _) in tree(root).items():
        if mode != "link":
            assert not int(mode, 8) & 0o6000, f"{rel} kept a setuid/setgid bit"
            assert stat.S_ISREG(int(mode, 8)) or stat.S_ISDIR(int(mode, 8)), f"{rel} is a device or fifo"
    if case == "duplicates":
        assert (root / "dup").read_bytes() == b"second\n" and (root / "dup2").read_bytes() == b"now a file\n"


# -- image layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_unpack_hostile_layer(tmp_path: Path, outside: Path, case: str) -> None:
    layout = tmp_path / "layout"
    entries = hostile_entries(case, outside)
    if case.startswith("whiteout-through"):  # the link comes in a lower layer, the whiteouts above it
        layers = [tar_bytes(entries[:1]), tar_bytes(entries[1:])]
    else:
        layers = [tar_bytes([_file("base", b"base\n")]), tar_bytes(entries)]
    write_raw_image(layout, layers)
    (tmp_path / "sibling").write_bytes(b"sibling\n")
    dest = tmp_path / "rootfs"
    proc = ocibuild("unpack", f"oci:{layout}:latest", str(dest), scratch=tmp_path / "scratch")
    outcome = check_outcome(proc, case, "image layer (unpack)")
    assert (tmp_path / "sibling").read_bytes() == b"sibling\n"
    assert {p.name for p in tmp_path.iterdir()} - {"scratch", "rootfs"} == {"layout", "outside", "sibling"}
    if outcome == "refused":
        assert not dest.exists(), "a refused unpack left the directory it created"
    if outcome == "contained":
        assert_contained(dest, case)
        if case == "absolute":
            assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"pwned\n"
        if case == "symlink-abs-write":  # the link is followed the way the container sees it: inside
            assert (dest / str(outside).lstrip("/") / "pwned").read_bytes() == b"pwned\n"


# -- buildpacks ------------------------------------------------------------------------------------
BP_FILES = [
    _file("buildpack.toml", b'api = "0.10"\n[buildpack]\nid = "hostile/bp"\nversion = "1.0.0"\n'
                            b'[[targets]]\nos = "linux"\n'),
    _file("bin/detect", b"#!/bin/sh\nexit 0\n", 0o755),
    _file("bin/build", b"#!/bin/sh\nexit 0\n", 0o755),
]
BP_DIRS: list[Entry] = [(_info("bin", tarfile.DIRTYPE, mode=0o755), None)]


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")
    return app


@pytest.fixture(scope="module")
def build_scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch directory for every build of the module (the default builder is composed once)."""
    return tmp_path_factory.mktemp("hostile-build-scratch")


def _build(tmp_path: Path, buildpack: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    return ocibuild("build", f"oci:{tmp_path}/out:app", "--path", str(_app(tmp_path)), "--buildpack", buildpack,
                    "--buildpack", "ocibuild/procfile@0.1.0", scratch=scratch)


def _after_build(tmp_path: Path, proc: subprocess.CompletedProcess[str], case: str, where: str) -> None:
    outcome = check_outcome(proc, case, where)
    for name in ("app",):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["Procfile"]
    if outcome == "refused":
        out = tmp_path / "out"
        assert not out.exists() or json.loads((out / "index.json").read_bytes())["manifests"] == []


@pytest.mark.parametrize("case", BUILD_CASES)
def test_build_with_hostile_buildpack_tgz(tmp_path: Path, outside: Path, build_scratch: Path, case: str) -> None:
    tgz = tmp_path / "bp.tgz"
    tgz.write_bytes(gzip.compress(tar_bytes(BP_DIRS + BP_FILES + hostile_entries(case, outside)), mtime=0))
    _after_build(tmp_path, _build(tmp_path, str(tgz), build_scratch), case, "buildpack .tgz (build)")


def _package_layout(layout: Path, case: str, outside: Path) -> None:
    prefix = "cnb/buildpacks/hostile_bp/1.0.0/"
    dirs = [(_info(p, tarfile.DIRTYPE, mode=0o755), None)
            for p in ("cnb", "cnb/buildpacks", "cnb/buildpacks/hostile_bp", prefix.rstrip("/"))]
    entries = dirs + [(_renamed(i, prefix + i.name), d) for i, d in BP_DIRS + BP_FILES + hostile_entries(case, outside)]
    # The same hostile entries also at the top of the layer, outside the buildpack's directory.
    entries += hostile_entries(case, outside)
    layer = tar_bytes(entries)
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": "hostile/bp", "version": "1.0.0"}),
        "io.buildpacks.buildpack.layers": json.dumps({"hostile/bp": {"1.0.0": {
            "api": "0.10", "targets": [{"os": "linux"}], "layerDiffID": sha256(layer)}}}),
    }
    write_raw_image(layout, [layer], tag="pkg", labels=labels)


@pytest.mark.parametrize("case", BUILD_CASES)
def test_build_with_hostile_cnb_file(tmp_path: Path, outside: Path, build_scratch: Path, case: str) -> None:
    layout = tmp_path / "pkg-layout"
    _package_layout(layout, case, outside)
    cnb = tmp_path / "bp.cnb"
    with tarfile.open(cnb, "w") as t:
        for path in sorted(layout.rglob("*")):
            t.add(str(path), arcname=str(path.relative_to(layout)), recursive=False)
    _after_build(tmp_path, _build(tmp_path, str(cnb), build_scratch), case, "buildpackage .cnb (build)")


@pytest.mark.parametrize("case", ["dotdot", "symlink-abs-write", "fifo", "whiteout-through-symlink"])
def test_build_with_hostile_buildpackage_layout(tmp_path: Path, outside: Path, build_scratch: Path, case: str) -> None:
    layout = tmp_path / "pkg-layout"
    _package_layout(layout, case, outside)
    _after_build(tmp_path, _build(tmp_path, f"oci:{layout}:pkg", build_scratch), case, "buildpackage layout (build)")


def test_cnb_file_with_hostile_layout_paths(tmp_path: Path, outside: Path, build_scratch: Path) -> None:
    """A .cnb whose own tar (the layout) has ``../`` and absolute member names: never extracted, never written."""
    layout = tmp_path / "pkg-layout"
    _package_layout(layout, "setuid", outside)
    cnb = tmp_path / "bp.cnb"
    with tarfile.open(cnb, "w") as t:
        for path in sorted(layout.rglob("*")):
            t.add(str(path), arcname=str(path.relative_to(layout)), recursive=False)
        info, data = _file("../" * 20 + str(outside).lstrip("/") + "/pwned")
        t.addfile(info, io.BytesIO(data))
        info, data = _file(f"{outside}/pwned2")
        t.addfile(info, io.BytesIO(data))
    _after_build(tmp_path, _build(tmp_path, str(cnb), build_scratch), "cnb-layout-paths", "buildpackage .cnb (build)")

def test_refused_unpack_into_an_existing_directory_deletes_nothing(tmp_path: Path, outside: Path) -> None:
    layout = tmp_path / "layout"
    write_raw_image(layout, [tar_bytes([_file("base", b"base\n")]), tar_bytes(hostile_entries("dotdot", outside))])
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"mine\n")
    proc = ocibuild("unpack", f"oci:{layout}:latest", str(dest), scratch=tmp_path / "scratch")
    assert check_outcome(proc, "dotdot", "image layer (unpack)") == "refused"
    assert (dest / "keep.txt").read_bytes() == b"mine\n"


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print what this module tried (run with ``-s``), for the hardening table."""
    yield
    print(f"\nhostile archives tried: {dict(HOSTILE_COUNTS)} total={sum(HOSTILE_COUNTS.values())}")
