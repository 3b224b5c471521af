"""bin/build against real bash buildpacks (fixtures/buildpacks): layers, env across buildpacks,
launch/build/store toml, SBOMs, exit codes 51/52, and the /layers + /workspace sandbox."""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocibuild.cnb.build import build
from ocibuild.cnb.descriptor import GroupElement, Target
from ocibuild.cnb.errors import BuildError, BuildpackError, SandboxUnavailable
from ocibuild.cnb.plan import Plan, PlanEntry, Require
from ocibuild.cnb.sandbox import prepare_sandbox

BUILDPACKS = Path(__file__).resolve().parent.parent / "fixtures" / "buildpacks"
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET_TOKEN": "hunter2"}


@dataclass
class Work:
    app: Path
    platform: Path
    layers: Path

    def give(self, bp: str, rel: str, text: str) -> None:
        """Have buildpack ``bp`` (escaped id) copy ``text`` to ``<its layers dir>/rel``."""
        path = self.app / f"build-{bp}" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def hook(self, bp: str, script: str) -> None:
        (self.app / f"build-{bp}.sh").write_text(script)

    def dump(self, bp: str, what: str = "env") -> dict[str, str] | list[str]:
        text = (self.layers / bp / f"{what}.dump").read_text()
        if what == "env":
            return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return text.splitlines()


@pytest.fixture
def work(tmp_path: Path) -> Work:
    for d in ("app", "platform/env", "layers"):
        (tmp_path / d).mkdir(parents=True)
    return Work(tmp_path / "app", tmp_path / "platform", tmp_path / "layers")


def group(*ids: str) -> tuple[GroupElement, ...]:
    return tuple(GroupElement(i, "1.0.0") for i in ids)


def run(work: Work, ids, plan: Plan = Plan(), **kw):
    kw.setdefault("env", BASE_ENV)
    kw.setdefault("output", io.StringIO())
    return build(group(*ids), plan, work.layers, work.app, work.platform, buildpacks_dir=BUILDPACKS, **kw)


def test_env_directories_across_three_buildpacks(work: Work) -> None:
    # test/b adds its own build layer on top of test/env-writer's; test/c sees both.
    for name, value in {
        "APPENDED.append": "b-app",
        "PREPENDED.prepend": "b-pre",
        "DEFAULTED.default": "b-def",
        "OVERRIDDEN.override": "from-b",
        "PLAIN": "plain-b",
    }.items():
        work.give("test_b", f"more/env/{name}", value)
    work.give("test_b", "more/env/APPENDED.delim", "|")
    work.give("test_b", "more.toml", "[types]\nbuild = true\n")
    work.give("test_b", "more/bin/.keep", "")
    (work.platform / "env" / "PRESET").write_text("from-user")
    run(work, ["test/env-writer", "test/b", "test/c"])

    b = work.dump("test_b")
    writer_layer = work.layers / "test_env-writer" / "tools"
    assert b["PATH"] == f"{writer_layer}/bin:/usr/bin:/bin"
    assert b["LD_LIBRARY_PATH"] == b["LIBRARY_PATH"] == f"{writer_layer}/lib"
    assert b["OVERRIDDEN"] == "from-writer" and b["PLAIN"] == "plain-writer"
    assert b["APPENDED"] == "w-app" and b["PREPENDED"] == "w-pre"
    assert b["BUILD_ONLY"] == "only-at-build" and b["COMPILER"] == "cc"  # env.build/ of build layers
    assert b["PRESET"] == "from-user"  # the user's platform env wins over layer env
    for absent in ("LAUNCH_ONLY", "WEB_ONLY", "RUNTIME", "QUEUE", "IGNORED", "SECRET_TOKEN"):
        assert absent not in b

    c = work.dump("test_c")
    assert c["APPENDED"] == "w-app|b-app"  # the .delim next to the file being applied (b's "|")
    assert c["PREPENDED"] == "b-prew-pre"  # no .delim file: joined with nothing
    assert c["DEFAULTED"] == "writer-default"
    assert c["OVERRIDDEN"] == "from-b" and c["PLAIN"] == "plain-b"
    assert c["PATH"] == f"{work.layers}/test_b/more/bin:{writer_layer}/bin:/usr/bin:/bin"


