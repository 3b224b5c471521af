"""Platform API 0.13–0.15 and Buildpack API 0.12 as ocibuild implements them (issue 10, item 1).

End to end on a busybox builder made by ``ocibuild builder create`` from a builder.toml with
``[system]`` buildpacks, whose run image has no distro labels: ``--exec-env``/``CNB_EXEC_ENV`` and
what it filters, system buildpacks around every group, target data from the build image's
os-release, the run image chosen from run.toml's mirrors, the APIs images and ``builder inspect``
declare. The rules that are one function's behaviour are tested on that function.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocibuild.cnb.apis import BUILDPACK_APIS, PLATFORM_API, PLATFORM_APIS
from ocibuild.cnb.builder import RunImage
from ocibuild.cnb.descriptor import Group, GroupElement, Order
from ocibuild.cnb.rootfs import RootFS
from ocibuild.cnb.runimage import os_release_distro, run_image_candidates, with_build_os_release
from ocibuild.cnb.descriptor import Target
from ocibuild.cnb.system import SystemBuildpacks, parse_system, read_system_toml
from ocibuild.errors import UsageError
from ocibuild.store.layout import LayoutStore

from support.foreign_builder import OS_RELEASE, _base_image

BUILDPACK_TOML = """api = "0.12"
[buildpack]
id = "{id}"
version = "1.0.0"
{extra}
[[targets]]
os = "linux"
"""
# Each buildpack's build records what the lifecycle gave it into the /probe volume.
RECORD = """#!/bin/sh
set -e
{{
  echo "exec_env=$CNB_EXEC_ENV"
  echo "distro_name=$CNB_TARGET_DISTRO_NAME"
  echo "distro_version=$CNB_TARGET_DISTRO_VERSION"
}} > /probe/{name}.txt
"""
APP_LAUNCH = """cat > "$CNB_LAYERS_DIR/launch.toml" <<'EOF'
[[processes]]
type = "web"
command = ["/bin/sh", "-c", "echo web"]
default = true

[[processes]]
type = "tests"
command = ["/bin/sh", "-c", "echo tests"]
exec-env = ["test"]

[[processes]]
type = "worker"
command = ["/bin/sh", "-c", "echo worker"]
exec-env = ["production"]
EOF
"""


def _buildpack(root: Path, bp_id: str, *, extra: str = "", build_tail: str = "", detect: str = "exit 0") -> Path:
    name = bp_id.replace("/", "_")
    path = root / name
    (path / "bin").mkdir(parents=True)
    (path / "buildpack.toml").write_text(BUILDPACK_TOML.format(id=bp_id, extra=extra))
    (path / "bin" / "detect").write_text(f"#!/bin/sh\n{detect}\n")
    (path / "bin" / "build").write_text(RECORD.format(name=name) + build_tail)
    for script in ("detect", "build"):
        (path / "bin" / script).chmod(0o755)
    return path


@dataclass
class Lab:
    tmp: Path
    builder: str
    app: Path
    probe: Path
    scratch: Path

    def ocibuild(self, *args: str, check: bool = True, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if k != "CNB_EXEC_ENV"}
        full.update(OCIBUILD_SCRATCH=str(self.scratch), **(env or {}))
        proc = subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *args], capture_output=True, text=True,
                              env=full, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"ocibuild {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    def build(self, out: str, *extra: str, env: dict[str, str] | None = None, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        for old in self.probe.iterdir():
            old.unlink()
        return self.ocibuild("build", out, "--builder", self.builder, "--path", str(self.app),
                             "--volume", f"{self.probe}:/probe:rw", *extra, env=env, check=check)

    def record(self, bp_id: str) -> dict[str, str] | None:
        path = self.probe / f"{bp_id.replace('/', '_')}.txt"
        if not path.exists():
            return None
        return dict(line.split("=", 1) for line in path.read_text().splitlines())

    def config(self, ref: str) -> dict:
        return json.loads(self.ocibuild("config", ref).stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    tmp = tmp_path_factory.mktemp("platform-apis")
    layout = tmp / "images"
    _base_image(LayoutStore(layout, create=True), "base", 1234, 1234, labels={})
    bps = tmp / "buildpacks"
    paths = {
        "pre": _buildpack(bps, "test/sys-pre"),
        "post": _buildpack(bps, "test/sys-post", detect="exit 100"),  # optional: fails detection, group passes
        "app": _buildpack(bps, "test/app", build_tail=APP_LAUNCH),
        "only": _buildpack(bps, "test/test-only", extra='[[buildpack.exec-env]]\nname = "test"\n'),
    }
    config = tmp / "builder.toml"
    config.write_text("".join(f'[[buildpacks]]\nuri = "{p}"\n\n' for p in paths.values()) + f"""
