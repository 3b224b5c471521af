"""Image extensions (Platform API 0.13, issue 10 item 4), end to end with no daemon.

A busybox builder made by ``ocibuild builder create`` from a builder.toml with ``[[extensions]]`` and
``[[order-extensions]]``: ``test/ext-build`` (a bin/detect that provides what the app buildpack
requires, a bin/generate writing a build.Dockerfile with ARG/ENV/RUN/COPY/LABEL/USER and an
extend-config.toml build arg) and ``test/ext-run`` (no bin/detect, a static generate/run.Dockerfile
that switches the run image to one on the real registry). The build publishes to the registry; the
buildpack sees what the RUN made (and not the file it removed), the image sits on the switched run
image, skopeo reads it, umoci unpacks it, podman runs it; the ephemeral build image is in the
ledger and gone from the scratch layout after the build. Refusals are one line.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocibuild.cnb.dockerfile import DockerfileError, parse_dockerfile
from ocibuild.cnb.extend import snapshot_entries
from ocibuild.store.layout import LayoutStore

from support.foreign_builder import _base_image
from support.tools import read_with_peers, require_tool

APP_BUILDPACK = """api = "0.12"
[buildpack]
id = "test/app"
version = "1.0.0"
[[targets]]
os = "linux"
"""
APP_DETECT = """#!/bin/sh
cat > "$2" <<'EOF'
[[requires]]
name = "ext-tools"
EOF
"""
# What the buildpack saw of the extended build image, into the probe volume and a launch layer.
APP_BUILD = """#!/bin/sh
set -e
{
  echo "marker=$(cat /opt/ext/marker)"
  echo "hello=$(cat /opt/ext/hello.txt)"
  echo "greeting=$EXT_GREETING"
  echo "tool=$(ext-tool)"
  echo "removed=$(test -e /etc/probe-marker && echo no || echo yes)"
  echo "user=$(id -u)"
  echo "plan=$(cat "$3" | tr '\\n' ' ')"
} > /probe/app.txt
mkdir -p "$CNB_LAYERS_DIR/web"
printf '[types]\nlaunch = true\n' > "$CNB_LAYERS_DIR/web.toml"
cat > "$CNB_LAYERS_DIR/launch.toml" <<'EOF'
[[processes]]
type = "web"
command = ["/bin/sh", "-c", "echo extended app"]
default = true
EOF
"""
EXT_BUILD_TOML = """api = "0.12"
[extension]
id = "test/ext-build"
version = "1.0.0"
name = "build image extension"
"""
EXT_BUILD_DETECT = """#!/bin/sh
cat > "$CNB_BUILD_PLAN_PATH" <<'EOF'
[[provides]]
name = "ext-tools"
EOF
"""
EXT_GENERATE = """#!/bin/sh
set -e
out="$1"
test "$out" = "$CNB_OUTPUT_DIR"
mkdir -p "$out/context"
echo "copied from the context" > "$out/context/hello.txt"
cat "$CNB_BP_PLAN_PATH" > "$out/context/plan-seen.toml"
cat > "$out/extend-config.toml" <<'EOF'
[[build.args]]
name = "greeting"
value = "hello"
EOF
cat > "$out/build.Dockerfile" <<'EOF'
ARG base_image
FROM ${base_image}

USER root
ARG build_id=0
ARG greeting
ARG user_id
ARG group_id
ENV EXT_GREETING=${greeting} PATH=/opt/ext/bin:${PATH}
RUN mkdir -p /opt/ext/bin && printf '#!/bin/sh\\necho ext tool\\n' > /opt/ext/bin/ext-tool && \\
    chmod 755 /opt/ext/bin/ext-tool && echo "$greeting from build $build_id" > /opt/ext/marker && \\
    rm /etc/probe-marker && chown "$user_id:$group_id" /opt/ext
