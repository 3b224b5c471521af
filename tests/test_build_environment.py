"""Buildpacks run in the builder's build image, as its CNB user, apart from the host (issue 9).

The builder here is not this machine's OS (``support.foreign_builder``: busybox only, its own
os-release and marker, CNB_USER_ID=1234); its probe buildpack reports what it sees into a ``--volume``.
Every test runs the real CLI twice over: as root (a CI container) and as an unprivileged user
(uid 65534, a rootless runner), whose sandbox is a user namespace.
"""

from __future__ import annotations

import atexit
import functools
import gzip
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.foreign_builder import IMAGE_PATH, MARKER, copy_tree_for, write_foreign_builder
from support.tools import require_tool

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


@dataclass
class Runner:
    """The CLI as root or as an unprivileged user, in a base directory that user owns."""

    kind: str
    base: Path

    def argv(self) -> list[str]:
        if self.kind == "root":
            return [sys.executable, "-m", "ocibuild.cli.main"]
        return [require_tool("setpriv"), "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--",
                _unprivileged_python(), "-m", "ocibuild.cli.main"]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ, OCIBUILD_SCRATCH=str(self.base / "scratch"), HOME=str(self.base / "home"),
                   OCIBUILD_HOST_ONLY="leaked", **(extra or {}))
        if self.kind != "root":
            env["PYTHONPATH"] = os.pathsep.join(_readable_code())
            env.pop("XDG_RUNTIME_DIR", None)
        return env

    def own(self, *paths: Path) -> None:
        if self.kind != "root":
            for p in paths:
                copy_tree_for(p, NOBODY, NOBODY)

    def ocibuild(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv(), *args], capture_output=True, text=True, env=self.env(),
                              cwd=self.base, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"ocibuild {' '.join(args)} ({self.kind}) exited {proc.returncode}:\n"
                                 f"{proc.stderr[-3000:]}")
        return proc


def _open_to_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in (path, *path.parents))


@functools.cache
def _readable_code() -> tuple[str, str]:
    """Where uid 65534 imports ocibuild and its dependencies from: this checkout and its venv when
    others may read them, else one copy of both per session in a world-readable temp dir (a clone
    under /root, say)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    if _open_to_others(REPO) and _open_to_others(purelib):
        return str(REPO), str(purelib)
    copy = Path(tempfile.mkdtemp(prefix="ocibuild-code-", dir="/tmp"))
    atexit.register(shutil.rmtree, copy, True)
    copy.chmod(0o755)
    shutil.copytree(REPO / "ocibuild", copy / "src" / "ocibuild", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(purelib, copy / "deps", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "ocibuild*"))
    subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
    return str(copy / "src"), str(copy / "deps")


def _unprivileged_python() -> str:
    """An interpreter uid 65534 can run: this one if its path is open to others, else Debian's."""
    exe = os.path.realpath(sys.executable)
    if _open_to_others(Path(exe).parent):
        return exe
    debian = f"/usr/bin/python3.{sys.version_info.minor}"
    if not os.path.exists(debian):
        pytest.fail(f"the unprivileged runs need an interpreter uid {NOBODY} can execute: {exe} is under a "
                    f"private directory and {debian} is missing (Debian package python3)", pytrace=False)
    return debian


@pytest.fixture(params=["root", "unprivileged"])
def runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    if os.geteuid() != 0:
        pytest.fail("these tests start as root (CI does) to run both as root and as an unprivileged user",
                    pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="ocibuild-env-", dir="/tmp"))
    base.chmod(0o755)
    (base / "home").mkdir()
    run = Runner(request.param, base)
    run.own(base)
    if run.kind != "root":
        probe = subprocess.run([*run.argv()[:-2], "-c", "import ocibuild.cli.main"], env=run.env(),
                               capture_output=True, text=True, cwd=base)
        if probe.returncode != 0:
            pytest.fail(f"uid {NOBODY} cannot import ocibuild from {_readable_code()}: "
                        f"{probe.stderr.strip().splitlines()[-1:]}", pytrace=False)
    try:
        yield run
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@dataclass
class Probe:
    builder: str
    app: Path
    out: Path
    volume: Path
    ro_volume: Path
    host_marker: Path
    name: str
    sleep: str


