"""The build environment: the one object every phase that runs buildpack code is handed.

As the Platform spec asks ("in the build environment"), buildpacks run on the (ephemeral) builder's
own file system, assembled from its layers extracted once each (``cnb.rootfs``), as the builder's
CNB user (``CNB_USER_ID``/``CNB_GROUP_ID``; pack's ``--uid``/``--gid`` override), with the image's
``Env`` (its ``PATH``) as the environment the lifecycle's include-list is cut from. The scratch
directories appear at ``/layers``, ``/workspace`` and ``/platform``, owned by that user; volumes
where the user asked. Of the host they get only the proxy variables and, with network, its
``/etc/resolv.conf`` and ``/etc/hosts``: everything else they write is gone when the phase ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocibuild.cnb.descriptor import KIND_EXTENSION, BuildpackStore, escape_id
from ocibuild.cnb.rootfs import RootFS
from ocibuild.cnb.sandbox import NETWORKS, Mount, Sandbox
from ocibuild.errors import UsageError
from ocibuild.oci.manifest import ImageConfig

ISOLATIONS = ("namespace", "none")
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")
HOSTNAME = "ocibuild"
IO_DIR = "/tmp/.ocibuild"
"""Where buildpacks see the plans ocibuild writes for them (lifecycle: a temp dir of the container)."""
RESERVED = ("/cnb", "/layers", "/workspace", "/platform", "/proc", "/dev")


@dataclass(frozen=True)
class Volume:
    """pack's ``--volume HOST:TARGET[:ro|:rw]`` (read-only unless ``:rw``)."""

    source: Path
    target: str
    writable: bool = False

    @classmethod
    def parse(cls, text: str) -> "Volume":
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"--volume {text!r}: expected HOST:TARGET[:ro|:rw]")
        mode = parts[2] if len(parts) == 3 else "ro"
        if mode not in ("ro", "rw"):
            raise UsageError(f"--volume {text!r}: mode must be ro or rw, not {mode!r}")
        source = Path(parts[0]).expanduser().absolute()
        if not source.exists():
            raise UsageError(f"--volume {text!r}: {source} does not exist")
        target = os.path.normpath(parts[1])
        if not target.startswith("/") or ".." in target.split("/"):
            raise UsageError(f"--volume {text!r}: the target must be an absolute path")
        if target == "/" or any(target == r or target.startswith(r + "/") for r in RESERVED):
            raise UsageError(f"--volume {text!r}: mounting to {target} is not allowed")
        return cls(source, target, mode == "rw")


@dataclass(frozen=True)
class BuildEnvironment:
    """What a phase needs to run buildpack code: the sandbox, the buildpacks, the base environment."""

    sandbox: Sandbox
    buildpacks: BuildpackStore
    image_env: Mapping[str, str]
    uid: int
    gid: int
    layers: Path
    workspace: Path
    platform: Path
    build_config: Path | None = None  # the builder's /cnb/build-config (builder.toml [[build.env]])
    io: Path | None = None  # where plans for buildpacks are written (shown at IO_DIR)
    extensions: BuildpackStore | None = None  # the builder's /cnb/extensions

    @property
    def owner(self) -> tuple[int, int] | None:
        return (self.uid, self.gid) if self.owns_files else None

    @property
    def owns_files(self) -> bool:
        """Whether host files must be chowned to the build user (as root: no user namespace maps them)."""
        return self.sandbox.mode == "root"


def _passwd_home(rootfs: RootFS, uid: int) -> str:
    """The user's home as a container runtime finds it: ``/etc/passwd`` of the image, else ``/``."""
    for line in (rootfs.read_text("/etc/passwd") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid):
            return fields[5] or "/"
    return "/"


