"""Tiny, real OCI images for tests, written with ocibuild's own layer, model and layout code.

``write_image`` writes a valid OCI layout holding one image made of gzip layers whose files the test
chooses (``ocibuild.layer.write_layer`` of ``TarEntry`` lists, ``ImageConfig.build``,
``Manifest.build``, ``LayoutStore``); ``busybox_files`` gives a runnable root file system from
Debian's busybox-static; ``skopeo_copy`` moves images between layouts and the test registries with
the real peer tool. The output is judged by peers (skopeo, umoci, oci-image-tool, the JSON schemas)
in ``tests/test_fixtures.py``, so tests built on it do not grade ocibuild with its own ruler alone.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocibuild.layer import TarEntry, write_layer
from ocibuild.layer.tarwriter import normalize_path, write_tar
from ocibuild.oci import ImageConfig, Manifest, Platform
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import canonical_json
from ocibuild.store.base import put_bytes
from ocibuild.store.layout import LayoutStore

from .registry import RegistryServer
from .tools import require_tool, run

OCI_MANIFEST = mt.OCI_MANIFEST
OCI_INDEX = mt.OCI_INDEX
OCI_CONFIG = mt.OCI_CONFIG
OCI_LAYER_GZIP = mt.OCI_LAYER_GZIP
EPOCH = 315532801  # 1980-01-01T00:00:01Z, the reproducible-build mtime

#: One file of a layer: bytes (a 0644 file), or (bytes, mode), or ("symlink", target), or ("dir", mode).
FileSpec = bytes | tuple[bytes, int] | tuple[str, str] | tuple[str, int]


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class ImageInfo:
    """What ``write_image`` wrote: the manifest, config and layer blobs, and the layers' diff IDs."""

    layout: Path
    tag: str | None
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    manifest_bytes: bytes
    config_bytes: bytes

    @property
    def ref(self) -> str:
        """``oci:DIR:TAG`` (or ``oci:DIR@DIGEST`` untagged), as skopeo and ocibuild spell it."""
        return f"oci:{self.layout}:{self.tag}" if self.tag else f"oci:{self.layout}@{self.manifest.digest}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: object) -> bytes:
    return canonical_json(doc)


def _entry(path: str, spec: FileSpec) -> TarEntry:
    if isinstance(spec, bytes):
        return TarEntry.file(path, spec)
    if spec[0] == "symlink":
        return TarEntry.symlink(path, str(spec[1]))
    if spec[0] == "dir":
        return TarEntry.dir(path, int(spec[1]))  # type: ignore[arg-type]
    return TarEntry.file(path, spec[0], int(spec[1]))  # type: ignore[arg-type]


def layer_entries(files: Mapping[str, FileSpec]) -> list[TarEntry]:
    """``files`` as ``TarEntry`` objects, with a 0755 entry for every parent directory not given."""
    entries: dict[str, TarEntry] = {}
    for name, spec in files.items():
        path = normalize_path(name)
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, TarEntry.dir(parent, 0o755))
        entries[path] = _entry(path, spec)
    return list(entries.values())


def layer_tar(files: Mapping[str, FileSpec]) -> bytes:
    """The reproducible tar of ``files`` (sorted, mtime 1980, root-owned): its sha256 is the diffID
    of the layer ``write_image`` makes from the same map."""
    buf = io.BytesIO()
    write_tar(buf, layer_entries(files))
    return buf.getvalue()


def _blob(desc: object) -> Blob:
    return Blob(desc.media_type, str(desc.digest), desc.size)  # type: ignore[attr-defined]


def init_layout(layout: Path) -> Path:
    """Create an empty OCI layout (idempotent)."""
    LayoutStore(layout, create=True)
    return Path(layout)