@pytest.fixture
def probe(runner: Runner) -> Probe:
    base = runner.base
    builder = write_foreign_builder(base / "builders")
    app = base / "app"
    app.mkdir()
    (app / "app.txt").write_text("the app\n")
    (base / "probe").mkdir()
    (base / "probe").chmod(0o777)  # as root, the build user (1234) writes into it through the volume
    (base / "ro").mkdir()
    (base / "host-marker").write_text("on the host only\n")
    runner.own(base / "builders", app, base / "probe", base / "ro", base / "home")
    return Probe(builder, app, base / "out", base / "probe", base / "ro", base / "host-marker",
                 f"probe-{secrets.token_hex(4)}", str(3000 + secrets.randbelow(5000)))


def _build(runner: Runner, p: Probe, registry_url: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return runner.ocibuild(
        "build", f"oci:{p.out}:app", "--builder", p.builder, "--path", str(p.app),
        "--volume", f"{p.volume}:/probe:rw", "--volume", f"{p.ro_volume}:/ro-volume",
        "--env", f"HOST_MARKER={p.host_marker}", "--env", f"PROBE_URL={registry_url}/v2/",
        "--env", f"PROBE_NAME={p.name}", "--env", f"PROBE_SLEEP={p.sleep}", "--env", f"HOST_PID={os.getpid()}",
        *extra, check=check,
    )


def _report(p: Probe, name: str) -> dict[str, str]:
    lines = (p.volume / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _sleepers(seconds: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _layer_owners(layout: Path, path: str) -> set[tuple[int, int]]:
    """(uid, gid) of ``path`` in every layer of the layout's ``app`` image that has it."""
    index = json.loads((layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == "app")
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    owners = set()
    for layer in manifest["layers"]:
        data = gzip.decompress((layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            owners |= {(m.uid, m.gid) for m in tar.getmembers() if m.name.lstrip("/") == path}
    return owners


def test_buildpacks_run_in_the_builders_image_as_its_cnb_user_apart_from_the_host(
        runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    _build(runner, probe, registry.url)
    detect, seen = _report(probe, "detect.txt"), _report(probe, "build.txt")
    print(detect, seen)  # shown when an assertion fails
    assert detect == {"detect_uid": "1234", "detect_marker": MARKER.strip()}
    # The build image's file system and environment, not this machine's.
    assert seen["marker"] == MARKER.strip() and seen["os_id"] == "probeos"
    assert seen["target_distro"] == "probeos"
    assert seen["path"] == IMAGE_PATH
    assert seen["host_marker"] == "no"
    assert seen["leaked_env"] == "none"
    # The builder's CNB user, owning /layers and /workspace and the app's files there.
    assert (seen["uid"], seen["gid"]) == ("1234", "1234")
    assert seen["layers_owner"] == seen["workspace_owner"] == seen["app_file_owner"] == "1234"
    assert seen["home"] == "/home/cnb" and seen["home_write"] == "yes"
    # Confined: no writes to /, no mounts, its own PID namespace, /dev and /tmp; nothing reaches the host.
    assert seen["root_write"] == "no" and seen["mount"] == "no"
    assert seen["ro_volume_write"] == "no" and not (probe.ro_volume / probe.name).exists()
    assert seen["tmp_write"] == "yes" and not Path("/tmp", probe.name).exists()
    assert not Path("/home/cnb", probe.name).exists() and not Path("/x").exists()
    assert seen["host_pids_visible"] == "no" and seen["hostname"] == "ocibuild"
    assert set(seen["dev"].split()) >= {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"}
    assert seen["net"] == "yes"  # the host's network by default, as a CI job has
    assert _sleepers(probe.sleep) == []  # the backgrounded sleep died with its phase
    # What the buildpack made is the build user's in the exported image, as the lifecycle exports it.
    assert _layer_owners(probe.out, "layers/test_probe/made/file") == {(1234, 1234)}
    assert list((runner.base / "scratch" / "work").iterdir()) == []


def test_network_none_cannot_reach_a_loopback_registry(runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    _build(runner, probe, registry.url, "--network", "none")
    assert _report(probe, "build.txt")["net"] == "no"


def test_uid_and_gid_override_the_builders_cnb_user(runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    _build(runner, probe, registry.url, "--uid", "2001", "--gid", "2002")
    seen = _report(probe, "build.txt")
    assert (seen["uid"], seen["gid"], seen["layers_owner"]) == ("2001", "2002", "2001")
    assert _layer_owners(probe.out, "layers/test_probe/made/file") == {(2001, 2002)}


def test_layers_are_extracted_once_and_shared_and_collected_with_their_builder(
        runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    rootfs = runner.base / "scratch" / "rootfs" / "sha256"
    _build(runner, probe, registry.url)
    first = {p.name: p.stat().st_ino for p in rootfs.iterdir()}
    # The probe builder is base + dirs + probe + order/stack/run/env layers (some of them equal).
    manifest = _manifest_of(probe.builder)
    assert set(first) == {d.split(":")[1] for d in manifest["diff_ids"]}
    _build(runner, probe, registry.url)
    assert {p.name: p.stat().st_ino for p in rootfs.iterdir()} == first  # nothing extracted again
    # A second builder on the same base shares the base's extraction.
    second = write_foreign_builder(runner.base / "builders2")
    runner.own(runner.base / "builders2")
    _build(runner, probe, registry.url, "--builder", second)
    assert set(first) <= {p.name for p in rootfs.iterdir()}
    runner.ocibuild("fsck")
    # Forgetting the builders (their scratch tags) lets gc remove their extractions.
    layout = runner.base / "scratch" / "layout"
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        name = entry["annotations"]["org.opencontainers.image.ref.name"]
        if name.startswith("ocibuild.local/build-image/"):
            runner.ocibuild("delete", f"oci:{layout}:{name}")
    runner.ocibuild("gc")
    assert list(rootfs.iterdir()) == []
    runner.ocibuild("fsck")


def _manifest_of(ref: str) -> dict[str, list[str]]:
    path, tag = ref[len("oci:"):].rsplit(":", 1)
    layout = Path(path)
    index = json.loads((layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return {"diff_ids": config["rootfs"]["diff_ids"]}


@pytest.mark.parametrize("args, message", [
    (("--volume", "/etc:/cnb/x"), "mounting to /cnb/x is not allowed"),
    (("--volume", "/does/not/exist:/data"), "does not exist"),
    (("--volume", "/etc:/data:rx"), "mode must be ro or rw"),
    (("--network", "bridge"), "--network 'bridge'"),
    (("--uid", "0"), "must not be root"),
    (("--isolation", "none"), "allowed only inside the builder image"),
])
def test_what_the_environment_cannot_honour_is_refused_in_one_line(
        runner: Runner, probe: Probe, registry, args: tuple[str, ...], message: str) -> None:  # noqa: ANN001
    proc = _build(runner, probe, registry.url, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") <= 8  # progress lines, then one error
    assert "Traceback" not in proc.stderr
    assert not (probe.volume / "detect.txt").exists()  # stopped before detection
    assert not probe.out.exists()


@pytest.mark.parametrize("entries, message", [
    ([("../escaped", "file", "")], "path contains '..'"),
    ([("dev/evil", "char", "")], "device node refused"),
    ([("link", "symlink", "../../.."), ("link/escaped", "file", "")], "goes through a symlink that leaves"),
    ([("abs", "symlink", "/"), ("abs/escaped", "file", "")], None),  # resolved in the image's root, as a container does
])
def test_a_builder_layer_that_tries_to_escape_is_refused_or_confined(
        runner: Runner, probe: Probe, registry, entries: list, message: str | None) -> None:  # noqa: ANN001
    layout = runner.base / "evil"
    evil = _append_raw_layer(probe.builder, layout, entries)
    runner.own(layout)
    proc = _build(runner, probe, registry.url, "--builder", evil, check=False)
    assert "Traceback" not in proc.stderr
    if message is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and message in proc.stderr.strip().splitlines()[-1]
    for where in (runner.base, Path("/"), runner.base / "scratch", runner.base / "scratch" / "rootfs"):
        assert not (where / "escaped").exists()
    rootfs = runner.base / "scratch" / "rootfs" / "sha256"
    assert not any(p.name.startswith(".tmp-") for p in rootfs.iterdir())
    assert list((runner.base / "scratch" / "work").iterdir()) == []


@pytest.mark.parametrize("runner", ["unprivileged"], indirect=True)
def test_no_user_namespace_stops_the_build_before_detection_with_the_cause_and_the_fix(
        runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    # A user namespace whose user.max_user_namespaces (a per-namespace limit) is used up by the one
    # namespace ocibuild runs in: as on a host with the limit at 0, ocibuild cannot make its own.
    unshare = require_tool("unshare")
    limited = [unshare, "--user", "--map-root-user", "sh", "-c",
               f'echo 1 > /proc/sys/user/max_user_namespaces && exec {unshare} --user --map-user={NOBODY} '
               f'--map-group={NOBODY} "$@"', "limited"]
    argv = runner.argv()
    cut = argv.index("--") + 1
    original = runner.argv
    runner.argv = lambda: [*argv[:cut], *limited, *argv[cut:]]  # type: ignore[method-assign]
    try:
        proc = _build(runner, probe, registry.url, check=False)
    finally:
        runner.argv = original  # type: ignore[method-assign]
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "user.max_user_namespaces" in last and "run as root" in last, last
    assert "Traceback" not in proc.stderr
    assert not (probe.volume / "detect.txt").exists()
    assert list((runner.base / "scratch" / "work").iterdir()) == []


def _append_raw_layer(builder_ref: str, layout: Path, files: list[tuple[str, str, str]]) -> str:
    """The builder with one more layer written by hand (tarfile, not ocibuild: its names are hostile)."""
    from ocibuild.oci.descriptor import Descriptor
    from ocibuild.oci.digest import Digest
    from ocibuild.oci.manifest import ImageConfig, Manifest
    from ocibuild.store.layout import LayoutStore

    src_path, tag = builder_ref[len("oci:"):].rsplit(":", 1)
    shutil.copytree(src_path, layout)
    store = LayoutStore(layout)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, target in files:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "char":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, io.BytesIO(b"") if kind == "file" else None)
    plain = raw.getvalue()
    blob = gzip.compress(plain, mtime=0)
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", Digest.of(blob), len(blob))
    store.put_blob(desc, io.BytesIO(blob))
    _, manifest_raw = store.get_manifest(tag)
    manifest = Manifest.parse(manifest_raw)
    config = ImageConfig.parse(store.blob_path(manifest.config.digest).read_bytes())
    doc = config.to_dict()
    doc["rootfs"]["diff_ids"].append(str(Digest.of(plain)))
    new_config = ImageConfig.build(doc)
    store.put_blob(new_config.descriptor(), io.BytesIO(new_config.raw))
    new = Manifest.build(new_config.descriptor(), [*manifest.layers, desc])
    store.put_manifest(new.descriptor(), new.raw, tag="evil")
    return f"oci:{layout}:evil"


def test_a_build_dockerfile_runs_as_root_in_the_namespace_as_root_and_unprivileged(
        runner: Runner, probe: Probe, registry) -> None:  # noqa: ANN001
    """The build-image extension on a rootless runner too: the RUN is root in the build's own user
    namespace (the caller mapped to 0), its changes (a rewritten and a removed file) are a layer the
    buildpack then sees, and the buildpack still runs as the CNB user."""
    ext = runner.base / "ext"
    (ext / "generate").mkdir(parents=True)
    (ext / "extension.toml").write_text('api = "0.12"\n[extension]\nid = "test/env-ext"\nversion = "1.0.0"\n')
    (ext / "generate" / "build.Dockerfile").write_text(
        "ARG base_image\nFROM ${base_image}\nUSER root\n"
        'RUN echo "extended by uid $(id -u)" > /etc/probe-marker && rm /etc/os-release && touch /etc/os-release\n'
        "USER 1234:1234\n")
    runner.own(ext)
    proc = _build(runner, probe, registry.url, "--extension", str(ext))
    seen = _report(probe, "build.txt")
    assert "extensions: test/env-ext@1.0.0" in proc.stderr
    assert seen["marker"] == "extended by uid 0"
    assert seen["os_id"] == ""  # the RUN emptied it: the buildpack sees the extended build image
    assert (seen["uid"], seen["gid"]) == ("1234", "1234")