def image_env(config: ImageConfig, rootfs: RootFS, uid: int, host_env: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: the image's ``Env``, ``HOME`` and ``HOSTNAME`` as a runtime sets
    them, and the host's proxy variables (pack passes those on). Nothing else of the host."""
    env = dict(config.iter_env())
    env.setdefault("HOME", _passwd_home(rootfs, uid))
    env["HOSTNAME"] = HOSTNAME
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update({k: host_env[k] for k in PROXY_VARS if k in host_env and k not in env})
    return env


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything below it to the build user (the lifecycle runs as it)."""
    os.lchown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(top, name), uid, gid)


def check_choices(network: str, isolation: str, uid: int | None, gid: int | None) -> None:
    """The environment flags, refused in one line before anything is fetched or built."""
    if network not in NETWORKS:
        raise UsageError(f"--network {network!r}: expected one of {', '.join(NETWORKS)}")
    if isolation not in ISOLATIONS:
        raise UsageError(f"--isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")
    if uid == 0 or gid == 0:
        raise UsageError("the build user must not be root (CNB_USER_ID/CNB_GROUP_ID or --uid/--gid is 0)")


def check_in_builder(rootfs: RootFS) -> None:
    """``--isolation none`` only where this machine is that builder image (its ``/cnb``)."""
    why = _same_cnb(rootfs)
    if why is not None:
        raise UsageError(f"--isolation none runs buildpacks on this machine, which is allowed only inside the "
                         f"builder image itself, and {why}; drop --isolation none")


def _same_cnb(rootfs: RootFS) -> str | None:
    """Why this machine's ``/cnb`` is not the builder's (None when it is): ``order.toml`` and the
    buildpack directories are compared, as a CI job whose image is the builder has them."""
    ours = Path("/cnb/order.toml")
    theirs = rootfs.find("/cnb/order.toml")
    if not ours.is_file():
        return "this machine has no /cnb/order.toml"
    if theirs is None or theirs.read_bytes() != ours.read_bytes():
        return "/cnb/order.toml differs from the builder's"
    return None


def prepare(
    *,
    rootfs: RootFS,
    config: ImageConfig,
    uid: int,
    gid: int,
    layers: Path,
    workspace: Path,
    platform: Path,
    io: Path,
    image_layers: str = "/layers",
    image_workspace: str = "/workspace",
    volumes: Sequence[Volume] = (),
    network: str = "host",
    isolation: str = "namespace",
    host_env: Mapping[str, str] | None = None,
) -> BuildEnvironment:
    """The environment of one build; refuses what it cannot honour before any buildpack runs."""
    check_choices(network, isolation, uid, gid)
    env = image_env(config, rootfs, uid, os.environ if host_env is None else host_env)
    if isolation == "none":
        return _unisolated(rootfs, env, uid, gid, layers, workspace, platform, io, volumes, network)
    mode = "root" if os.geteuid() == 0 else "user"
    mounts = (Mount(layers, image_layers), Mount(workspace, image_workspace), Mount(platform, "/platform", False),
              Mount(io, IO_DIR),
              *(Mount(v.source, v.target, v.writable) for v in volumes))
    sandbox = Sandbox(
        mounts, mode, rootfs, uid=uid, gid=gid, isolate=True, network=network, hostname=HOSTNAME,
        readonly_root=mode == "user", home=env["HOME"],
        files=tuple((f, f) for f in HOST_FILES if network == "host" and os.path.isfile(f)),
    )

    def locate(bp_id: str, version: str) -> Path | None:
        return rootfs.find(f"/cnb/buildpacks/{escape_id(bp_id)}/{version}")

    def locate_extension(ext_id: str, version: str) -> Path | None:
        return rootfs.find(f"/cnb/extensions/{escape_id(ext_id)}/{version}")

    store = BuildpackStore(Path("/cnb/buildpacks"), locate)
    extensions = BuildpackStore(Path("/cnb/extensions"), locate_extension, KIND_EXTENSION)
    built = BuildEnvironment(sandbox, store, env, uid, gid, layers, workspace, platform,
                             rootfs.find("/cnb/build-config"), io, extensions)
    if built.owns_files:
        for path in (layers, platform, io):
            chown_tree(path, uid, gid)
    return built


def _unisolated(rootfs: RootFS, env: dict[str, str], uid: int, gid: int, layers: Path, workspace: Path,
                platform: Path, io: Path, volumes: Sequence[Volume], network: str) -> BuildEnvironment:
    """``--isolation none``: only when ocibuild already runs in that builder image (a CI job whose
    image is the builder), where this machine's ``/cnb`` is the builder's."""
    check_in_builder(rootfs)
    if volumes or network != "host":
        raise UsageError("--isolation none cannot honour --volume or --network none")
    if os.getuid() != uid:
        raise UsageError(f"--isolation none runs as this user (uid {os.getuid()}), not the builder's {uid}")
    sandbox = Sandbox((), "direct")
    store = BuildpackStore(Path("/cnb/buildpacks"))
    return BuildEnvironment(sandbox, store, {**env, **{k: v for k, v in os.environ.items() if k == "HOME"}},
                            uid, gid, layers, workspace, platform, Path("/cnb/build-config"), io,
                            BuildpackStore(Path("/cnb/extensions"), kind=KIND_EXTENSION))
