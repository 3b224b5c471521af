"""Detection against real bash buildpacks (fixtures/buildpacks): groups, composites, optional members,
plan resolution, env and arguments per API, exit codes 20/21; plus descriptor validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ocibuild.cnb.descriptor import (
    BuildpackStore,
    GroupElement,
    License,
    Target,
    load_descriptor,
    load_order,
    parse_order,
)
from ocibuild.cnb.detect import NO_GROUP_MESSAGE, detect
from ocibuild.cnb.errors import DescriptorError, DetectErrored, DetectFailed, IncompatibleBuildpackAPI

BUILDPACKS = Path(__file__).resolve().parent.parent / "fixtures" / "buildpacks"
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET_TOKEN": "hunter2", "CNB_APP_DIR": "/nope"}


@dataclass
class Work:
    app: Path
    platform: Path

    def plan(self, bp: str, text: str) -> None:
        (self.app / f"detect-plan-{bp}.toml").write_text(text)

    def status(self, bp: str, code: int) -> None:
        (self.app / f"detect-status-{bp}").write_text(str(code))

    def env(self, bp: str) -> dict[str, str]:
        lines = (self.app / f"detect-env-{bp}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def args(self, bp: str) -> list[str]:
        return (self.app / f"detect-args-{bp}").read_text().splitlines()

    def ran(self, bp: str) -> bool:
        return (self.app / f"detect-args-{bp}").exists()


@pytest.fixture
def work(tmp_path: Path) -> Work:
    (tmp_path / "app").mkdir()
    (tmp_path / "platform" / "env").mkdir(parents=True)
    return Work(tmp_path / "app", tmp_path / "platform")


def order(*groups):
    """order(["test/a", ("test/b", True)], ...): ids with an optional flag."""
    return parse_order(
        [
            {"group": [{"id": e, "version": "1.0.0"} if isinstance(e, str)
                       else {"id": e[0], "version": "1.0.0", "optional": e[1]} for e in g]}
            for g in groups
        ]
    )


def run(work: Work, order_, **kw):
    kw.setdefault("env", BASE_ENV)
    return detect(order_, BUILDPACKS, work.app, work.platform, **kw)


def ids(group) -> list[str]:
    return [el.id for el in group]


def test_single_buildpack_passes_with_lifecycle_env_and_args(work: Work) -> None:
    result = run(work, order(["test/a"]))
    assert result.group == (GroupElement("test/a", "1.0.0", api="0.10", homepage="https://example.test/test_a"),)
    env = work.env("test_a")
    args = work.args("test_a")
    assert args[0] == str(work.platform) and Path(args[1]).name == "plan.toml"
    assert env["CNB_BUILDPACK_DIR"] == str(BUILDPACKS / "test_a" / "1.0.0")
    assert env["CNB_PLATFORM_DIR"] == str(work.platform)
    assert env["CNB_BUILD_PLAN_PATH"] == args[1]
    assert env["CNB_TARGET_OS"] == "linux" and env["CNB_TARGET_ARCH"] == "amd64"
    assert "CNB_TARGET_DISTRO_NAME" not in env  # only when known
    assert "CNB_EXEC_ENV" not in env  # API 0.12+
    assert env["PWD"] == str(work.app)
    assert env["HOME"] == "/root" and env["PATH"] == "/usr/bin:/bin"
    assert "SECRET_TOKEN" not in env and "CNB_APP_DIR" not in env
    assert any("detect output from test_a" in line for line in result.log)


def test_cnb_variables_follow_the_buildpack_api(work: Work) -> None:
    target = Target("linux", "arm64", "v8", "ubuntu", "24.04")
    run(work, order(["test/legacy", "test/api8", "test/b"]), target=target, exec_env="test")
    legacy, api8, b = work.env("test_legacy"), work.env("test_api8"), work.env("test_b")
    assert "CNB_BUILDPACK_DIR" in legacy
    assert not {"CNB_PLATFORM_DIR", "CNB_BUILD_PLAN_PATH", "CNB_TARGET_OS"} & legacy.keys()
    assert len(work.args("test_legacy")) == 2  # positional arguments at every API
    assert "CNB_BUILD_PLAN_PATH" in api8 and "CNB_TARGET_OS" not in api8
    assert b["CNB_EXEC_ENV"] == "test"
    assert {k: v for k, v in b.items() if k.startswith("CNB_TARGET_")} == {
        "CNB_TARGET_OS": "linux",
        "CNB_TARGET_ARCH": "arm64",
        "CNB_TARGET_ARCH_VARIANT": "v8",
        "CNB_TARGET_DISTRO_NAME": "ubuntu",
        "CNB_TARGET_DISTRO_VERSION": "24.04",
    }


def test_platform_env_files_unless_clear_env(work: Work) -> None:
    (work.platform / "env" / "USER_VAR").write_text("from-user")
    (work.platform / "env" / "PATH").write_text("/user/bin")
    run(work, order(["test/a", "test/clear"]))
    assert work.env("test_a")["USER_VAR"] == "from-user"
    assert work.env("test_a")["PATH"] == "/user/bin:/usr/bin:/bin"
    clear = work.env("test_clear")
    assert "USER_VAR" not in clear and clear["PATH"] == "/usr/bin:/bin"


def test_no_group_passes_exit_20(work: Work) -> None:
    work.status("test_a", 100)
    with pytest.raises(DetectFailed) as info:
        run(work, order(["test/a"]))
    assert type(info.value) is DetectFailed
    assert info.value.exit_code == 20
    assert str(info.value) == NO_GROUP_MESSAGE
    assert "fail: test/a@1.0.0" in info.value.log
    assert info.value.log[-1] == NO_GROUP_MESSAGE


def test_detect_error_exit_21_names_the_buildpack(work: Work) -> None:
    work.status("test_a", 3)
    work.status("test_c", 100)
    with pytest.raises(DetectErrored) as info:
        run(work, order(["test/a"], ["test/c"]))
    assert info.value.exit_code == 21
    assert "test/a@1.0.0 (exit status 3)" in str(info.value)
    assert "\n" not in str(info.value)
    assert "err:  test/a@1.0.0 (3)" in info.value.log


def test_error_in_one_group_another_group_passes(work: Work) -> None:
    work.status("test_a", 1)
    assert ids(run(work, order(["test/a"], ["test/c"])).group) == ["test/c"]


def test_optional_member_failing_is_dropped(work: Work) -> None:
    work.status("test_b", 100)
    result = run(work, order(["test/a", ("test/b", True), "test/c"]))
    assert ids(result.group) == ["test/a", "test/c"]
    assert all(not el.optional for el in result.group)
    assert "skip: test/b@1.0.0" in result.log


def test_optional_member_erroring_is_dropped_too(work: Work) -> None:
    work.status("test_b", 7)
    assert ids(run(work, order(["test/a", ("test/b", True)])).group) == ["test/a"]


def test_group_of_only_failed_optionals_does_not_pass(work: Work) -> None:
    work.status("test_a", 100)
    with pytest.raises(DetectFailed):
        run(work, order([("test/a", True)]))


def test_composite_expanded_depth_first_with_rest_of_group(work: Work) -> None:
    result = run(work, order(["test/composite", "test/legacy"]))
    assert ids(result.group) == ["test/a", "test/b", "test/legacy"]


def test_composite_falls_back_to_its_next_group(work: Work) -> None:
    work.status("test_a", 100)
    result = run(work, order(["test/composite", "test/legacy"]))
    assert ids(result.group) == ["test/c", "test/legacy"]


def test_optional_composite_whose_groups_all_fail(work: Work) -> None:
    work.status("test_a", 100)
    work.status("test_c", 100)
    result = run(work, order([("test/composite", True), "test/legacy"]))
    assert ids(result.group) == ["test/legacy"]
    # each id@version ran bin/detect once although three groups were tried
    assert sum(1 for r in result.runs if r.element.id == "test/legacy") == 1


def test_required_composite_whose_groups_all_fail(work: Work) -> None:
    work.status("test_a", 100)
    work.status("test_c", 100)
    with pytest.raises(DetectFailed):
        run(work, order(["test/composite", "test/legacy"]))


def test_provides_requires_resolve_into_plan(work: Work) -> None:
    work.plan("test_a", '[[provides]]\nname = "node"\n')
    work.plan("test_b", '[[requires]]\nname = "node"\n[requires.metadata]\nversion = "20"\nlaunch = true\n')
    result = run(work, order(["test/a", "test/b"]))
    assert ids(result.group) == ["test/a", "test/b"]
    (entry,) = result.plan.entries
    assert [p.id for p in entry.providers] == ["test/a"]
    assert entry.name == "node" and dict(entry.requires[0].metadata) == {"version": "20", "launch": True}
    assert [r.name for r in result.plan.find("test/a")] == ["node"]
    assert result.plan.find("test/b") == ()


def test_unmet_require_fails_required_member(work: Work) -> None:
    work.plan("test_b", '[[requires]]\nname = "python"\n')
    with pytest.raises(DetectFailed) as info:
        run(work, order(["test/a", "test/b"]))
    assert info.value.exit_code == 20
    assert "fail: test/b@1.0.0 requires python" in info.value.log


def test_require_before_its_provider_is_unmet(work: Work) -> None:
    work.plan("test_a", '[[requires]]\nname = "x"\n')
    work.plan("test_b", '[[provides]]\nname = "x"\n')
    with pytest.raises(DetectFailed):
        run(work, order(["test/a", "test/b"]))


def test_unused_provide_drops_optional_member(work: Work) -> None:
    work.plan("test_b", '[[provides]]\nname = "unused"\n')
    result = run(work, order(["test/a", ("test/b", True)]))
    assert ids(result.group) == ["test/a"]
    assert "skip: test/b@1.0.0 provides unused unused" in result.log
    with pytest.raises(DetectFailed):
        run(work, order(["test/a", "test/b"]))


def test_or_alternatives_tried_in_order(work: Work) -> None:
    work.plan("test_a", '[[provides]]\nname = "x"\n\n[[or]]\n[[or.provides]]\nname = "y"\n')
    work.plan("test_b", '[[requires]]\nname = "y"\n')
    result = run(work, order(["test/a", "test/b"]))
    assert ids(result.group) == ["test/a", "test/b"]
    assert [e.name for e in result.plan.entries] == ["y"]


def test_self_provided_require_and_multiple_requirers(work: Work) -> None:
    work.plan("test_a", '[[provides]]\nname = "x"\n[[requires]]\nname = "x"\n')
    work.plan("test_b", '[[requires]]\nname = "x"\n[requires.metadata]\nb = 1\n')
    result = run(work, order(["test/a", "test/b"]))
    (entry,) = result.plan.entries
    assert len(entry.requires) == 2
    assert len(result.plan.find("test/a")) == 2


def test_top_level_version_in_requires_is_an_error(work: Work) -> None:
    work.plan("test_a", '[[requires]]\nname = "x"\nversion = "1"\n')
    with pytest.raises(DetectErrored) as info:
        run(work, order(["test/a"]))
    assert "test/a" in str(info.value) and '"version" key' in str(info.value)


def test_target_filter_platform_012(work: Work, tmp_path: Path) -> None:
    store = tmp_path / "bps"
    bp = store / "test_tgt" / "1.0.0"
    (bp / "bin").mkdir(parents=True)
    (bp / "bin" / "build").write_text("#!/usr/bin/env bash\n")
    (bp / "bin" / "detect").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bp / "bin" / "detect").chmod(0o755)
    (bp / "buildpack.toml").write_text(
        'api = "0.12"\n[buildpack]\nid = "test/tgt"\nversion = "1.0.0"\n'
        '[[targets]]\nos = "linux"\narch = "arm64"\n[[targets.distros]]\nname = "ubuntu"\n'
    )
    o = order(["test/tgt"])
    assert ids(detect(o, store, work.app, work.platform, env={}, target=Target("linux", "arm64")).group)
    with pytest.raises(DetectErrored):
        detect(o, store, work.app, work.platform, env={}, target=Target("linux", "amd64"), check_targets=True)


# -- descriptors and order.toml ------------------------------------------------------------------


def make_bp(root: Path, toml: str, bins=("detect", "build")) -> Path:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for b in bins:
        (root / "bin" / b).write_text("#!/usr/bin/env bash\n")
    (root / "buildpack.toml").write_text(toml)
    return root


@pytest.mark.parametrize(
    "bp_id, message",
    [("app", "reserved"), ("sbom", "reserved"), ("has space", "may contain only"), ("a_b", "may contain only")],
)
def test_bad_ids_refused(tmp_path: Path, bp_id: str, message: str) -> None:
    make_bp(tmp_path, f'api = "0.10"\n[buildpack]\nid = "{bp_id}"\nversion = "1"\n')
    with pytest.raises(DescriptorError, match=message):
        load_descriptor(tmp_path)


@pytest.mark.parametrize("api", ["0.6", "0.13", "1.0"])
def test_unsupported_api_refused_with_code_12(tmp_path: Path, api: str) -> None:
    make_bp(tmp_path, f'api = "{api}"\n[buildpack]\nid = "x/y"\nversion = "1"\n')
    with pytest.raises(IncompatibleBuildpackAPI) as info:
        load_descriptor(tmp_path)
    assert info.value.exit_code == 12


def test_descriptor_fields_targets_and_inference(tmp_path: Path) -> None:
    d = load_descriptor(make_bp(tmp_path / "a", '''api = "0.12"
[buildpack]
id = "acme/node"
version = "2.0.0"
homepage = "https://acme.test"
clear-env = true
sbom-formats = ["application/vnd.cyclonedx+json"]
exec-env = ["production", "test"]
[[buildpack.licenses]]
type = "MIT"
[[targets]]
os = "linux"
arch = "amd64"
[[targets.distros]]
name = "ubuntu"
version = "22.04"
[metadata]
x = 1
'''))
    assert (d.id, d.version, d.api, d.clear_env, d.exec_env) == ("acme/node", "2.0.0", "0.12", True, ("production", "test"))
    assert d.targets[0].distros[0].version == "22.04" and d.licenses == (License("MIT", ""),)
    assert d.declared_targets == d.targets
    assert d.metadata["x"] == 1 and not d.is_composite
    stack = load_descriptor(make_bp(tmp_path / "b", 'api = "0.9"\n[buildpack]\nid = "s"\nversion = "1"\n'
                                    '[[stacks]]\nid = "io.buildpacks.stacks.bionic"\n'))
    assert stack.targets[0].distros[0].name == "ubuntu" and stack.targets[0].arch == "amd64"
    assert stack.declared_targets == () and stack.stacks[0].id == "io.buildpacks.stacks.bionic"
    plain = load_descriptor(make_bp(tmp_path / "c", 'api = "0.9"\n[buildpack]\nid = "p"\nversion = "1"\n'))
    assert plain.targets[0].os == "linux"


def test_composite_must_not_have_bin_detect_and_component_needs_bin_build(tmp_path: Path) -> None:
    make_bp(tmp_path / "c", 'api = "0.10"\n[buildpack]\nid = "c"\nversion = "1"\n'
            '[[order]]\n[[order.group]]\nid = "x"\nversion = "1"\n')
    with pytest.raises(DescriptorError, match="composite"):
        load_descriptor(tmp_path / "c")
    make_bp(tmp_path / "d", 'api = "0.10"\n[buildpack]\nid = "d"\nversion = "1"\n', bins=("detect",))
    with pytest.raises(DescriptorError, match="bin/build"):
        load_descriptor(tmp_path / "d")


def test_store_lookup_and_order_toml(tmp_path: Path) -> None:
    store = BuildpackStore(BUILDPACKS)
    comp = store.lookup("test/composite", "1.0.0")
    assert comp.is_composite and [[e.id for e in g] for g in comp.order] == [["test/a", "test/b"], ["test/c"]]
    assert comp.order.groups[0].elements[1].optional
    with pytest.raises(DescriptorError, match="not found"):
        store.lookup("test/missing", "1.0.0")
    (tmp_path / "order.toml").write_text('[[order]]\n[[order.group]]\nid = "test/a"\nversion = "1.0.0"\noptional = true\n')
    assert load_order(tmp_path / "order.toml").groups[0].elements[0].optional
    (tmp_path / "bad.toml").write_text("[[order]]\ngroup = 3\n")
    with pytest.raises(DescriptorError):
        load_order(tmp_path / "bad.toml")