[[order]]
[[order.group]]
id = "test/app"
[[order.group]]
id = "test/test-only"
optional = true

[system]
[system.pre]
buildpacks = [{{ id = "test/sys-pre", version = "1.0.0" }}]
[system.post]
buildpacks = [{{ id = "test/sys-post", version = "1.0.0", optional = true }}]

[build]
image = "oci:{layout}:base"

[[run.images]]
image = "oci:{layout}:base"
""")
    app = tmp / "app"
    app.mkdir()
    (app / "README").write_text("an app\n")
    probe = tmp / "probe"
    probe.mkdir()
    probe.chmod(0o777)
    lab = Lab(tmp, f"oci:{layout}:builder", app, probe, tmp / "scratch")
    lab.ocibuild("builder", "create", "--config", str(config), "--tag", lab.builder)
    return lab


def _build_md(config: dict) -> dict:
    return json.loads(config["config"]["Labels"]["io.buildpacks.build.metadata"])


def test_exec_env_defaults_to_production_and_filters_buildpacks_and_processes(lab: Lab) -> None:
    out = f"oci:{lab.tmp}/out:prod"
    proc = lab.build(out)
    assert lab.record("test/app")["exec_env"] == "production"
    assert lab.record("test/test-only") is None  # [[buildpack.exec-env]] test: not for production
    assert "group: test/sys-pre@1.0.0, test/app@1.0.0" in proc.stderr
    config = lab.config(out)
    assert [p["type"] for p in _build_md(config)["processes"]] == ["web", "worker"]
    assert config["config"]["Labels"]["io.buildpacks.exec-env"] == "production"


def test_exec_env_flag_and_variable_reach_buildpacks_and_keep_their_processes(lab: Lab) -> None:
    for how, args, env in (("flag", ("--exec-env", "test"), None), ("variable", (), {"CNB_EXEC_ENV": "test"})):
        out = f"oci:{lab.tmp}/out:test-{how}"
        proc = lab.build(out, *args, env=env)
        assert lab.record("test/app")["exec_env"] == "test", how
        assert lab.record("test/test-only")["exec_env"] == "test", how  # its environment: it runs
        assert "test/test-only@1.0.0" in proc.stderr, how
        config = lab.config(out)
        processes = _build_md(config)["processes"]
        assert [p["type"] for p in processes] == ["web", "tests"], how
        assert next(p for p in processes if p["type"] == "tests")["exec-env"] == ["test"]
        assert config["config"]["Labels"]["io.buildpacks.exec-env"] == "test"


def test_a_bad_exec_env_is_refused_in_one_line(lab: Lab) -> None:
    proc = lab.build(f"oci:{lab.tmp}/out:bad", "--exec-env", "no spaces", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--exec-env" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (lab.tmp / "out-bad").exists()


def test_system_buildpacks_run_around_every_group_unless_disabled(lab: Lab) -> None:
    lab.build(f"oci:{lab.tmp}/out:system")
    pre = lab.record("test/sys-pre")
    assert pre is not None and pre["exec_env"] == "production"
    assert lab.record("test/sys-post") is None  # optional and failed detection: left out, the group passed
    proc = lab.build(f"oci:{lab.tmp}/out:nosystem", "--disable-system-buildpacks")
    assert lab.record("test/sys-pre") is None
    assert "group: test/app@1.0.0" in proc.stderr


def test_target_distro_comes_from_the_build_images_os_release_without_labels(lab: Lab) -> None:
    lab.build(f"oci:{lab.tmp}/out:target")
    assert os_release_distro(OS_RELEASE) == ("probeos", "1.0")
    record = lab.record("test/app")
    assert (record["distro_name"], record["distro_version"]) == ("probeos", "1.0")


def test_images_record_and_declare_the_platform_api_used(lab: Lab) -> None:
    out = f"oci:{lab.tmp}/out:apis"
    lab.build(out)
    config = lab.config(out)
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["CNB_PLATFORM_API"] == PLATFORM_API == "0.15"
    declared = json.loads(config["config"]["Labels"]["dev.ocibuild.lifecycle"])
    assert declared["platform-api"] == env["CNB_PLATFORM_API"]
    assert declared["apis"]["platform"]["supported"] == ["0.12", "0.13", "0.14", "0.15"]
    assert declared["apis"]["buildpack"]["supported"][-1] == "0.12"


def test_builder_inspect_declares_apis_and_system_buildpacks(lab: Lab) -> None:
    info = json.loads(lab.ocibuild("builder", "inspect", lab.builder, "--json").stdout)
    assert info["native_lifecycle"]["apis"]["platform"]["supported"] == list(PLATFORM_APIS)
    assert info["native_lifecycle"]["apis"]["buildpack"]["supported"] == list(BUILDPACK_APIS)
    assert info["system_buildpacks"] == {"pre": [{"id": "test/sys-pre", "version": "1.0.0"}],
                                         "post": [{"id": "test/sys-post", "version": "1.0.0", "optional": True}]}
    text = lab.ocibuild("builder", "inspect", lab.builder).stdout
    assert "Platform APIs:\n    Supported: 0.12, 0.13, 0.14, 0.15" in text
    assert "System Buildpacks (pre):\n  test/sys-pre@1.0.0" in text


def test_run_image_mirror_on_the_app_registry_is_chosen_first() -> None:
    entry = RunImage("example.com/run:1", ("localhost:5000/mirror/run:1", "other.test/run:1"))
    assert run_image_candidates(entry, "localhost:5000", None) == (
        "localhost:5000/mirror/run:1", "example.com/run:1", "other.test/run:1")
    assert run_image_candidates(entry, None, None) == (
        "example.com/run:1", "localhost:5000/mirror/run:1", "other.test/run:1")


def test_an_unreadable_run_image_falls_back_to_a_readable_mirror(lab: Lab) -> None:
    layout = lab.builder.split(":")[1]
    config = lab.tmp / "mirrors.toml"
    config.write_text(f"""