COPY hello.txt /opt/ext/hello.txt
LABEL io.example.extended=yes
USER ${user_id}:${group_id}
EOF
"""
EXT_RUN_TOML = """api = "0.12"
[extension]
id = "test/ext-run"
version = "1.0.0"
"""


@dataclass
class Lab:
    tmp: Path
    builder: str
    app: Path
    probe: Path
    scratch: Path
    run2: str  # the run image ext-run switches to (on the registry)
    registry_host: str

    def ocibuild(self, *args: str, check: bool = True, scratch: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OCIBUILD_SCRATCH": str(scratch or self.scratch)}
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "--insecure-registry", self.registry_host,
                               *args], capture_output=True, text=True, env=env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"ocibuild {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    def probed(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in (self.probe / "app.txt").read_text().splitlines())


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _extensions(root: Path, run2: str) -> tuple[Path, Path, Path]:
    app_bp, ext_build, ext_run = root / "app-bp", root / "ext-build", root / "ext-run"
    _write(app_bp / "buildpack.toml", APP_BUILDPACK)
    _write(app_bp / "bin" / "detect", APP_DETECT, 0o755)
    _write(app_bp / "bin" / "build", APP_BUILD, 0o755)
    _write(ext_build / "extension.toml", EXT_BUILD_TOML)
    _write(ext_build / "bin" / "detect", EXT_BUILD_DETECT, 0o755)
    _write(ext_build / "bin" / "generate", EXT_GENERATE, 0o755)
    _write(ext_run / "extension.toml", EXT_RUN_TOML)
    _write(ext_run / "generate" / "run.Dockerfile", f"ARG base_image\nFROM {run2}\n")
    return app_bp, ext_build, ext_run


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, registry) -> Lab:
    tmp = tmp_path_factory.mktemp("extensions")
    layout = tmp / "images"
    store = LayoutStore(layout, create=True)
    _base_image(store, "base", 1234, 1234, labels={})
    _base_image(store, "run2", 1234, 1234, labels={"io.example.run-image": "two"})
    run2 = f"{registry.host}/test/ext-run2:1"
    lab = Lab(tmp, f"oci:{layout}:builder", tmp / "app", tmp / "probe", tmp / "scratch", run2, registry.host)
    lab.ocibuild("copy", f"oci:{layout}:run2", run2)
    app_bp, ext_build, ext_run = _extensions(tmp / "modules", run2)
    config = tmp / "builder.toml"
    config.write_text(f"""
[[buildpacks]]
uri = "{app_bp}"

[[extensions]]
uri = "{ext_build}"

[[extensions]]
uri = "{ext_run}"

[[order]]
[[order.group]]
id = "test/app"

[[order-extensions]]
[[order-extensions.group]]
id = "test/ext-build"
[[order-extensions.group]]
id = "test/ext-run"

[build]
image = "oci:{layout}:base"