def test_launch_env_and_layers_for_the_exporter(work: Work) -> None:
    result = run(work, ["test/env-writer", "test/b"])
    writer = result.buildpacks[0]
    assert [(layer.name, layer.launch, layer.build, layer.cache) for layer in writer.layers] == [
        ("compiler", False, True, False),
        ("runtime", True, False, False),
        ("tools", True, True, False),
    ]
    assert [layer.name for layer in writer.launch_layers] == ["runtime", "tools"]
    assert dict(writer.layers[2].metadata.metadata) == {"version": "1.2.3"}
    tools = str(work.layers / "test_env-writer" / "tools")
    base = {"PATH": "/usr/bin"}
    web = result.launch_env.resolve(base, "web")
    assert web["PATH"] == f"{tools}/bin:/usr/bin" and web["LD_LIBRARY_PATH"] == f"{tools}/lib"
    assert web["WEB_ONLY"] == "web-value" and web["LAUNCH_ONLY"] == "only-at-launch" and web["RUNTIME"] == "rt"
    assert "QUEUE" not in web and "BUILD_ONLY" not in web and "COMPILER" not in web
    worker = result.launch_env.resolve(base, "worker")
    assert worker["QUEUE"] == "jobs" and "WEB_ONLY" not in worker
    assert result.launch_env.processes == {"web", "worker"}


def test_bp_plan_args_and_cnb_variables(work: Work) -> None:
    plan = Plan((PlanEntry((GroupElement("test/a", "1.0.0"),), (Require("node", {"version": "20"}),)),))
    result = run(work, ["test/a", "test/b", "test/legacy"], plan, target=Target("linux", "arm64", "", "debian", "12"))
    a, b, legacy = work.dump("test_a"), work.dump("test_b"), work.dump("test_legacy")
    assert "[[entries]]" in (work.layers / "test_a" / "plan.dump").read_text()
    assert 'version = "20"' in (work.layers / "test_a" / "plan.dump").read_text()
    assert (work.layers / "test_b" / "plan.dump").read_text().strip() in ("", "entries = []")
    args = work.dump("test_a", "args")
    assert args[:2] == [str(work.layers / "test_a"), str(work.platform)]
    assert a["CNB_LAYERS_DIR"] == args[0] and a["CNB_BP_PLAN_PATH"] == args[2]
    assert a["CNB_PLATFORM_DIR"] == str(work.platform)
    assert a["CNB_BUILDPACK_DIR"] == str(BUILDPACKS / "test_a" / "1.0.0")
    assert a["PWD"] == str(work.app)
    assert a["CNB_TARGET_ARCH"] == "arm64" and a["CNB_TARGET_DISTRO_NAME"] == "debian"
    assert "CNB_EXEC_ENV" not in a and b["CNB_EXEC_ENV"] == "production"
    assert "CNB_LAYERS_DIR" not in legacy and "CNB_TARGET_OS" not in legacy
    assert len(work.dump("test_legacy", "args")) == 3 and "CNB_BUILDPACK_DIR" in legacy
    assert result.buildpacks[0].met_requires == ("node",) and result.unmet_plan == Plan()


def test_build_toml_unmet_keeps_the_entry(work: Work) -> None:
    entry = PlanEntry((GroupElement("test/a", "1.0.0"), GroupElement("test/b", "1.0.0")), (Require("x"),))
    work.give("test_a", "build.toml", '[[unmet]]\nname = "x"\n')
    result = run(work, ["test/a", "test/b"], Plan((entry,)))
    assert result.buildpacks[0].met_requires == ()
    assert "x" in (work.layers / "test_b" / "plan.dump").read_text()  # the next provider gets it
    assert result.unmet_plan == Plan()
    work.give("test_a", "build.toml", '[[unmet]]\nname = "other"\n')
    with pytest.raises(BuildError, match="must match a requested dependency"):
        run(work, ["test/a"], Plan((entry,)))


def test_clear_env_and_platform_env_at_build(work: Work) -> None:
    (work.platform / "env" / "USER_VAR").write_text("u")
    run(work, ["test/a", "test/clear"])
    assert work.dump("test_a")["USER_VAR"] == "u"
    assert "USER_VAR" not in work.dump("test_clear")


def test_layer_toml_rules(work: Work) -> None:
    work.give("test_b", "none.toml", '[metadata]\nkept = "no"\n')
    work.give("test_b", "none/file", "x")
    work.give("test_b", "falses.toml", "[types]\nlaunch = false\n")
    work.give("test_b", "orphan/file", "no toml")
    work.give("test_b", "cached.toml", "[types]\ncache = true\n")
    work.give("test_b", "cached/file", "c")
    result = run(work, ["test/b"])
    assert [layer.name for layer in result.buildpacks[0].layers] == ["cached"]
    assert (work.layers / "test_b" / "none.ignore" / "file").exists()
    assert not (work.layers / "test_b" / "none").exists()
    assert (work.layers / "test_b" / "orphan" / "file").exists()


