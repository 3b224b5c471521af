"""The build-image extension: the ``build.Dockerfile``s extensions generated, applied without a daemon.

Where the lifecycle's extender hands them to kaniko, ocibuild runs each ``RUN`` in the build environment
itself: the builder's file system as an overlay whose upper directory is kept, as the user ``docker
build`` would (the image config's ``User`` until a ``USER`` changes it: extensions say ``USER root`` to
install packages and ``USER ${user_id}:${group_id}`` at the end), in the same namespaces buildpacks get,
before any buildpack runs. Build args: ``base_image``, ``build_id`` (a fresh UUID), ``user_id``,
``group_id`` and ``extend-config.toml``'s ``[[build.args]]``. What one extension's Dockerfile changed
(its upper directory, overlay whiteouts turned into ``.wh.`` entries) becomes one layer; the layers, the
``ENV`` and ``LABEL`` changes make the ephemeral build image (``ExtendedImage``), which the caller
writes to the scratch layout under the build's lease (ledger role ``extended-build-image``) so that it
is collected after the build like the ephemeral builder. The buildpacks then build in it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from ocibuild.cnb.dockerfile import BASE_IMAGE_ARG, DockerfileError, Instruction, parse_arg, parse_pairs, substitute
from ocibuild.cnb.errors import BuildpackError
from ocibuild.cnb.generate import Generated
from ocibuild.cnb.rootfs import RootFS
from ocibuild.cnb.sandbox import Sandbox, exit_reason
from ocibuild.layer import TarEntry, write_layer
from ocibuild.layer.compress import LayerResult
from ocibuild.layer.extract import OVERLAY_OPAQUE_XATTR
from ocibuild.layer.tarwriter import DIR, FILE, SYMLINK
from ocibuild.oci import mediatype as mt
from ocibuild.oci.manifest import ImageConfig

ROLE_EXTENDED_BUILD_IMAGE = "extended-build-image"
DEFAULT_SHELL = ("/bin/sh", "-c")
_HISTORY_TIME = "1980-01-01T00:00:01Z"
_OPAQUE_XATTRS = (OVERLAY_OPAQUE_XATTR, "trusted.overlay.opaque")


class ExtendError(BuildpackError):
    """A build.Dockerfile's RUN failed, or an instruction could not be carried out."""


@dataclass(frozen=True)
class ExtendedLayer:
    extension: str
    result: LayerResult


@dataclass(frozen=True)
class ExtendedImage:
    """The build image after the extensions: its config and the new layers (temp files, unpublished)."""

    config: ImageConfig
    layers: tuple[ExtendedLayer, ...]


@dataclass
class _State:
    """What a Dockerfile's instructions change, carried from one extension's Dockerfile to the next."""

    env: dict[str, str]
    labels: dict[str, str]
    user: str
    workdir: str
    shell: tuple[str, ...] = DEFAULT_SHELL
    args: dict[str, str] = field(default_factory=dict)  # ARGs declared in the current Dockerfile