[[run.images]]
image = "oci:{layout}:base"
""")
    lab.app.mkdir()
    (lab.app / "README").write_text("an app\n")
    lab.probe.mkdir()
    lab.probe.chmod(0o777)
    lab.ocibuild("builder", "create", "--config", str(config), "--tag", lab.builder)
    return lab


def test_builder_create_lays_out_extensions_as_pack_does(lab: Lab) -> None:
    info = json.loads(lab.ocibuild("builder", "inspect", lab.builder, "--json").stdout)
    assert [(e["id"], e["version"]) for e in info["extensions"]] == [("test/ext-build", "1.0.0"),
                                                                     ("test/ext-run", "1.0.0")]
    assert [[r["id"] for r in g["group"]] for g in info["detection_order_extensions"]] == [
        ["test/ext-build", "test/ext-run"]]
    config = json.loads(lab.ocibuild("config", lab.builder).stdout)
    labels = config["config"]["Labels"]
    layers = json.loads(labels["io.buildpacks.extension.layers"])
    assert set(layers) == {"test/ext-build", "test/ext-run"}
    assert layers["test/ext-build"]["1.0.0"]["layerDiffID"].startswith("sha256:")
    assert json.loads(labels["io.buildpacks.buildpack.order-extensions"]) == [  # as written, like the order label
        {"group": [{"id": "test/ext-build"}, {"id": "test/ext-run"}]}]
    meta = json.loads(labels["io.buildpacks.builder.metadata"])
    assert [e["id"] for e in meta["extensions"]] == ["test/ext-build", "test/ext-run"]
    text = lab.ocibuild("builder", "inspect", lab.builder).stdout
    assert "Extensions:" in text and "Detection Order (Extensions):" in text


@pytest.fixture(scope="module")
def built(lab: Lab) -> dict:
    """One build published to the registry; its --json outcome, the config and the stderr."""
    image = f"{lab.registry_host}/test/ext-app:1"
    proc = lab.ocibuild("build", image, "--builder", lab.builder, "--path", str(lab.app), "--publish",
                        "--volume", f"{lab.probe}:/probe:rw", "--json")
    outcome = json.loads(proc.stdout)
    config = json.loads(lab.ocibuild("config", f"{image.rsplit(':', 1)[0]}@{outcome['digest']}").stdout)
    return {"image": image, "outcome": outcome, "config": config, "stderr": proc.stderr}


def test_build_dockerfile_runs_in_the_build_environment_before_the_buildpacks(lab: Lab, built: dict) -> None:
    seen = lab.probed()
    assert seen["marker"].startswith("hello from build ")  # ARG from extend-config.toml, RUN as root
    assert len(seen["marker"].removeprefix("hello from build ")) == 36  # build_id: a fresh UUID
    assert seen["hello"] == "copied from the context"  # COPY from the extension's context
    assert seen["tool"] == "ext tool"  # ENV PATH of the build.Dockerfile reaches the buildpacks...
    assert seen["greeting"] == ""  # ...other variables do not, as with any image env (the lifecycle's include list)
    assert seen["removed"] == "yes"  # the RUN's rm is a whiteout in the extended build image
    assert seen["user"] == "1234"  # buildpacks still run as the CNB user
    assert "ext-tools" not in seen["plan"]  # what the extension provided is not the buildpack's to build
    assert built["outcome"]["group"] == ["test/app@1.0.0"]
    assert "extensions: test/ext-build@1.0.0, test/ext-run@1.0.0" in built["stderr"]


def test_run_dockerfile_from_switches_the_run_image(lab: Lab, built: dict) -> None:
    labels = built["config"]["config"]["Labels"]
    assert labels["io.example.run-image"] == "two"  # the run image's labels: run2, not base
    meta = json.loads(labels["io.buildpacks.lifecycle.metadata"])
    assert meta["runImage"]["image"] == lab.run2
    assert meta["runImage"]["reference"].startswith(lab.run2.rsplit(":", 1)[0])
    assert "io.example.extended" not in labels  # build-image labels stay on the build image
    assert f"warning: {lab.run2} is not a run image of the builder" in built["stderr"]


def test_the_extended_build_image_is_ledgered_and_collected(lab: Lab, built: dict) -> None:
    extended = built["outcome"]["extended_build_image"]
    gc = built["outcome"]["gc"]
    assert extended in gc["removed"]  # recorded as ephemeral, collected once the build's lease was released
    assert len(gc["removed_rootfs"]) == 1  # the extension's layer, extracted for the buildpacks
    algorithm, encoded = extended.split(":")
    assert not (lab.scratch / "layout" / "blobs" / algorithm / encoded).exists()
    index = json.loads((lab.scratch / "layout" / "index.json").read_text())
    assert extended not in {m["digest"] for m in index["manifests"]}


def test_the_image_is_read_by_skopeo_and_umoci_and_runs_under_podman(lab: Lab, built: dict) -> None:
    podman = require_tool("podman")
    ref = f"{built['image'].rsplit(':', 1)[0]}@{built['outcome']['digest']}"
    inspected, bundle = read_with_peers(ref, lab.tmp)
    assert inspected["Digest"] == built["outcome"]["digest"]
    assert (bundle / "rootfs" / "etc" / "probe-marker").exists()  # the run image is not the extended one
    assert not (bundle / "rootfs" / "opt" / "ext").exists()
    run = [podman, "run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
           "--ulimit", "nproc=4096:4096", "--tls-verify=false"]
    try:
        out = subprocess.run([*run, ref], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "extended app"
    finally:
        subprocess.run([podman, "rmi", "-f", ref], capture_output=True, timeout=120)


@pytest.mark.parametrize(("name", "dockerfile", "says"), [
    ("cmd", 'ARG base_image\nFROM ${base_image}\nCMD ["/bin/sh"]\n', "CMD is not allowed"),
    ("stages", "ARG base_image\nFROM ${base_image}\nFROM ${base_image}\n", "a second FROM"),
    ("no-arg", "FROM ${base_image}\nRUN true\n", "did not start with required ARG"),
    ("failing-run", "ARG base_image\nFROM ${base_image}\nUSER root\nRUN exit 3\n", "RUN failed (exit status 3)"),
])
def test_a_refused_or_failing_build_dockerfile_is_one_line_and_writes_no_image(lab: Lab, name: str, dockerfile: str,
                                                                              says: str) -> None:
    root = lab.tmp / name
    _write(root / "ext" / "extension.toml", EXT_RUN_TOML.replace("test/ext-run", f"test/{name}"))
    _write(root / "ext" / "detect" / "plan.toml", '[[provides]]\nname = "ext-tools"\n')  # what the app requires
    _write(root / "ext" / "generate" / "build.Dockerfile", dockerfile)
    out = lab.tmp / f"refused-{name}"
    proc = lab.ocibuild("build", f"oci:{out}:x", "--builder", lab.builder, "--path", str(lab.app),
                        "--volume", f"{lab.probe}:/probe:rw", "--extension", str(root / "ext"), check=False,
                        scratch=lab.tmp / f"scratch-{name}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert says in last and "Traceback" not in proc.stderr
    assert not out.exists()


def test_an_extension_that_requires_is_an_error(lab: Lab) -> None:
    root = lab.tmp / "requires"
    _write(root / "ext" / "extension.toml", EXT_RUN_TOML.replace("test/ext-run", "test/requires"))
    _write(root / "ext" / "detect" / "plan.toml", '[[requires]]\nname = "x"\n')
    proc = lab.ocibuild("build", f"oci:{lab.tmp}/req:x", "--builder", lab.builder, "--path", str(lab.app),
                        "--volume", f"{lab.probe}:/probe:rw", "--extension", str(root / "ext"),
                        "--extension", "test/ext-build", scratch=lab.tmp / "scratch-requires")
    assert "extensions: test/ext-build@1.0.0\n" in proc.stderr  # optional: the group passes without it
    alone = lab.ocibuild("build", f"oci:{lab.tmp}/req:y", "--builder", lab.builder, "--path", str(lab.app),
                         "--extension", str(root / "ext"), scratch=lab.tmp / "scratch-requires", check=False)
    assert alone.returncode == 20  # nothing provides what the app requires: no group passed
    assert alone.stderr.strip().splitlines()[-1] == "ocibuild: error: No buildpack groups passed detection."


# -- one function's rules -------------------------------------------------------------------------------
def test_run_dockerfile_with_more_than_from_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.Dockerfile"
    path.write_text("ARG base_image\nFROM ${base_image}\nRUN echo extend\n")
    with pytest.raises(DockerfileError, match="extending the run image is not supported"):
        parse_dockerfile(path, "run")
    path.write_text("ARG base_image\nFROM registry.example/run:2\n")
    df = parse_dockerfile(path, "run")
    assert df.switches_image and df.image("registry.example/run:1") == "registry.example/run:2"
    path.write_text("ARG base_image\nFROM ${base_image}\n")
    assert parse_dockerfile(path, "run").image("registry.example/run:1") == "registry.example/run:1"


def test_build_dockerfile_cannot_switch_the_build_image(tmp_path: Path) -> None:
    path = tmp_path / "build.Dockerfile"
    path.write_text("ARG base_image\nFROM ubuntu:24.04\n")
    with pytest.raises(DockerfileError, match="cannot switch it"):
        parse_dockerfile(path, "build")
    path.write_text("ARG base_image\nFROM ${base_image}\nADD https://example.com/x /x\n")
    with pytest.raises(DockerfileError, match="ADD is not supported"):
        parse_dockerfile(path, "build")
    path.write_text("# comment\nARG base_image\nFROM ${base_image}\nRUN echo a \\\n  b\n")
    df = parse_dockerfile(path, "build")
    assert [(i.keyword, i.text, i.line) for i in df.instructions] == [("RUN", "echo a  b", 4)]


def test_snapshot_turns_overlay_whiteouts_into_wh_entries(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test makes an overlay whiteout (a 0/0 device): run the suite as root, as CI does"
    diff = tmp_path / "diff"
    (diff / "etc").mkdir(parents=True)
    os.mknod(diff / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (diff / "opt").mkdir()
    os.setxattr(diff / "opt", "user.overlay.opaque", b"y")
    (diff / "opt" / "new").write_text("x")
    entries = {e.path: e for e in snapshot_entries(diff, rootless=False)}
    assert sorted(entries) == ["etc", "etc/.wh.gone", "opt", "opt/.wh..wh..opq", "opt/new"]
    assert entries["etc/.wh.gone"].size == 0 and entries["opt/new"].size == 1
