"""A builder whose build image is not this machine's OS: busybox only, its own ``/etc/os-release`` and a
marker file, and a CNB user that is not 1000 (so a hard-coded uid fails). Written with ocibuild's own
layer, model and compose code from Debian's busybox-static binary and text files.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

from ocibuild.cnb.builder import RunImage, open_builder
from ocibuild.cnb.buildpack import load_buildpacks
from ocibuild.cnb.compose import compose_builder, parse_order
from ocibuild.layer import TarEntry, write_layer
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.layout import LayoutStore

from support.tools import require_tool

PROBE = Path(__file__).resolve().parents[2] / "fixtures" / "environment" / "probe"
IMAGE_PATH = "/opt/probe/bin:/usr/bin:/bin"
MARKER = "probe build image, not the host\n"
OS_RELEASE = 'ID=probeos\nNAME="Probe OS"\nVERSION_ID="1.0"\n'


def _rootfs_entries(uid: int, gid: int) -> list[TarEntry]:
    busybox = require_tool("busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [
        TarEntry.dir("bin"), TarEntry.dir("etc"), TarEntry.dir("tmp", mode=0o1777), TarEntry.dir("usr"),
        TarEntry.dir("usr/bin"), TarEntry.dir("opt"), TarEntry.dir("opt/probe"), TarEntry.dir("opt/probe/bin"),
        TarEntry.dir("home"), TarEntry.dir("home/cnb", uid=uid, gid=gid), TarEntry.dir("ro-volume"),
        TarEntry.file("bin/busybox", Path(busybox).read_bytes(), mode=0o755),
        TarEntry.file("etc/os-release", OS_RELEASE.encode()),
        TarEntry.file("etc/probe-marker", MARKER.encode()),
        TarEntry.file("etc/passwd", f"root:x:0:0:root:/root:/bin/sh\ncnb:x:{uid}:{gid}:cnb:/home/cnb:/bin/sh\n".encode()),
        TarEntry.file("etc/group", f"root:x:0:\ncnb:x:{gid}:\n".encode()),
    ]
    entries += [TarEntry.symlink(f"bin/{a}", "busybox") for a in sorted(set(applets)) if a != "busybox"]
    return entries


DISTRO_LABELS = {"io.buildpacks.base.distro.name": "probeos"}


def _base_image(store: LayoutStore, tag: str, uid: int, gid: int, labels: dict[str, str] | None = None) -> None:
    """The busybox image; ``labels`` replace the distro label (``{}``: target data from os-release only)."""
    layer = write_layer(_rootfs_entries(uid, gid), tmp_dir=store.tmp_dir)
    store.put_blob_file(layer.descriptor, layer.path)
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux", "created": "1980-01-01T00:00:01Z",
        "config": {"Env": [f"PATH={IMAGE_PATH}", f"CNB_USER_ID={uid}", f"CNB_GROUP_ID={gid}"],
                   "User": f"{uid}:{gid}", "Labels": DISTRO_LABELS if labels is None else labels},
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
        "history": [{"created": "1980-01-01T00:00:01Z", "created_by": "test: probe build image"}],
    })
    store.put_blob(config.descriptor(), io.BytesIO(config.raw))
    manifest = Manifest.build(config.descriptor(), [layer.descriptor])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)


def write_foreign_builder(layout: Path, *, uid: int = 1234, gid: int = 1234) -> str:
    """A layout holding ``base`` (the build and run image) and ``builder`` (base + the probe
    buildpack); returns the builder's reference ``oci:<layout>:builder``."""
    store = LayoutStore(layout, create=True)
    _base_image(store, "base", uid, gid)
    base = open_builder(store, "base", require_metadata=False)
    probe = load_buildpacks(PROBE)
    compose_builder(base, buildpacks=probe, order=parse_order([["test/probe"]]),
                    run_images=[RunImage(f"oci:{layout}:base")], stack_run_image=RunImage(f"oci:{layout}:base"),
                    description="probe builder", scratch_store=store, tag="builder")
    return f"oci:{layout}:builder"


def copy_tree_for(path: Path, uid: int, gid: int) -> None:
    """Give a test tree to another user (the unprivileged runs)."""
    shutil.chown(path, uid, gid)
    for sub in path.rglob("*"):
        if not sub.is_symlink():
            shutil.chown(sub, uid, gid)
