"""``ocibuild build``: the names it takes (IMAGE, --tag, --buildpack, --run-image) and what it records.

Every build runs the real CLI in a subprocess (see test_build.py) against layouts and the real
registry fixture.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from pathlib import Path

import pytest

from support.images import layer_tar, write_image
from test_build import BUILDPACKS, HELLO, PROCFILE, ocibuild, procfile_builder_toml

GREETER = BUILDPACKS / "greeter"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(HELLO, dest)
    return dest


def _build(*args: str, scratch: Path, app: Path, check: bool = True, registry: str | None = None):
    glob = ("--registry", registry) if registry else ()
    return ocibuild(*glob, "build", *args, "--path", str(app), scratch=scratch, check=check)


def _digest(ref: str, scratch: Path, registry: str | None = None) -> str:
    glob = ("--registry", registry) if registry else ()
    return ocibuild(*glob, "digest", ref, scratch=scratch).stdout.strip()


def _layout_tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"]
            for m in index["manifests"]}


def _one_line_usage_error(proc) -> str:  # noqa: ANN001
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ocibuild: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


def _lifecycle_md(ref: str, scratch: Path, registry: str | None = None) -> dict:
    glob = ("--registry", registry) if registry else ()
    config = json.loads(ocibuild(*glob, "config", ref, scratch=scratch).stdout)
    return json.loads(config["config"]["Labels"]["io.buildpacks.lifecycle.metadata"])


# -- 1. --tag -------------------------------------------------------------------------------------
def test_tags_in_the_same_and_another_repository_of_the_registry(tmp_path: Path, app: Path, registry,
                                                                 fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    other = f"{fresh_repo}-other"
    proc = _build(f"{fresh_repo}:1", "-t", f"{fresh_repo}:2", "-t", f"{other}:3",
                  "-t", f"{registry.host}/{fresh_repo}:4", scratch=scratch, app=app, registry=registry.host)
    digest = proc.stdout.strip().splitlines()[-1]
    for ref in (f"{fresh_repo}:1", f"{fresh_repo}:2", f"{other}:3", f"{fresh_repo}:4"):
        assert _digest(ref, scratch, registry.host) == digest, ref
    # The other repository holds the whole image (blobs mounted or copied), not just a manifest.
    bundle = tmp_path / "unpacked"
    ocibuild("--registry", registry.host, "unpack", f"{other}:3", str(bundle), scratch=scratch)
    assert (bundle / "workspace" / "Procfile").is_file()


def test_tags_elsewhere_are_refused_before_anything_is_built(tmp_path: Path, app: Path, registry,
                                                             fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    for tag in ("other.example:5000/x:1", f"oci:{tmp_path}/layout:b"):
        proc = _build(f"{fresh_repo}:1", "-t", tag, scratch=scratch, app=app, registry=registry.host, check=False)
        assert tag.split(":", 1)[0] in _one_line_usage_error(proc)
    missing = ocibuild("--registry", registry.host, "tags", fresh_repo, scratch=scratch, check=False)
    assert missing.returncode != 0 or missing.stdout.strip() == "", "nothing was pushed"
    proc = _build(f"oci:{tmp_path}/a:x", "-t", f"oci:{tmp_path}/b:y", scratch=scratch, app=app, check=False)
    assert f"{tmp_path}/b" in _one_line_usage_error(proc)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    proc = _build(f"oci:{tmp_path}/a@sha256:{'0' * 64}", scratch=scratch, app=app, check=False)
    assert "not a digest" in _one_line_usage_error(proc)
    assert not (scratch / "layout").exists(), "refused before the default builder was even made"


def test_layout_tags_and_a_bare_layout_gets_latest(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    out = tmp_path / "out"
    digest = _build(f"oci:{out}:a", "-t", f"oci:{out}:b", "-t", "c", "-t", f"oci:{out}/:d",
                    scratch=scratch, app=app).stdout.strip().splitlines()[-1]
    assert _layout_tags(out) == {"a": digest, "b": digest, "c": digest, "d": digest}

    bare = tmp_path / "bare"
    digest = _build(f"oci:{bare}", scratch=scratch, app=app).stdout.strip().splitlines()[-1]
    assert _layout_tags(bare) == {"latest": digest}


# -- 3. --buildpack forms -------------------------------------------------------------------------
def _greeter_package(layout: Path) -> None:
    """A buildpackage image of fixtures/build/buildpacks/greeter, as pack package-buildpack lays it out."""
    files: dict = {}
    for path in sorted(GREETER.rglob("*")):
        if path.is_file():
            mode = 0o755 if path.parent.name == "bin" else 0o644
            files[f"cnb/buildpacks/test_greeter/1.0.0/{path.relative_to(GREETER)}"] = (path.read_bytes(), mode)
    diff_id = "sha256:" + hashlib.sha256(layer_tar(files)).hexdigest()
    labels = {
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": "test/greeter", "version": "1.0.0"}),
        "io.buildpacks.buildpack.layers": json.dumps(
            {"test/greeter": {"1.0.0": {"api": "0.10", "layerDiffID": diff_id}}}),
    }
    write_image(layout, [files], tag="pkg", labels=labels)


def test_buildpack_image_names_resolve_on_the_default_registry_and_ids_on_the_builder(
        tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    _greeter_package(tmp_path / "pkg")
    short = f"bpkg{secrets.token_hex(4)}"
    ocibuild("copy", f"oci:{tmp_path}/pkg:pkg", f"{registry.host}/{short}:1", scratch=scratch)
    ocibuild("copy", f"oci:{tmp_path}/pkg:pkg", f"{registry.host}/{fresh_repo}:1", scratch=scratch)
    for source in (f"{short}:1", f"{fresh_repo}:1"):  # bpkg:1 and team/mybp:1
        out = tmp_path / f"out-{source.replace('/', '_').replace(':', '_')}"
        proc = _build(f"oci:{out}:app", "-b", source, "-b", "ocibuild/procfile", "--json", scratch=scratch, app=app,
                      registry=registry.host)
        assert json.loads(proc.stdout)["group"] == ["test/greeter@1.0.0", PROCFILE], source
    # A composite's package.toml dependency resolves on the same registry.
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "buildpack.toml").write_text('api = "0.10"\n[buildpack]\nid = "test/meta"\nversion = "1.0.0"\n'
                                         '[[order]]\n[[order.group]]\nid = "test/greeter"\nversion = "1.0.0"\n')
    (meta / "package.toml").write_text(f'[[dependencies]]\nimage = "{short}:1"\n')
    proc = _build(f"oci:{tmp_path}/out-meta:app", "-b", str(meta), "-b", "ocibuild/procfile", "--json",
                  scratch=scratch, app=app, registry=registry.host)
    assert json.loads(proc.stdout)["group"] == ["test/greeter@1.0.0", PROCFILE]


def test_a_bare_builder_id_with_a_slash_selects_it(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    for source in ("ocibuild/procfile", "urn:cnb:builder:ocibuild/procfile", PROCFILE):
        proc = _build(f"oci:{tmp_path}/out:app", "-b", source, "--json", scratch=scratch, app=app)
        assert json.loads(proc.stdout)["group"] == [PROCFILE], source
    proc = _build(f"oci:{tmp_path}/out:app", "-b", "ocibuild/procfile@9.9.9", scratch=scratch, app=app, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "9.9.9" in last and "not found on the builder" in last, proc.stderr


def test_a_missing_directory_is_not_taken_for_an_image(tmp_path: Path) -> None:
    from ocibuild.cnb.buildpack import load_buildpacks
    from ocibuild.errors import UsageError

    for source in ("no/such-dir", "./nosuch", str(tmp_path / "nosuch")):
        with pytest.raises(UsageError, match="does not exist"):
            load_buildpacks(source)


# -- 4. [[targets]] against the run image -------------------------------------------------------
def test_a_buildpack_for_another_target_does_not_pass_detection(tmp_path: Path, app: Path) -> None:
    bp = tmp_path / "s390x-only"
    shutil.copytree(GREETER, bp)
    toml = (bp / "buildpack.toml").read_text().replace('id = "test/greeter"', 'id = "test/s390x-only"')
    (bp / "buildpack.toml").write_text(toml + '\n[[targets]]\nos = "linux"\narch = "s390x"\n')
    scratch = tmp_path / "scratch"
    proc = _build(f"oci:{tmp_path}/out:app", "-b", str(bp), "-b", PROCFILE, scratch=scratch, app=app, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "test/s390x-only" in last and "unable to satisfy target os/arch constraints" in last, proc.stderr
    # The same buildpack targeting the run image's os (any arch) passes.
    (bp / "buildpack.toml").write_text(toml + '\n[[targets]]\nos = "linux"\n')
    out = _build(f"oci:{tmp_path}/out:app", "-b", str(bp), "-b", PROCFILE, "--json", scratch=scratch, app=app)
    assert json.loads(out.stdout)["group"] == ["test/s390x-only@1.0.0", PROCFILE]


# -- 5. --default-process -------------------------------------------------------------------------
def test_an_unknown_default_process_fails_before_the_image_is_written(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    out = tmp_path / "out"
    proc = _build(f"oci:{out}:app", "--default-process", "nosuch", scratch=scratch, app=app, check=False)
    assert proc.returncode == 62, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ocibuild: error:") and "tried to set nosuch to default but it doesn't exist" in last
    assert "Traceback" not in proc.stderr
    assert not out.exists() or (_layout_tags(out) == {} and not any((out / "blobs" / "sha256").iterdir()))
    good = _build(f"oci:{out}:app", "--default-process", "worker", scratch=scratch, app=app)
    assert good.returncode == 0


# -- 6. the run image as the image records it -----------------------------------------------------
def test_the_run_image_is_recorded_qualified_and_rebase_accepts_its_repository(
        tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    from ocibuild.cnb.defaults import RUN_TAG

    scratch = tmp_path / "scratch"
    _build(f"oci:{tmp_path}/warm:app", scratch=scratch, app=app)  # makes the default builder
    for tag in ("1", "2"):
        ocibuild("copy", f"oci:{scratch}/layout:{RUN_TAG}", f"{registry.host}/{fresh_repo}/run:{tag}",
                 scratch=scratch)
    _build(f"{fresh_repo}/app:1", "--run-image", f"{fresh_repo}/run:1", scratch=scratch, app=app,
           registry=registry.host)
    md = _lifecycle_md(f"{fresh_repo}/app:1", scratch, registry.host)
    assert md["runImage"]["image"] == f"{registry.host}/{fresh_repo}/run:1"
    assert md["runImage"]["reference"].startswith(f"{registry.host}/{fresh_repo}/run@sha256:")
    assert md["stack"]["runImage"]["image"] == f"{registry.host}/{fresh_repo}/run:1"
    ocibuild("--registry", registry.host, "rebase", f"{fresh_repo}/app:1", "--run-image",
             f"{registry.host}/{fresh_repo}/run:2", scratch=scratch)
    # a short name resolves on --registry, as the build's did, and names the same repository
    ocibuild("--registry", registry.host, "rebase", f"{fresh_repo}/app:1", "--run-image",
             f"{fresh_repo}/run:1", scratch=scratch)
    assert _lifecycle_md(f"{fresh_repo}/app:1", scratch, registry.host)["runImage"]["image"] == (
        f"{registry.host}/{fresh_repo}/run:1")


def test_the_builders_run_image_mirrors_are_recorded(tmp_path: Path, app: Path) -> None:
    from ocibuild.cnb.defaults import RUN_TAG

    scratch = tmp_path / "scratch"
    _build(f"oci:{tmp_path}/warm:app", scratch=scratch, app=app)
    layout = scratch / "layout"
    (tmp_path / "builder.toml").write_text(procfile_builder_toml(
        layout, run_extra=f'mirrors = ["mirror.example/run:1", "run-mirror:1", "oci:{tmp_path}/mirror:run"]'))
    ocibuild("builder", "create", "--config", str(tmp_path / "builder.toml"), "--tag",
             f"oci:{tmp_path}/builder:b1", scratch=scratch)
    out = f"oci:{tmp_path}/out:app"
    ocibuild("--registry", "reg.example", "build", out, "--builder", f"oci:{tmp_path}/builder:b1",
             "--path", str(app), scratch=scratch)
    md = _lifecycle_md(out, scratch)
    mirrors = ["mirror.example/run:1", "reg.example/run-mirror:1", f"oci:{tmp_path}/mirror:run"]
    assert md["runImage"]["image"] == f"oci:{layout}:{RUN_TAG}"
    assert md["runImage"]["mirrors"] == mirrors
    assert md["runImage"]["reference"].startswith(f"oci:{layout}@sha256:")

    # Built on a mirror, the image still names the builder's run image (the lifecycle's run.toml
    # entry that contains it), and the mirror it was read from is the reference.
    ocibuild("copy", f"oci:{layout}:{RUN_TAG}", f"oci:{tmp_path}/mirror:run", scratch=scratch)
    ocibuild("--registry", "reg.example", "build", out, "--builder", f"oci:{tmp_path}/builder:b1",
             "--run-image", f"oci:{tmp_path}/mirror:run",
             "--path", str(app), scratch=scratch)
    md = _lifecycle_md(out, scratch)
    assert (md["runImage"]["image"], md["runImage"]["mirrors"]) == (f"oci:{layout}:{RUN_TAG}", mirrors)
    assert md["runImage"]["reference"].startswith(f"oci:{tmp_path}/mirror@sha256:")
    # Another run image is recorded as itself, without the builder's mirrors.
    ocibuild("copy", f"oci:{layout}:{RUN_TAG}", f"oci:{tmp_path}/other:run", scratch=scratch)
    ocibuild("build", out, "--builder", f"oci:{tmp_path}/builder:b1", "--run-image", f"oci:{tmp_path}/other:run",
             "--path", str(app), scratch=scratch)
    md = _lifecycle_md(out, scratch)
    assert md["runImage"]["image"] == f"oci:{tmp_path}/other:run" and "mirrors" not in md["runImage"]
