"""pack's ``manifest`` commands on a local index, pushed to the real registry and read by skopeo;
crane's ``manifest REF`` still answers beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.images import write_image
from support.registry import RegistryServer
from support.tools import run
from typer.testing import CliRunner

from ocibuild.cli.main import app

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"OCIBUILD_SCRATCH": str(tmp_path / "scratch")}


def cli(env: dict[str, str], *args: str):
    return runner.invoke(app, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> str:
    result = cli(env, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def pushed(registry: RegistryServer, fresh_repo: str, tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Two single-platform images in the registry: ``amd`` and ``arm`` tags of ``<repo>-src``."""
    out = {}
    for arch in ("amd64", "arm64"):
        info = write_image(tmp_path / arch, [{f"{arch}.txt": arch.encode()}], architecture=arch, tag="v1")
        ref = registry.ref(f"{fresh_repo}-src", arch)
        ok(env, *registry.ocibuild_args(), "copy", info.ref, ref)
        out[arch] = ref
    return out


def test_create_annotate_push_read_by_skopeo(registry: RegistryServer, fresh_repo: str, tmp_path: Path,
                                            env: dict[str, str], pushed: dict[str, str]) -> None:
    g = registry.ocibuild_args()
    target = registry.ref(fresh_repo, "multi")
    ok(env, *g, "manifest", "create", target, pushed["amd64"], pushed["arm64"])
    ok(env, *g, "manifest", "annotate", target, pushed["arm64"], "--variant", "v8", "--annotations", "team=x")
    local = json.loads(ok(env, *g, "manifest", "inspect", target))
    assert [m["platform"] for m in local["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    assert local["manifests"][1]["annotations"] == {"team": "x"}
    assert registry.get(f"/v2/{fresh_repo}/tags/list").status_code == 404  # nothing pushed yet
    digest = ok(env, *g, "manifest", "push", target).strip()
    raw = run(["skopeo", "inspect", "--tls-verify=false", "--raw", registry.skopeo_ref(fresh_repo, "multi")],
              check=True).stdout
    assert json.loads(raw) == local
    # crane's `manifest REF` beside pack's subcommands: the same bytes skopeo saw, and a platform's image
    assert ok(env, *g, "manifest", target) == raw
    arm = json.loads(ok(env, *g, "manifest", "--platform", "linux/arm64", target))
    assert arm["config"]["digest"] == json.loads(ok(env, *g, "manifest", pushed["arm64"]))["config"]["digest"]
    run(["skopeo", "copy", "--quiet", "--all", "--src-tls-verify=false", registry.skopeo_ref(fresh_repo, "multi"),
         f"oci:{tmp_path / 'all'}:m"], check=True)
    assert ok(env, "digest", f"oci:{tmp_path / 'all'}:m").strip() == digest
    ok(env, "validate", f"oci:{tmp_path / 'all'}:m")


def test_add_rm_remove_and_docker_format(registry: RegistryServer, fresh_repo: str, env: dict[str, str],
                                         pushed: dict[str, str]) -> None:
    g = registry.ocibuild_args()
    target = registry.ref(fresh_repo, "list")
    ok(env, *g, "manifest", "create", "--format", "docker", target, pushed["amd64"])
    ok(env, *g, "manifest", "add", target, pushed["arm64"])
    ok(env, *g, "manifest", "add", target, pushed["arm64"])  # again: replaced, not duplicated
    assert len(json.loads(ok(env, *g, "manifest", "inspect", target))["manifests"]) == 2
    ok(env, *g, "manifest", "rm", target, pushed["amd64"])
    doc = json.loads(ok(env, *g, "manifest", "inspect", target))
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["arm64"]
    ok(env, *g, "manifest", "push", "--purge", target)
    info = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                           registry.skopeo_ref(fresh_repo, "list")], check=True).stdout)
    assert info == doc
    gone = cli(env, *g, "manifest", "push", target)
    assert gone.exit_code == 1 and "no local index" in gone.stderr


@pytest.mark.parametrize("args, code", [
    (("manifest", "create", "localhost:1/x:1", "oci:/nonexistent:1"), 1),
    (("manifest", "create", "--format", "xml", "localhost:1/x:1", "IMG"), 2),
    (("manifest", "create", "localhost:1/x@sha256:" + "0" * 64, "IMG"), 2),
    (("manifest", "annotate", "localhost:1/none:1", "IMG"), 1),
    (("manifest", "create", "EXISTING", "IMG"), 2),
])
def test_bad_manifest_input_is_one_line(tmp_path: Path, env: dict[str, str], args, code) -> None:
    info = write_image(tmp_path / "img", tag="v1")
    ok(env, "manifest", "create", "localhost:1/existing:1", info.ref)
    argv = [a.replace("IMG", info.ref).replace("EXISTING", "localhost:1/existing:1") for a in args]
    result = cli(env, *argv)
    assert result.exit_code == code, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_index_source_brings_its_entries_and_a_layout_target(tmp_path: Path, env: dict[str, str]) -> None:
    from support.copyimages import index

    from ocibuild.store.layout import LayoutStore

    src = LayoutStore(tmp_path / "src", create=True)
    index(src, "i", tag="all")
    single = write_image(tmp_path / "one", [{"s.txt": b"s"}], architecture="s390x", tag="v1")
    target = f"oci:{tmp_path / 'out'}:multi"
    ok(env, "manifest", "create", target, f"oci:{src.path}:all", single.ref)
    doc = json.loads(ok(env, "manifest", "inspect", target))
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64", "s390x"]
    ok(env, "manifest", "push", target)
    run(["skopeo", "copy", "--quiet", "--all", target, f"oci:{tmp_path / 'copy'}:m"], check=True)
    assert json.loads(run(["skopeo", "inspect", "--raw", target], check=True).stdout) == doc
    ok(env, "validate", f"oci:{tmp_path / 'copy'}:m")
    archive = tmp_path / "d.tar"
    ok(env, "copy", single.ref, f"docker-archive:{archive}:s:1")
    refused = cli(env, "manifest", "add", target, f"docker-archive:{archive}")
    assert refused.exit_code == 2 and "copy it to oci:" in refused.stderr