@dataclass(frozen=True)
class Extender:
    """Applies build.Dockerfiles on ``rootfs``; ``sandbox`` is the build environment's (its mode,
    network, files), re-made per RUN for root and the kept upper directory."""

    rootfs: RootFS
    config: ImageConfig
    sandbox: Sandbox
    work: Path
    base_image: str  # the build image's name: ${base_image}
    uid: int  # CNB user (build args user_id / group_id)
    gid: int
    output: TextIO = field(default_factory=lambda: sys.stderr)
    say: Callable[[str], None] = lambda _m: None

    def apply(self, generated: Sequence[Generated]) -> ExtendedImage:
        cfg = self.config.to_dict().get("config") or {}
        state = _State(env=dict(self.config.iter_env()), labels=dict(cfg.get("Labels") or {}),
                       user=str(cfg.get("User") or ""), workdir=str(cfg.get("WorkingDir") or "/"))
        lower = list(self.rootfs.layers)
        layers: list[ExtendedLayer] = []
        build_id = str(uuid.uuid4())  # kaniko's cache-busting arg; fresh for every build
        for i, gen in enumerate(generated):
            assert gen.build is not None
            upper = self.work / f"extend-{i}"
            upper.mkdir(parents=True)
            base_args = {BASE_IMAGE_ARG: self.base_image, "build_id": build_id, "user_id": str(self.uid),
                         "group_id": str(self.gid), **dict(gen.build_args)}
            state.args = {}
            for instruction in gen.build.instructions:
                self._instruction(gen, instruction, state, base_args, RootFS(tuple(lower)), upper)
            if resolve_user(state.user, RootFS(tuple(lower)))[0] == 0:
                self.say(f"warning: extension {gen.extension}: build.Dockerfile leaves the user as root "
                         "(buildpacks still run as the CNB user)")
            diff = upper / "diff"
            if diff.is_dir() and any(diff.iterdir()):
                result = write_layer(snapshot_entries(diff, self.sandbox.mode == "user"),
                                     tmp_dir=self.work, media_type=mt.OCI_LAYER_GZIP)
                layers.append(ExtendedLayer(str(gen.extension), result))
                lower.append(diff)
        return ExtendedImage(self._config(state, layers), tuple(layers))

    # -- instructions ------------------------------------------------------------------------------
    def _instruction(self, gen: Generated, ins: Instruction, state: _State, build_args: Mapping[str, str],
                     rootfs: RootFS, upper: Path) -> None:
        values = {**state.env, **state.args}
        where = f"extension {gen.extension}: build.Dockerfile:{ins.line}"
        if ins.keyword == "ARG":
            name, default = parse_arg(ins)
            state.args[name] = build_args.get(name, substitute(default, values) if default is not None else "")
        elif ins.keyword == "ENV":
            for key, value in parse_pairs(ins):
                state.env[key] = substitute(value, values)
                values[key] = state.env[key]
        elif ins.keyword == "LABEL":
            for key, value in parse_pairs(ins):
                state.labels[substitute(key, values)] = substitute(value, values)
        elif ins.keyword == "USER":
            state.user = substitute(ins.text, values)
        elif ins.keyword == "WORKDIR":
            path = substitute(ins.text, values)
            state.workdir = os.path.normpath(os.path.join(state.workdir, path))
            if rootfs.find(state.workdir) is None:
                self._run(("/bin/mkdir", "-p", state.workdir), "/", "0", state, rootfs, upper, gen, where)
        elif ins.keyword == "SHELL":
            assert ins.exec_form is not None
            state.shell = ins.exec_form
        elif ins.keyword == "RUN":
            argv = ins.exec_form if ins.exec_form is not None else (*state.shell, ins.text)
            self.say(f"{where}: RUN {ins.text}")
            self._run(argv, state.workdir, state.user, state, rootfs, upper, gen, where)
        elif ins.keyword == "COPY":
            self._copy(gen, ins, state, values, rootfs, upper, where)
        else:  # parse_dockerfile refused everything else
            raise DockerfileError(f"{where}: {ins.keyword} is not supported")

    def _run(self, argv: Sequence[str], cwd: str, user: str, state: _State, rootfs: RootFS, upper: Path,
             gen: Generated, where: str) -> None:
        uid, gid = resolve_user(user, rootfs)
        sandbox = replace(self.sandbox, rootfs=rootfs, uid=uid, gid=gid, upper=str(upper), readonly_root=False,
                          mounts=())
        env = {**state.env, **state.args}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOME", "/root" if uid == 0 else "/")
        proc = sandbox.run(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output.write(proc.stdout.decode("utf-8", "replace"))
        self.output.flush()
        if proc.returncode != 0:
            raise ExtendError(f"{where}: RUN failed ({exit_reason(proc.returncode)})",
                              buildpack=gen.extension.id)

    def _copy(self, gen: Generated, ins: Instruction, state: _State, values: Mapping[str, str], rootfs: RootFS,
              upper: Path, where: str) -> None:
        words = [substitute(w, values) for w in ins.words()]
        chown = None
        while words and words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--chown="):
                chown = resolve_user(flag.split("=", 1)[1], rootfs)
            else:
                raise DockerfileError(f"{where}: COPY {flag} is not supported by ocibuild")
        if len(words) < 2:
            raise DockerfileError(f"{where}: COPY needs a source and a destination")
        *sources, dest = words
        target = os.path.normpath(os.path.join(state.workdir, dest))
        context = gen.context.resolve()
        diff = upper / "diff"
        for source in sources:
            src = (context / source.lstrip("/")).resolve()
            if src != context and context not in src.parents:
                raise DockerfileError(f"{where}: COPY {source}: outside the extension's context")
            if not src.exists():
                raise DockerfileError(f"{where}: COPY {source}: not in the extension's context")
            into_dir = dest.endswith("/") or len(sources) > 1 or src.is_dir()
            final = target + "/" + src.name if into_dir and not src.is_dir() else target
            _copy_into(src, diff / final.lstrip("/"), chown or (0, 0), self.sandbox.mode == "user")

    def _config(self, state: _State, layers: Sequence[ExtendedLayer]) -> ImageConfig:
        doc = self.config.to_dict()
        cfg = doc.setdefault("config", {}) or {}
        doc["config"] = cfg
        cfg["Env"] = [f"{k}={v}" for k, v in state.env.items()]
        cfg["Labels"] = dict(state.labels)
        rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [str(layer.result.diff_id) for layer in layers]
        if isinstance(doc.get("history"), list):
            doc["history"] = doc["history"] + [
                {"created": _HISTORY_TIME, "created_by": f"ocibuild: extension {layer.extension} build.Dockerfile"}
                for layer in layers]
        return ImageConfig.build(doc, self.config.media_type if self.config.media_type in mt.CONFIG_TYPES
                                 else mt.OCI_CONFIG)


def resolve_user(user: str, rootfs: RootFS) -> tuple[int, int]:
    """``USER name|uid[:group|gid]`` as the image's ``/etc/passwd`` and ``/etc/group`` say; "" is root."""
    name, _, group = user.partition(":")
    if not name:
        return 0, 0
    passwd = _table(rootfs.read_text("/etc/passwd"))
    uid = gid = None
    if name.isdigit():
        uid = int(name)
        gid = next((int(f[3]) for f in passwd if f[2] == name and f[3].isdigit()), uid)
    else:
        entry = next((f for f in passwd if f[0] == name), None)
        if entry is None:
            raise DockerfileError(f"USER {user}: no user {name!r} in the build image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = next((f for f in _table(rootfs.read_text("/etc/group")) if f[0] == group), None)
            if entry is None:
                raise DockerfileError(f"USER {user}: no group {group!r} in the build image's /etc/group")
            gid = int(entry[2])
    return uid, gid


def _table(text: str | None) -> list[list[str]]:
    return [line.split(":") for line in (text or "").splitlines()
            if line.count(":") >= 3 and line.split(":")[2].isdigit()]


def _copy_into(src: Path, dest: Path, owner: tuple[int, int], rootless: bool) -> None:
    """Copy a file or tree into the upper directory as ``owner`` (as root; rootless: ours, seen as root)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        copied = [dest, *dest.rglob("*")]
    else:
        shutil.copy2(src, dest, follow_symlinks=False)
        copied = [dest]
    if not rootless:
        for path in copied:
            os.lchown(path, *owner)


def snapshot_entries(diff: Path, rootless: bool) -> list[TarEntry]:
    """The entries of an overlay upper directory as a layer: a whiteout (char device 0/0) becomes
    ``.wh.<name>``, an opaque directory gets ``.wh..wh..opq``; owners kept (rootless: root, which is
    what the user namespace showed the commands)."""
    out: list[TarEntry] = []
    for top, dirs, files in os.walk(diff):
        dirs.sort()
        rel_top = os.path.relpath(top, diff)
        if rel_top != "." and _opaque(top):
            out.append(TarEntry.file(f"{rel_top}/.wh..wh..opq", b""))
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            entry = _entry(full, rel, rootless)
            if entry is not None:
                out.append(entry)
    return out


def _opaque(path: str) -> bool:
    for attr in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _entry(full: str, rel: str, rootless: bool) -> TarEntry | None:
    st = os.lstat(full)
    owner = {"uid": 0, "gid": 0} if rootless else {"uid": st.st_uid, "gid": st.st_gid}
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        parent, _, name = rel.rpartition("/")
        return TarEntry.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")
    if stat.S_ISDIR(st.st_mode):
        return TarEntry(rel, DIR, mode, **owner)
    if stat.S_ISLNK(st.st_mode):
        return TarEntry(rel, SYMLINK, mode, linkname=os.readlink(full), **owner)
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return TarEntry(rel, FILE, mode, st.st_size, opener=lambda: open(full, "rb"), link_key=key,
                        fingerprint=f"{st.st_size}:{st.st_mtime_ns}", **owner)
    return None  # sockets, fifos and devices a RUN left are not image content