def write_image(
    layout: str | os.PathLike[str],
    layers: Sequence[Mapping[str, FileSpec]] = ({"hello.txt": b"hello\n"},),
    *,
    tag: str | None = "latest",
    config: Mapping[str, object] | None = None,
    labels: Mapping[str, str] | None = None,
    architecture: str = "amd64",
    os_name: str = "linux",
    annotations: Mapping[str, str] | None = None,
) -> ImageInfo:
    """Write a one-platform image into ``layout`` (created if needed) and tag it in ``index.json``.

    Each element of ``layers`` is the file map of one gzip layer. ``config`` is the ``config`` member
    of the image config (Env, Cmd, ...); ``labels`` are merged into it. A tag replaces any entry of
    the same name, like the OCI layout convention.
    """
    store = LayoutStore(layout, create=True)
    layer_descs, diff_ids = [], []
    for files in layers:
        result = write_layer(layer_entries(files), tmp_dir=store.tmp_dir)
        store.put_blob_file(result.descriptor, result.path)
        layer_descs.append(result.descriptor)
        diff_ids.append(str(result.diff_id))
    inner = dict(config or {})
    if labels:
        inner["Labels"] = {**dict(inner.get("Labels", {})), **labels}  # type: ignore[arg-type]
    cfg = ImageConfig.build({
        "architecture": architecture,
        "os": os_name,
        "created": "1980-01-01T00:00:01Z",
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1980-01-01T00:00:01Z", "created_by": "tests/support/images.py"} for _ in layers],
    })
    put_bytes(store, cfg.descriptor(), cfg.raw)
    manifest = Manifest.build(cfg.descriptor(), layer_descs, annotations=annotations)
    desc = store.put_manifest(manifest.descriptor(), manifest.raw)
    if tag is not None:
        store.tag(desc.with_platform(Platform(os_name, architecture)), tag)
    return ImageInfo(
        Path(layout), tag, _blob(desc), _blob(cfg.descriptor()),
        tuple(_blob(d) for d in layer_descs), tuple(diff_ids), manifest.raw, cfg.raw,
    )


BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "id", "true", "false", "test", "sleep", "mkdir", "printf")


def busybox_files(applets: Sequence[str] = BUSYBOX_APPLETS) -> dict[str, FileSpec]:
    """A minimal runnable root file system: ``/bin/busybox`` (static, from the host) and applet links."""
    busybox = Path(require_tool("busybox")).resolve()
    files: dict[str, FileSpec] = {"bin/busybox": (busybox.read_bytes(), 0o755)}
    for applet in applets:
        files[f"bin/{applet}"] = ("symlink", "busybox")
    files["tmp"] = ("dir", 0o1777)
    files["etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    files["etc/group"] = b"root:x:0:\nnogroup:x:65534:\n"
    return files


def write_busybox_image(layout: str | os.PathLike[str], tag: str = "latest", **kwargs: object) -> ImageInfo:
    """A runnable busybox image (``Cmd ["/bin/sh"]``, a PATH) in ``layout``."""
    config = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"], **dict(kwargs.pop("config", {}) or {})}  # type: ignore[call-overload]
    return write_image(layout, [busybox_files()], tag=tag, config=config, **kwargs)  # type: ignore[arg-type]


def skopeo_copy(src: str, dest: str, *registries: RegistryServer, extra: Sequence[str] = ()) -> None:
    """``skopeo copy`` between ``oci:``/``docker://`` references, trusting/authenticating to ``registries``.

    Credentials go through an auth file, never the command line.
    """
    require_tool("skopeo")
    args = ["skopeo", "copy", "--quiet"]
    for side, ref in (("src", src), ("dest", dest)):
        if not ref.startswith("docker://"):
            continue
        server = next((r for r in registries if ref[len("docker://"):].startswith(r.host + "/")), None)
        if server is None:
            args.append(f"--{side}-tls-verify=false")
            continue
        if server.kind == "tls":
            args.append(f"--{side}-cert-dir={server.cert_dir}")
        else:
            args.append(f"--{side}-tls-verify=false")
        if server.username:
            args.append(f"--{side}-authfile={server.write_auth_file(server.root / 'auth.json')}")
    run([*args, *extra, src, dest], check=True, timeout=300)
