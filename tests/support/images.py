"""Tiny, real OCI images for tests, built without ocibuild (so they can judge ocibuild's output).

``write_image`` writes a valid OCI layout holding one image made of gzip layers whose files the test
chooses; ``busybox_files`` gives a runnable root file system from Debian's busybox-static; ``skopeo_copy``
moves images between layouts and the test registries with the real peer tool.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .registry import RegistryServer
from .tools import require_tool, run

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
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
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def layer_tar(files: Mapping[str, FileSpec]) -> bytes:
    """A reproducible tar of ``files`` (parent directories added), sorted, mtime 1980, root-owned."""
    entries: dict[str, FileSpec] = {}
    for name, spec in files.items():
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), ("dir", 0o755))
        entries["/".join(parts)] = spec
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            spec = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            data: bytes | None = None
            if isinstance(spec, bytes):
                info.mode, data = 0o644, spec
            elif spec[0] == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(spec[1]), 0o777
            elif spec[0] == "dir":
                info.type, info.mode = tarfile.DIRTYPE, int(spec[1])  # type: ignore[arg-type]
            else:
                data, info.mode = spec[0], int(spec[1])  # type: ignore[assignment, arg-type]
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _put_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return Blob(media_type, digest, len(data))


def init_layout(layout: Path) -> Path:
    """Create an empty OCI layout (idempotent)."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    header = layout / "oci-layout"
    if not header.exists():
        header.write_text('{"imageLayoutVersion":"1.0.0"}')
    if not (layout / "index.json").exists():
        (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}))
    return layout


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
    root = init_layout(Path(layout))
    layer_blobs, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append(sha256(tar))
        layer_blobs.append(_put_blob(root, gzip.compress(tar, compresslevel=6, mtime=0), OCI_LAYER_GZIP))
    inner = dict(config or {})
    if labels:
        inner["Labels"] = {**dict(inner.get("Labels", {})), **labels}  # type: ignore[arg-type]
    config_doc: dict[str, object] = {
        "architecture": architecture,
        "os": os_name,
        "created": "1980-01-01T00:00:01Z",
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1980-01-01T00:00:01Z", "created_by": "tests/support/images.py"} for _ in layers],
    }
    config_bytes = canonical(config_doc)
    config_blob = _put_blob(root, config_bytes, OCI_CONFIG)
    manifest_doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in layer_blobs],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest_bytes = canonical(manifest_doc)
    manifest_blob = _put_blob(root, manifest_bytes, OCI_MANIFEST)
    if tag is not None:
        index = json.loads((root / "index.json").read_bytes())
        entries = [
            m for m in index.get("manifests", [])
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
        entries.append(
            manifest_blob.descriptor(
                annotations={"org.opencontainers.image.ref.name": tag},
                platform={"architecture": architecture, "os": os_name},
            )
        )
        index["manifests"] = entries
        tmp = root / "index.json.tmp"
        tmp.write_bytes(canonical(index))
        os.replace(tmp, root / "index.json")
    return ImageInfo(
        root, tag, manifest_blob, config_blob, tuple(layer_blobs), tuple(diff_ids), manifest_bytes, config_bytes
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