[[buildpacks]]
uri = "{lab.tmp / 'buildpacks' / 'test_app'}"

[[order]]
[[order.group]]
id = "test/app"

[build]
image = "oci:{layout}:base"

[[run.images]]
image = "oci:{lab.tmp}/missing:run"
mirrors = ["oci:{layout}:base"]
""")
    builder = f"oci:{lab.tmp}/mirror-builder:b"
    lab.ocibuild("builder", "create", "--config", str(config), "--tag", builder)
    out = f"oci:{lab.tmp}/out:mirror"
    proc = lab.ocibuild("build", out, "--builder", builder, "--path", str(lab.app),
                        "--volume", f"{lab.probe}:/probe:rw")
    assert "cannot be read" in proc.stderr
    md = json.loads(lab.config(out)["config"]["Labels"]["io.buildpacks.lifecycle.metadata"])
    assert md["runImage"]["image"] == f"oci:{lab.tmp}/missing:run"  # the record keeps the builder's names
    assert md["runImage"]["reference"].startswith(f"oci:{layout}:base") or "sha256:" in md["runImage"]["reference"]


def test_cnb_insecure_registries_adds_to_insecure_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocibuild.cli.options import GlobalOptions

    monkeypatch.setenv("CNB_INSECURE_REGISTRIES", "reg.test:5000, other.test ,")
    opts = GlobalOptions(insecure_registries=("flag.test",)).registry_options()
    assert {"reg.test:5000", "other.test", "flag.test"} <= set(opts.insecure)
    monkeypatch.delenv("CNB_INSECURE_REGISTRIES")
    assert "reg.test:5000" not in GlobalOptions().registry_options().insecure


# -- the rules on their functions --------------------------------------------------------------------
def test_system_pre_and_post_wrap_each_group_and_keep_a_groups_own_place() -> None:
    system = SystemBuildpacks(pre=(GroupElement("sys/pre", "1"),), post=(GroupElement("sys/post", "1", True),))
    order = Order((Group((GroupElement("a", "1"),)), Group((GroupElement("sys/pre", "1"), GroupElement("b", "1")))))
    wrapped = system.around(order)
    assert [[e.id for e in g] for g in wrapped] == [["sys/pre", "a", "sys/post"], ["sys/pre", "b", "sys/post"]]
    assert wrapped.groups[0].elements[-1].optional
    assert SystemBuildpacks().around(order) is order


def test_system_toml_round_trips_and_bad_tables_are_refused() -> None:
    system = parse_system({"pre": {"buildpacks": [{"id": "sys/pre", "version": "1"}]}}, "builder.toml")
    assert read_system_toml(system.toml()) == system
    assert read_system_toml(None) == SystemBuildpacks()
    with pytest.raises(UsageError, match="system.during"):
        parse_system({"during": {}}, "builder.toml")
    with pytest.raises(UsageError, match="needs a version"):
        parse_system({"post": {"buildpacks": [{"id": "sys/post"}]}}, "builder.toml")


def test_system_buildpack_missing_from_the_builder_is_refused_at_create(lab: Lab) -> None:
    layout = lab.builder.split(":")[1]
    config = lab.tmp / "bad-system.toml"
    config.write_text(f"""