@pytest.mark.parametrize("flag", ["launch", "build", "cache"])
def test_top_level_layer_flags_refused(work: Work, flag: str) -> None:
    work.give("test_b", "bad.toml", f"{flag} = true\n")
    with pytest.raises(BuildError) as info:
        run(work, ["test/b"])
    assert info.value.exit_code == 52 and info.value.buildpack == "test/b"
    assert "buildpack test/b" in str(info.value) and "types table" in str(info.value)


def test_build_failure_exit_51_stops_the_group(work: Work) -> None:
    (work.app / "build-status-test_b").write_text("7")
    out = io.StringIO()
    with pytest.raises(BuildpackError) as info:
        run(work, ["test/a", "test/b", "test/c"], output=out)
    assert info.value.exit_code == 51 and info.value.buildpack == "test/b"
    assert str(info.value) == "buildpack test/b@1.0.0: bin/build failed (exit status 7)"
    assert "build output from test_b" in out.getvalue()
    assert not (work.layers / "test_c").exists()


def test_processes_api_07_string_and_09_array(work: Work) -> None:
    work.give("test_legacy", "launch.toml", '''
[[processes]]
type = "web"
command = "bundle exec rackup"
args = ["-p", "8080"]
default = true
working-dir = "/ignored-before-0.8"

[[processes]]
type = "direct"
command = "/bin/app"
direct = true

[[labels]]
key = "legacy"
value = "1"

[[labels]]
key = "shared"
value = "legacy"
''')
    work.give("test_c", "launch.toml", '''
[[processes]]
type = "worker"
command = ["bin/worker", "--queue"]
args = ["jobs"]
working-dir = "/workspace/sub"

[[labels]]
key = "shared"
value = "c"

[[slices]]
paths = ["static/*"]
''')
    result = run(work, ["test/legacy", "test/c"])
    web, direct, worker = result.process("web"), result.process("direct"), result.process("worker")
    assert web is not None and direct is not None and worker is not None
    assert (web.command, web.args, web.direct, web.default, web.working_dir) == (
        ("bundle exec rackup",), ("-p", "8080"), False, True, "")
    assert web.buildpack_id == "test/legacy" and direct.direct is True
    assert (worker.command, worker.args, worker.direct, worker.working_dir) == (
        ("bin/worker", "--queue"), ("jobs",), True, "/workspace/sub")
    assert [p.type for p in result.processes] == ["direct", "web", "worker"]
    assert result.default_process == "web"
    assert {lb.key: lb.value for lb in result.labels} == {"legacy": "1", "shared": "c"}
    assert [s.paths for s in result.slices] == [("static/*",)]
    assert worker.to_dict()["command"] == ["bin/worker", "--queue"]


def test_later_buildpack_overrides_process_type_and_default(work: Work) -> None:
    work.give("test_a", "launch.toml", '[[processes]]\ntype = "web"\ncommand = ["a"]\ndefault = true\n')
    work.give("test_c", "launch.toml", '[[processes]]\ntype = "web"\ncommand = ["c"]\n')
    result = run(work, ["test/a", "test/c"])
    assert result.process("web").command == ("c",) and result.process("web").buildpack_id == "test/c"
    assert result.default_process is None  # redefined without default = true
    work.give("test_c", "launch.toml", '[[processes]]\ntype = "other"\ncommand = ["c"]\ndefault = true\n')
    assert run(work, ["test/a", "test/c"]).default_process == "other"  # last default wins


@pytest.mark.parametrize(
    "bp, launch, message",
    [
        ("test_c", '[[processes]]\ntype = "web"\ncommand = ["x"]\ndirect = true\n', "process.direct is not supported"),
        ("test_c", '[[processes]]\ntype = "web"\ncommand = "x"\n', "array of strings"),
        ("test_legacy", '[[processes]]\ntype = "web"\ncommand = ["x"]\n', "must be a string"),
        ("test_c", '[[processes]]\ntype = "a"\ncommand = ["x"]\ndefault = true\n'
                   '[[processes]]\ntype = "b"\ncommand = ["y"]\ndefault = true\n', "multiple default"),
        ("test_c", '[[processes]]\ntype = "../evil"\ncommand = ["x"]\n', "process type"),
    ],
)
def test_launch_toml_refusals(work: Work, bp: str, launch: str, message: str) -> None:
    work.give(bp, "launch.toml", launch)
    with pytest.raises(BuildError, match=message) as info:
        run(work, [bp.replace("_", "/", 1)])
    assert info.value.buildpack == bp.replace("_", "/", 1)


