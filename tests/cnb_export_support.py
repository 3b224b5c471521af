"""Shared by the exporter, cache and rebase tests: a tiny run image made with ocibuild's own layer code,
and a hand-written layers directory in the lifecycle's on-disk format (two buildpacks)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ocibuild.layer.compress import compress_stream
from ocibuild.layer.tarwriter import TarEntry, TarOptions, write_tar
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import ImageConfig, Manifest
from ocibuild.store.base import put_bytes
from ocibuild.store.layout import LayoutStore

APPLETS = ("sh", "cat", "echo", "env", "printf", "ls", "pwd", "test", "[")


def make_run_image(store: LayoutStore, tag: str, *, marker: str = "run-1", extra_labels: dict | None = None) -> Manifest:
    """busybox-static as /bin/sh & co plus a text file that tells which run image this is."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").resolve()
    base = [TarEntry.dir("bin"), TarEntry("bin/busybox", "file", 0o755, busybox.stat().st_size,
                                          opener=lambda: open(busybox, "rb"))]
    base += [TarEntry.symlink(f"bin/{a}", "busybox") for a in APPLETS]
    base += [TarEntry.dir("tmp", 0o1777), TarEntry.dir("etc"),
             TarEntry.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ncnb:x:1000:1000::/home/cnb:/bin/sh\n")]
    second = [TarEntry.dir("etc"), TarEntry.file("etc/run-image", marker.encode() + b"\n")]
    layers, diff_ids = [], []
    for entries in (base, second):
        res = compress_stream(lambda out, e=entries: write_tar(out, e, TarOptions()), tmp_dir=store.tmp_dir)
        store.put_blob_file(res.descriptor, res.path)
        layers.append(res.descriptor)
        diff_ids.append(str(res.diff_id))
    labels = {"io.buildpacks.stack.id": "io.ocibuild.test", "org.example.run": marker, **(extra_labels or {})}
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux", "created": "1980-01-01T00:00:01Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "User": "1000:1000", "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "busybox"}, {"created_by": marker}],
    })
    put_bytes(store, config.descriptor(), config.raw)
    manifest = Manifest.build(config.descriptor(), layers)
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return manifest


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_layers_dir(root: Path, *, with_metadata: bool = True) -> tuple[Path, Path]:
    """``<root>/layers`` and ``<root>/workspace`` as two buildpacks leave them after the build phase."""
    layers, app = root / "layers", root / "workspace"
    write(layers / "group.toml", '[[group]]\nid = "test/runtime"\nversion = "1.0.0"\napi = "0.10"\n\n'
                                 '[[group]]\nid = "test/app"\nversion = "2.0.0"\napi = "0.10"\n')
    rt = layers / "test_runtime"
    write(rt / "runtime.toml", '[types]\nlaunch = true\ncache = true\n[metadata]\nversion = "3.1"\n')
    write(rt / "runtime" / "bin" / "hello", "#!/bin/sh\necho \"hello from runtime: $*\"\n", 0o755)
    write(rt / "runtime" / "env" / "GREETING.default", "hi")
    write(rt / "runtime" / "env" / "LIST.override", "a")
    write(rt / "runtime" / "env.launch" / "LIST.append", "b")
    write(rt / "runtime" / "env.launch" / "LIST.delim", ",")
    write(rt / "runtime" / "env.launch" / "web" / "ONLY_WEB.override", "yes")
    write(rt / "runtime" / "profile.d" / "10-profile.sh", "export FROM_PROFILE=sourced\n")
    write(rt / "build-only.toml", "[types]\nbuild = true\n")
    write(rt / "build-only" / "tool", "build tool\n")
    write(rt / "cache-only.toml", "[types]\ncache = true\n")
    write(rt / "cache-only" / "data", "cached\n")
    write(rt / "runtime.sbom.cdx.json", '{"bomFormat":"CycloneDX"}')
    write(rt / "store.toml", '[metadata]\nremember = "me"\n')
    ap = layers / "test_app"
    write(ap / "deps.toml", "[types]\nlaunch = true\n")
    write(ap / "deps" / "env.launch" / "LIST.prepend", "z")
    write(ap / "deps" / "env.launch" / "LIST.delim", ",")
    write(ap / "deps" / "env" / "GREETING.default", "ignored")
    write(ap / "deps" / "lib" / "libdeps.txt", "lib\n")
    launch = (
        '[[processes]]\ntype = "web"\ncommand = ["sh", "-c", "echo web GREETING=$GREETING LIST=$LIST '
        'ONLY_WEB=$ONLY_WEB PROFILE=$FROM_PROFILE PWD=$(pwd) ARGS=$0,$*; hello x"]\nargs = ["first"]\n'
        'default = true\ndirect = true\n\n'
        '[[processes]]\ntype = "worker"\ncommand = ["echo worker ONLY_WEB=${ONLY_WEB:-unset} '
        'PROFILE=$FROM_PROFILE LD=$LD_LIBRARY_PATH"]\n\n'
        '[[processes]]\ntype = "tool"\ncommand = ["cat"]\nargs = ["data.txt"]\ndirect = true\n'
        'working-dir = "/workspace/sub"\n\n'
        '[[labels]]\nkey = "org.example.app"\nvalue = "demo"\n\n'
        '[[slices]]\npaths = ["static/*"]\n'
    )
    write(ap / "launch.toml", launch)
    if with_metadata:
        write(layers / "config" / "metadata.toml", _metadata_toml())
    write(app / "data.txt", "app data\n")
    write(app / "sub" / "data.txt", "sub data\n")
    write(app / "static" / "index.html", "<html></html>\n")
    write(app / "run.sh", "#!/bin/sh\necho run\n", 0o755)
    return layers, app


def _metadata_toml() -> str:
    return (
        'buildpack-default-process-type = "web"\n\n'
        '[[buildpacks]]\nid = "test/runtime"\nversion = "1.0.0"\napi = "0.10"\n\n'
        '[[buildpacks]]\nid = "test/app"\nversion = "2.0.0"\napi = "0.10"\n\n'
        '[[processes]]\ntype = "web"\ncommand = ["sh", "-c", "echo web GREETING=$GREETING LIST=$LIST '
        'ONLY_WEB=$ONLY_WEB PROFILE=$FROM_PROFILE PWD=$(pwd) ARGS=$0,$*; hello x"]\nargs = ["first"]\n'
        'direct = true\nbuildpack-id = "test/app"\n\n'
        '[[processes]]\ntype = "worker"\ncommand = ["echo worker ONLY_WEB=${ONLY_WEB:-unset} '
        'PROFILE=$FROM_PROFILE LD=$LD_LIBRARY_PATH"]\nargs = []\ndirect = false\nbuildpack-id = "test/app"\n\n'
        '[[processes]]\ntype = "tool"\ncommand = ["cat"]\nargs = ["data.txt"]\ndirect = true\n'
        'buildpack-id = "test/app"\nworking-dir = "/workspace/sub"\n\n'
        '[[labels]]\nkey = "org.example.app"\nvalue = "demo"\n\n'
        '[[slices]]\npaths = ["static/*"]\n'
    )