[[buildpacks]]
uri = "{lab.tmp / 'buildpacks' / 'test_app'}"
[[order]]
[[order.group]]
id = "test/app"
[system.pre]
buildpacks = [{{ id = "test/absent", version = "1.0.0" }}]
[build]
image = "oci:{layout}:base"
""")
    proc = lab.ocibuild("builder", "create", "--config", str(config), "--tag", f"oci:{lab.tmp}/bad:b", check=False)
    assert proc.returncode == 2 and "test/absent@1.0.0 is not on the builder" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (lab.tmp / "bad").exists()


def test_os_release_fills_only_missing_distro_data_and_follows_the_images_symlink(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "usr" / "lib").mkdir(parents=True)
    (lower / "usr" / "lib" / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "os-release").symlink_to("../usr/lib/os-release")
    (upper / "etc" / "escape").symlink_to("../../../../../../etc/hostname")
    rootfs = RootFS((lower, upper))
    text = rootfs.read_text("/etc/os-release")
    assert os_release_distro(text) == ("ubuntu", "24.04")
    assert rootfs.read_text("/etc/escape") is None  # resolved inside the image: no /etc/hostname there
    assert with_build_os_release(Target(), text) == Target(distro_name="ubuntu", distro_version="24.04")
    labelled = Target(distro_name="debian", distro_version="12")
    assert with_build_os_release(labelled, text) == labelled
    assert with_build_os_release(Target(), None) == Target()


def test_a_test_exec_env_image_on_the_registry_runs_its_test_process_under_podman(lab: Lab, registry, fresh_repo: str
                                                                                   ) -> None:
    from support.tools import read_with_peers, require_tool

    podman = require_tool("podman")
    image = f"{registry.host}/{fresh_repo}:test"
    for old in lab.probe.iterdir():
        old.unlink()
    proc = lab.ocibuild("--insecure-registry", registry.host, "build", image, "--builder", lab.builder,
                        "--path", str(lab.app), "--volume", f"{lab.probe}:/probe:rw", "--exec-env", "test", "--json")
    digest = json.loads(proc.stdout)["digest"]
    ref = f"{registry.host}/{fresh_repo}@{digest}"
    inspected, bundle = read_with_peers(ref, lab.tmp)
    assert inspected["Labels"]["io.buildpacks.exec-env"] == "test"
    assert os.readlink(bundle / "rootfs" / "cnb" / "process" / "tests") == "/cnb/lifecycle/launcher"
    assert not os.path.lexists(bundle / "rootfs" / "cnb" / "process" / "worker")  # a production-only process
    run = [podman, "run", "--rm", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
           "--ulimit", "nproc=4096:4096", "--tls-verify=false"]
    try:
        tests = subprocess.run([*run, "--entrypoint", "/cnb/process/tests", ref], capture_output=True, text=True,
                               timeout=180)
        assert tests.returncode == 0, tests.stderr
        assert tests.stdout.strip().splitlines()[-1] == "tests"
    finally:
        subprocess.run([podman, "rmi", "-f", ref], capture_output=True, timeout=120)


def test_project_toml_entries_for_another_exec_env_are_left_out(tmp_path: Path) -> None:
    from ocibuild.cnb.project import load_project

    path = tmp_path / "project.toml"
    path.write_text('''
[_]
schema-version = "0.3"
[[io.buildpacks.group]]
id = "buildpacks/ruby"
[[io.buildpacks.group]]
id = "buildpacks/headless-chrome"
exec-env = "test"
[[io.buildpacks.post.group]]
id = "buildpacks/metrics"
exec-env = ["production"]
[[io.buildpacks.build.env]]
name = "RAILS_ENV"
value = "production"
exec-env = "production"
[[io.buildpacks.build.env]]
name = "RAILS_ENV"
value = "test"
exec-env = "test"
[[io.buildpacks.build.env]]
name = "EVERYWHERE"
value = "1"
exec-env = "all"
''')
    prod, test = load_project(path), load_project(path, "test")
    assert prod.buildpacks == ("buildpacks/ruby",) and prod.post_buildpacks == ("buildpacks/metrics",)
    assert test.buildpacks == ("buildpacks/ruby", "buildpacks/headless-chrome") and test.post_buildpacks == ()
    assert prod.env == {"RAILS_ENV": "production", "EVERYWHERE": "1"}
    assert test.env == {"RAILS_ENV": "test", "EVERYWHERE": "1"}
    path.write_text('[_]\nschema-version = "0.3"\n[[io.buildpacks.group]]\nid = "a/b"\nexec-env = 3\n')
    with pytest.raises(UsageError, match="exec-env must be a name"):
        load_project(path)


def test_composite_order_entries_for_another_exec_env_are_skipped(tmp_path: Path) -> None:
    import shutil

    from ocibuild.cnb.descriptor import parse_order
    from ocibuild.cnb.detect import detect

    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "buildpacks"
    store = tmp_path / "buildpacks"
    shutil.copytree(fixtures, store, symlinks=True)
    composite = store / "test_envs" / "1.0.0"
    composite.mkdir(parents=True)
    (composite / "buildpack.toml").write_text('''api = "0.12"
[buildpack]
id = "test/envs"
version = "1.0.0"
[[order]]
[[order.group]]
id = "test/a"
version = "1.0.0"
[[order.group]]
id = "test/b"
version = "1.0.0"
exec-env = ["test"]
''')
    (tmp_path / "app").mkdir()
    (tmp_path / "platform" / "env").mkdir(parents=True)
    order = parse_order([{"group": [{"id": "test/envs", "version": "1.0.0"}]}])

    def group(exec_env: str) -> list[str]:
        result = detect(order, store, tmp_path / "app", tmp_path / "platform", env={"PATH": "/usr/bin:/bin"},
                        exec_env=exec_env)
        return [el.id for el in result.group]

    assert group("production") == ["test/a"]
    assert group("test") == ["test/a", "test/b"]


def test_builder_order_exec_env_survives_the_label_and_order_toml() -> None:
    import tomllib

    from ocibuild.cnb.compose import order_toml
    from ocibuild.cnb.descriptor import order_to_json, parse_order

    order = parse_order([{"group": [{"id": "a/b", "version": "1"},
                                    {"id": "c/d", "version": "2", "exec-env": ["test"]}]}])
    assert parse_order(json.loads(json.dumps(order_to_json(order)))) == order
    assert parse_order(tomllib.loads(order_toml(order))["order"]) == order
    assert order.groups[0].elements[1].exec_env == ("test",)
