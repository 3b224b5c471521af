"""bench/build (e, f, g): the build environment. Peers run in the same invocation; ratios printed.

(e) start + tear-down of one sandboxed run (``/bin/true`` in a busybox build image, as the build user,
    PID/IPC/UTS/mount namespaces, /proc, /dev, /tmp), as root and as an unprivileged user, for
    ocibuild's helper (overlayfs of the extracted layers), bubblewrap (Debian ``bubblewrap``) and crun
    (Debian ``crun``) and runc, with a generated runtime spec, on a merged copy of the same root file system;
(f) extracting a new builder of ``--builder-mib`` MB: ocibuild's per-layer extraction against
    ``umoci unpack`` of the same image;
(g) disk: two builders that share a base, extracted into one scratch dir.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, median, scratch_dir, table, tool

NOBODY = 65534


def environment_parts(rounds: int, builder_mib: int) -> None:
    work = scratch_dir("ocibuild-bench-env-")
    try:
        work.chmod(0o755)
        sandbox_part(work, max(rounds, 1) * 10)
        extraction_part(work, builder_mib, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- images ------------------------------------------------------------------------------------------
def _image(layout: Path, tag: str, layers: list[list]) -> tuple:
    from ocibuild.layer import write_layer
    from ocibuild.oci.manifest import ImageConfig, Manifest
    from ocibuild.store.layout import LayoutStore

    store = LayoutStore(layout, create=True)
    results = [write_layer(entries, tmp_dir=store.tmp_dir) for entries in layers]
    for r in results:
        store.put_blob_file(r.descriptor, r.path)
    config = ImageConfig.build({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "CNB_USER_ID=1000", "CNB_GROUP_ID=1000"]},
        "rootfs": {"type": "layers", "diff_ids": [str(r.diff_id) for r in results]},
    })
    store.put_blob(config.descriptor(), io.BytesIO(config.raw))
    manifest = Manifest.build(config.descriptor(), [r.descriptor for r in results])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=tag)
    return store, manifest, config


def _busybox() -> list:
    from ocibuild.layer import TarEntry

    busybox = tool("busybox")
    return [TarEntry.dir("bin"), TarEntry.dir("tmp", mode=0o1777), TarEntry.dir("etc"), TarEntry.dir("layers"),
            TarEntry.dir("proc"), TarEntry.dir("dev"),
            TarEntry.file("bin/busybox", Path(busybox).read_bytes(), mode=0o755),
            TarEntry.symlink("bin/true", "busybox"), TarEntry.symlink("bin/sh", "busybox"),
            TarEntry.file("etc/passwd", b"root:x:0:0::/:/bin/sh\ncnb:x:1000:1000::/:/bin/sh\n")]


def _bulk(name: str, mib: int) -> list:
    """``mib`` MB of a base image's kind of content: 70% incompressible 1 MB files, 30% 4 KB files."""
    from ocibuild.layer import TarEntry

    out = [TarEntry.dir(name), TarEntry.dir(f"{name}/lib"), TarEntry.dir(f"{name}/share")]
    for i in range(mib * 7 // 10):
        out.append(TarEntry.file(f"{name}/lib/blob{i:04d}.so", os.urandom(1 << 20), mode=0o755))
    for i in range(mib * 3 // 10 * 256):
        if i % 200 == 0:
            out.append(TarEntry.dir(f"{name}/share/d{i // 200:03d}"))
        out.append(TarEntry.file(f"{name}/share/d{i // 200:03d}/f{i:06d}.txt", (f"{i} " * 1024)[:4096].encode()))
    return out


# -- (e) sandboxes --------------------------------------------------------------------------------------
def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--", *argv]


def _time(argv: list[str], n: int, env: dict[str, str] | None = None) -> str:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            err = (proc.stderr.decode(errors="replace").strip().splitlines() or ["exit %d" % proc.returncode])[-1]
            return f"fails: {err[:70]}"
    return f"{median(times) * 1000:.1f} ms"


_OURS = r"""
import sys, time
from pathlib import Path
from ocibuild.cnb.rootfs import RootFS
from ocibuild.cnb.sandbox import Mount, Sandbox
layers, tmp, mode, n = sys.argv[1].split(":"), sys.argv[2], sys.argv[3], int(sys.argv[4])
sb = Sandbox((Mount(Path(tmp), "/layers"),), mode, RootFS(tuple(Path(p) for p in layers)), uid=1000, gid=1000,
             isolate=True, hostname="bench", readonly_root=mode == "user", home="/")
times = []
for _ in range(n):
    start = time.perf_counter()
    proc = sb.run(["/bin/true"], cwd="/", env={"PATH": "/bin"})
    times.append(time.perf_counter() - start)
    assert proc.returncode == 0, proc
times.sort()
print(times[len(times) // 2])
"""


def _ours(layers: list[Path], tmp: Path, mode: str, n: int, unprivileged: bool) -> str:
    python = sys.executable if not unprivileged else f"/usr/bin/python3.{sys.version_info.minor}"
    import sysconfig

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]]))
    argv = [python, "-c", _OURS, ":".join(map(str, layers)), str(tmp), mode, str(n)]
    proc = subprocess.run(_as_nobody(argv) if unprivileged else argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return f"fails: {(proc.stderr.strip().splitlines() or ['?'])[-1][:70]}"
    return f"{float(proc.stdout) * 1000:.1f} ms"


def _bwrap(rootfs: Path, tmp: Path) -> list[str]:
    return [tool("bwrap"), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--uid", "1000",
            "--gid", "1000", "--die-with-parent", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--bind", str(tmp), "/layers", "--chdir", "/", "/bin/true"]


def _crun_bundle(bundle: Path, rootfs: Path, tmp: Path, rootless: bool) -> None:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    spec: dict = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 1000, "gid": 1000},
                    "noNewPrivileges": True},
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]},
                   {"destination": "/layers", "type": "bind", "source": str(tmp), "options": ["rbind", "rw"]}],
        "linux": {"namespaces": namespaces},
    }
    if rootless:
        namespaces.append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 1000, "hostID": NOBODY, "size": 1}]
        spec["linux"]["gidMappings"] = [{"containerID": 1000, "hostID": NOBODY, "size": 1}]
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec))


