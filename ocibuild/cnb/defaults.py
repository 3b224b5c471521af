"""The embedded default builder: ``ocibuild build`` works with no registry and no builder to pull.

A busybox run image and build image are made from Debian's ``busybox-static`` binary with ocibuild's
own layer code, and the builder is composed from the build image plus the buildpacks shipped in
``ocibuild/cnb/defaults/buildpacks``. Everything is deterministic, so making them again gives the
same digests; they live tagged in the scratch layout (tags are GC roots).
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import ocibuild
from ocibuild.errors import UsageError
from ocibuild.layer import TarEntry, write_layer
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import ImageConfig, Manifest

DEFAULT_BUILDER = "ocibuild:default"
BUILDER_TAG = f"ocibuild.local/default-builder:{ocibuild.__version__}"
RUN_TAG = f"ocibuild.local/default-run:{ocibuild.__version__}"
BUILD_TAG = f"ocibuild.local/default-build:{ocibuild.__version__}"
CNB_UID = CNB_GID = 1000
BUSYBOX = "/bin/busybox"
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_buildpacks_dir() -> Path:
    return Path(str(resources.files("ocibuild.cnb") / "defaults" / "buildpacks"))


def _busybox_entries() -> list[TarEntry]:
    binary = shutil.which("busybox") or BUSYBOX
    if not Path(binary).is_file():
        raise UsageError("the default builder needs busybox-static (/bin/busybox): apt-get install busybox-static")
    applets = subprocess.run([binary, "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [
        TarEntry.dir("bin"), TarEntry.dir("etc"), TarEntry.dir("tmp", mode=0o1777),
        TarEntry.dir("home"), TarEntry.dir("home/cnb", uid=CNB_UID, gid=CNB_GID),
        TarEntry.file("bin/busybox", Path(binary).read_bytes(), mode=0o755),
        TarEntry.file("etc/passwd", f"root:x:0:0:root:/root:/bin/sh\ncnb:x:{CNB_UID}:{CNB_GID}:cnb:/home/cnb:/bin/sh\n".encode()),
        TarEntry.file("etc/group", f"root:x:0:\ncnb:x:{CNB_GID}:\n".encode()),
    ]
    entries += [TarEntry.symlink(f"bin/{name}", "busybox") for name in sorted(set(applets)) if name != "busybox"]
    return entries


def _base_image(store, tag: str, labels: dict[str, str], before_publish) -> None:  # noqa: ANN001
    layer = write_layer(_busybox_entries(), tmp_dir=store.tmp_dir)
    store.put_blob_file(layer.descriptor, layer.path, before_publish=before_publish)
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux", "created": "1980-01-01T00:00:01Z",
        "config": {
            "Env": [_PATH, f"CNB_USER_ID={CNB_UID}", f"CNB_GROUP_ID={CNB_GID}"],
            "User": f"{CNB_UID}:{CNB_GID}", "WorkingDir": "/", "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
        "history": [{"created": "1980-01-01T00:00:01Z", "created_by": "ocibuild: busybox-static"}],
    })
    store.put_blob(config.descriptor(), _bytes_io(config.raw), before_publish=before_publish)
    manifest = Manifest.build(config.descriptor(), [layer.descriptor])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag, before_publish=before_publish)


def _bytes_io(data: bytes):  # noqa: ANN202
    import io

    return io.BytesIO(data)


def ensure_default_builder(store, before_publish=None) -> tuple[str, str]:  # noqa: ANN001
    """Make (once) the default run image and builder in ``store``; returns (builder tag, run tag)."""
    from ocibuild.cnb.builder import RunImage, builder_from_parts, open_builder
    from ocibuild.cnb.buildpack import load_buildpacks
    from ocibuild.cnb.compose import compose_builder, parse_order

    tags = set(store.tags())
    if BUILDER_TAG in tags and RUN_TAG in tags:
        return BUILDER_TAG, RUN_TAG
    base_labels = {
        "io.buildpacks.base.distro.name": "busybox",
        "io.buildpacks.stack.id": "io.ocibuild.stacks.busybox",
        "org.opencontainers.image.description": "ocibuild default image: busybox-static",
    }
    with store.writer_lock():
        _base_image(store, RUN_TAG, base_labels, before_publish)
        _base_image(store, BUILD_TAG, base_labels, before_publish)
    base = open_builder(store, BUILD_TAG, require_metadata=False)
    base = builder_from_parts(BUILD_TAG, base.descriptor, base.manifest, base.config, store=store,
                              require_metadata=False)
    buildpacks = []
    for path in sorted(default_buildpacks_dir().iterdir()):
        buildpacks += load_buildpacks(path)
    compose_builder(
        base,
        buildpacks=buildpacks,
        order=parse_order([[bp.id for bp in buildpacks]]),
        run_images=[RunImage(RUN_TAG)],
        stack_run_image=RunImage(RUN_TAG),
        description="ocibuild's embedded default builder (busybox, Procfile buildpack)",
        scratch_store=store,
        before_publish=before_publish,
        tag=BUILDER_TAG,
    )
    return BUILDER_TAG, RUN_TAG


__all__ = ["DEFAULT_BUILDER", "ensure_default_builder", "mt"]