def test_store_toml_and_sbom_files(work: Work) -> None:
    work.give("test_b", "store.toml", '[metadata]\nruns = 3\n')
    work.give("test_b", "launch.sbom.cdx.json", "{}")
    work.give("test_b", "build.sbom.spdx.json", "{}")
    work.give("test_b", "dep.toml", "[types]\nlaunch = true\ncache = true\n")
    work.give("test_b", "dep/f", "x")
    work.give("test_b", "dep.sbom.syft.json", "{}")
    result = run(work, ["test/b"])
    bp = result.buildpacks[0]
    assert dict(bp.store) == {"runs": 3}
    kinds = sorted((s.layer_type, s.layer_name, s.media_type) for s in bp.sbom_files)
    assert kinds == [
        ("build", "", "application/spdx+json"),
        ("cache", "dep", "application/vnd.syft+json"),
        ("launch", "", "application/vnd.cyclonedx+json"),
        ("launch", "dep", "application/vnd.syft+json"),
    ]
    work.give("test_b", "launch.sbom.xml", "<x/>")
    with pytest.raises(BuildError, match="unsupported SBOM"):
        run(work, ["test/b"])


@pytest.mark.parametrize("mode", ["root", "user"])
def test_sandbox_buildpacks_see_layers_and_workspace(work: Work, mode: str) -> None:
    # test/b runs the tool test/env-writer put on PATH, and records absolute paths the image will have.
    work.hook("test_b", 'set -e\nhello > "$1/hello.out"\nprintf "%s" "$PWD" > "$1/pwd.out"\n'
                        'mkdir -p "$1/web/bin" && printf "[types]\\nlaunch = true\\n" > "$1/web.toml"\n'
                        'printf "[[processes]]\\ntype = \\"web\\"\\ncommand = [\\"%s/web/bin/run\\"]\\n" "$1" > "$1/launch.toml"\n')
    sandbox = prepare_sandbox({work.layers: "/layers", work.app: "/workspace"}, mode=mode)
    result = run(work, ["test/env-writer", "test/b"], sandbox=sandbox)
    b = work.dump("test_b")
    assert b["CNB_LAYERS_DIR"] == "/layers/test_b"
    assert b["PATH"] == "/layers/test_env-writer/tools/bin:/usr/bin:/bin"
    assert work.dump("test_b", "args")[0] == "/layers/test_b"
    assert (work.layers / "test_b" / "hello.out").read_text() == "hello from tools\n"
    assert (work.layers / "test_b" / "pwd.out").read_text() == "/workspace"
    assert result.process("web").command == ("/layers/test_b/web/bin/run",)
    assert result.launch_env.resolve({"PATH": "/bin"})["PATH"] == (
        "/layers/test_b/web/bin:/layers/test_env-writer/tools/bin:/bin"
    )
    web = next(layer for layer in result.buildpacks[1].layers if layer.name == "web")
    assert web.visible_path == "/layers/test_b/web" and web.path == work.layers / "test_b" / "web"
    assert not Path("/layers/test_b").exists()  # nothing placed on the host


@pytest.mark.parametrize("mode", ["root", "user"])
def test_sandbox_reports_a_failed_setup_as_one_line_and_a_missing_command_as_127(tmp_path: Path, mode: str) -> None:
    (tmp_path / "layers").mkdir()
    sandbox = prepare_sandbox({tmp_path / "layers": "/layers", tmp_path / "gone": "/workspace"}, mode=mode)
    with pytest.raises(SandboxUnavailable) as failed:
        sandbox.run(["/bin/true"], cwd="/", env={"PATH": "/usr/bin:/bin"})
    message = str(failed.value)
    assert "\n" not in message
    assert f"{mode} mount namespace failed" in message and "No such file or directory" in message
    assert "--layers-dir/--workspace" in message
    assert not Path("/layers").exists() and not Path("/workspace").exists()

    works = prepare_sandbox({tmp_path / "layers": "/layers"}, mode=mode)
    missing = works.run(["no-such-command-here"], cwd="/layers", env={"PATH": "/usr/bin:/bin"},
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert missing.returncode == 127
    assert missing.stdout.decode() == "no-such-command-here: No such file or directory\n"
    seen = works.run(["/bin/sh", "-c", 'echo "$PWD $(id -u)"; exit 3'], cwd="/layers",
                     env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE)
    assert (seen.returncode, seen.stdout.decode()) == (3, "/layers 0\n")