def _runtime(name: str, bundle: Path, state: Path) -> list[str]:
    extra = ["--cgroup-manager=disabled"] if name == "crun" else []
    return [tool(name), "--root", str(state), *extra, "run", "--bundle", str(bundle), f"bench-{os.getpid()}"]


def sandbox_part(work: Path, n: int) -> None:
    from ocibuild.cnb.rootfs import ExtractedLayers
    from ocibuild.layer.extract import unpack_image

    store, manifest, config = _image(work / "layout", "sb", [_busybox()])
    extracted = ExtractedLayers(work / "scratch").ensure(manifest, config, [store]).layers
    merged = work / "merged"
    unpack_image(store, manifest, merged)
    tmp = work / "layers-dir"
    tmp.mkdir()
    tmp.chmod(0o777)
    for path in (work / "scratch", merged):
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)
    bare = _time(["/bin/true"], n)
    rows = [["plain fork+exec of /bin/true (floor)", bare, bare]]
    rows.append(["ocibuild helper (python -I -S, overlayfs of the layers)",
                 _ours(list(extracted), tmp, "root", n, False), _ours(list(extracted), tmp, "user", n, True)])
    rows.append(["bubblewrap 0.8 (Debian; ro-bind of a merged copy: no overlay option before 0.10)",
                 _time(_bwrap(merged, tmp), n), _time(_as_nobody(_bwrap(merged, tmp)), n)])
    _crun_bundle(work / "oci-root", merged, tmp, False)
    _crun_bundle(work / "oci-user", merged, tmp, True)
    for name in ("crun", "runc"):
        state_user = work / f"{name}-state-user"
        state_user.mkdir()
        shutil.chown(state_user, NOBODY, NOBODY)
        rows.append([f"{name} (Debian; generated runtime spec, merged copy)",
                     _time(_runtime(name, work / "oci-root", work / f"{name}-state"), n),
                     _time(_as_nobody(_runtime(name, work / "oci-user", state_user)), n)])
    rows.append(["can stack the extracted layers without a copy", "helper: yes; bwrap 0.8: no; crun/runc: no (one root.path)", ""])
    rows.append(["runs as the build user as real root without a user namespace", "helper: yes; bwrap: no (--uid needs a user namespace); crun/runc: yes", ""])
    table(f"bench/build (e): one sandboxed run, set-up to tear-down (median of {n}); the build runs one per "
          f"bin/detect and bin/build", ["", "as root", f"as uid {NOBODY} (user namespace)"], rows)


# -- (f) extraction, (g) disk ---------------------------------------------------------------------------------
def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def extraction_part(work: Path, builder_mib: int, rounds: int) -> None:
    from ocibuild.cnb.rootfs import ExtractedLayers
    from ocibuild.layer.tarwriter import TarEntry

    third = max(builder_mib // 3, 1)
    base_layers = [_busybox(), _bulk("usr", third), _bulk("opt", third), _bulk("srv", third)]
    store, manifest, config = _image(work / "big", "b1", [*base_layers, [TarEntry.file("cnb/one", b"1")]])
    _, manifest2, config2 = _image(work / "big", "b2", [*base_layers, [TarEntry.file("cnb/two", b"2")]])
    plain = sum(e.size for layer in base_layers for e in layer if e.kind == "file") / 1e6
    ours, umoci = [], []
    umoci_cmd = tool("umoci")
    for i in range(rounds):
        scratch = work / f"x{i}"
        start = time.perf_counter()
        ExtractedLayers(scratch).ensure(manifest, config, [store])
        ours.append(time.perf_counter() - start)
        shutil.rmtree(scratch)
        bundle = work / f"bundle{i}"
        start = time.perf_counter()
        subprocess.run([umoci_cmd, "unpack", "--image", f"{work / 'big'}:b1", str(bundle)], check=True,
                       capture_output=True)
        umoci.append(time.perf_counter() - start)
        shutil.rmtree(bundle)
    o, u = median(ours), median(umoci)
    table(f"bench/build (f): a new {plain:.0f} MB builder (4 layers + 1, {sum(len(x) for x in base_layers)} files) "
          f"made ready to build on; medians of {rounds}",
          ["", "time", "MB/s (file bytes)", "ratio to umoci"],
          [["ocibuild: each layer extracted by diffID (2 threads), whiteouts for overlayfs", f"{o:.2f} s",
            f"{plain / o:.0f}", f"{u / o:.2f}x"],
           ["umoci unpack (whole bundle, mtree manifest)", f"{u:.2f} s", f"{plain / u:.0f}", "1.00x"]])

    shared = work / "shared"
    layers = ExtractedLayers(shared)
    one = layers.ensure(manifest, config, [store])
    two = layers.ensure(manifest2, config2, [store])
    dirs = len(layers.entries())
    total = len(one.layers) + len(two.layers)
    table("bench/build (g): disk for two builders sharing a base, extracted into one scratch dir",
          ["", "layers", "bytes on disk"],
          [["builder 1 + builder 2, as two separate unpacks would store them", str(total),
            f"{2 * _du(shared) / 1e6 - _du(layers.path(config2.diff_ids[-1])) / 1e6:.0f} MB (approx.)"],
           ["ocibuild's extractions (one per distinct diffID)", str(dirs), f"{_du(shared) / 1e6:.0f} MB"]])
