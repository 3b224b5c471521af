"""pack's command line as pack users type it: global options after the command, build's pack flags,
project.toml as pack reads it, refusals of what ocibuild cannot honour, and rebase's --tag.

Every command runs the real CLI in a subprocess (``test_build.ocibuild``) against the real registry
fixtures; images are judged with skopeo where that says more than ocibuild's own view.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocibuild.cli.main import app as typer_app
from support.images import write_image
from support.tools import require_tool
from test_build import HELLO, ocibuild

GLOBALS = ("--registry", "--insecure-registry", "--ca-cert", "--debug", "--quiet")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    dest = tmp_path / "app"
    shutil.copytree(HELLO, dest)
    return dest


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ocibuild: error:"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def skopeo_digest(ref: str, *tls: str) -> str:
    require_tool("skopeo")
    out = subprocess.run(["skopeo", "inspect", *tls, "--format", "{{.Digest}}", ref], capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip()


# -- B. global options after the command ------------------------------------------------------------
def _leaf_commands(command, path=()):  # noqa: ANN001, ANN202
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for name, sub in subcommands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path


def test_every_commands_help_lists_the_global_options(tmp_path: Path) -> None:
    from typer.main import get_command

    commands = list(_leaf_commands(get_command(typer_app)))
    assert ("build",) in commands and ("builder", "create") in commands and ("copy",) in commands
    for path in commands:
        proc = ocibuild(*path, "--help", scratch=tmp_path / "scratch")
        for option in GLOBALS:
            assert option in proc.stdout, (path, option, proc.stdout)


def test_build_takes_registry_after_the_command_for_image_and_builder(tmp_path: Path, app: Path, registry,
                                                                     fresh_repo: str) -> None:
    from ocibuild.cnb.defaults import BUILDER_TAG

    scratch = tmp_path / "scratch"
    # A first build makes the embedded builder; it is then pushed to the registry as a short name.
    ocibuild("build", f"oci:{tmp_path}/warm:app", "--path", str(app), scratch=scratch)
    ocibuild("copy", f"oci:{scratch}/layout:{BUILDER_TAG}", f"{fresh_repo}-builder:1", "--registry", registry.host,
             scratch=scratch)
    proc = ocibuild("build", f"{registry.host}/{fresh_repo}:1", "--builder", f"{fresh_repo}-builder:1",
                    "--registry", registry.host, "--path", str(app), scratch=scratch)
    digest = proc.stdout.strip().splitlines()[-1]
    assert skopeo_digest(f"docker://{registry.host}/{fresh_repo}:1", "--tls-verify=false") == digest
    # A short IMAGE uses the same --registry.
    short = ocibuild("build", f"{fresh_repo}:2", "--registry", registry.host, "--path", str(app), "-q",
                     scratch=scratch)
    assert skopeo_digest(f"docker://{registry.host}/{fresh_repo}:2", "--tls-verify=false") \
        == short.stdout.strip().splitlines()[-1]


def test_the_commands_registry_wins_over_the_one_before_it(tmp_path: Path, registry, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    built = write_image(tmp_path / "src", ({"a.txt": b"a"},), tag="v1")
    ocibuild("copy", f"oci:{tmp_path}/src:v1", f"{fresh_repo}:1", "--registry", registry.host, scratch=scratch)
    # 192.0.2.1 (TEST-NET-1) is never contacted: the command's --registry replaces it.
    proc = ocibuild("--registry", "192.0.2.1:9", "digest", f"{fresh_repo}:1", "--registry", registry.host,
                    scratch=scratch)
    assert proc.stdout.strip() == built.manifest.digest


def test_copy_takes_insecure_registry_and_quiet_after_the_command(tmp_path: Path, tls_registry,
                                                                  fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    built = write_image(tmp_path / "src", ({"a.txt": b"tls"},), tag="v1")
    dest = f"docker://{tls_registry.host}/{fresh_repo}:1"
    refused = ocibuild("copy", f"oci:{tmp_path}/src:v1", dest, scratch=scratch, check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
    proc = ocibuild("copy", f"oci:{tmp_path}/src:v1", dest, "--insecure-registry", tls_registry.host, "-q",
                    scratch=scratch)
    assert proc.stdout.strip() == built.manifest.digest
    assert proc.stderr == ""  # -q after the command: no notes, no progress
    assert skopeo_digest(dest, "--cert-dir", str(tls_registry.cert_dir)) == built.manifest.digest
    # --ca-cert after the command trusts the private CA (TLS checked, not turned off).
    again = ocibuild("digest", dest, "--ca-cert", str(tls_registry.ca_cert), scratch=scratch)
    assert again.stdout.strip() == built.manifest.digest


def test_ca_cert_and_debug_after_the_command(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    missing = ocibuild("digest", "localhost:5000/x:1", "--ca-cert", str(tmp_path / "nope.pem"), scratch=scratch,
                       check=False)
    assert missing.returncode == 2 and "nope.pem: no such file" in missing.stderr
    plain = ocibuild("digest", f"oci:{tmp_path}/absent:v1", scratch=scratch, check=False)
    assert plain.returncode != 0 and "Traceback" not in plain.stderr
    debug = ocibuild("digest", f"oci:{tmp_path}/absent:v1", "--debug", scratch=scratch, check=False)
    assert debug.returncode == plain.returncode and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


# -- helpers for C/D: buildpacks written by the tests ------------------------------------------------
def write_buildpack(root: Path, bp_id: str, build: str = "exit 0\n", version: str = "1.0.0") -> Path:
    """A tiny POSIX sh buildpack (detect passes; the busybox builder has no bash) whose bin/build runs
    ``build`` with $1 = layers dir."""
    root.mkdir(parents=True)
    (root / "buildpack.toml").write_text(f'api = "0.10"\n[buildpack]\nid = "{bp_id}"\nversion = "{version}"\n')
    (root / "bin").mkdir()
    for name, body in (("detect", "exit 0\n"), ("build", build)):
        script = root / "bin" / name
        script.write_text("#!/bin/sh\nset -eu\n" + body)
        script.chmod(0o755)
    return root


def tgz_of(directory: Path, dest: Path) -> Path:
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return dest


def build_json(*args: str, scratch: Path, app: Path, check: bool = True):  # noqa: ANN201
    proc = ocibuild("build", *args, "--path", str(app), "--json", scratch=scratch, check=check)
    return json.loads(proc.stdout) if proc.returncode == 0 else proc


def scratch_leftovers(scratch: Path) -> list[str]:
    """What a refused build must not leave: work directories, downloads, temp files."""
    out = []
    for sub in ("work", "cache/downloads/blobs/sha256", "layout/.tmp"):
        d = scratch / sub
        if d.is_dir():
            out += [f"{sub}/{p.name}" for p in d.iterdir()]
    return out


# -- C. pack build's flags ----------------------------------------------------------------------------
def test_publish_needs_a_registry_image_and_writes_there(tmp_path: Path, app: Path, registry,
                                                         fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    proc = ocibuild("build", f"oci:{tmp_path}/out:app", "--publish", "--path", str(app), scratch=scratch, check=False)
    assert "--publish" in one_line_error(proc)
    assert not (tmp_path / "out").exists() and scratch_leftovers(scratch) == []
    out = build_json(f"{registry.host}/{fresh_repo}:1", "--publish", scratch=scratch, app=app)
    assert skopeo_digest(f"docker://{registry.host}/{fresh_repo}:1", "--tls-verify=false") == out["digest"]


def test_report_output_dir_writes_the_lifecycles_report(tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    import tomllib

    require_tool("skopeo")
    scratch, report = tmp_path / "scratch", tmp_path / "report"
    ref = f"{registry.host}/{fresh_repo}"
    out = build_json(f"{ref}:1", "-t", f"{ref}:2", "--report-output-dir", str(report), scratch=scratch, app=app)
    doc = tomllib.loads((report / "report.toml").read_text())
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}:1"],
                         capture_output=True, check=True, timeout=60).stdout
    assert doc == {"image": {"tags": [f"{ref}:1", f"{ref}:2"], "digest": out["digest"], "manifest-size": len(raw)}}


def test_cache_flag_maps_onto_image_bind_and_volume_caches(tmp_path: Path, app: Path, registry,
                                                           fresh_repo: str) -> None:
    from test_build import BUILDPACKS

    scratch = tmp_path / "scratch"
    greeter = ("--buildpack", str(BUILDPACKS / "greeter"))
    cache_ref = f"{registry.host}/{fresh_repo}-cache:1"
    for _ in range(2):
        proc = ocibuild("build", f"oci:{tmp_path}/out:a", *greeter, "--path", str(app),
                        "--cache", f"type=build;format=image;name={cache_ref}", scratch=scratch)
    assert "greeter: cache restored" in proc.stderr  # the second build read the cache image back
    skopeo_digest(f"docker://{cache_ref}", "--tls-verify=false")  # the cache image is in the registry
    bind = tmp_path / "bind-cache"
    ocibuild("build", f"oci:{tmp_path}/out:b", *greeter, "--path", str(app), "--cache",
             f"type=build;format=bind;source={bind}", scratch=scratch)
    assert list((bind / "committed").iterdir())
    ocibuild("build", f"oci:{tmp_path}/out:c", *greeter, "--path", str(app), "--cache", "format=volume;name=v1",
             scratch=scratch)
    assert list((scratch / "cache" / "volumes" / "v1" / "committed").iterdir())


@pytest.mark.parametrize("spec", [
    "type=build;format=floppy;name=x", "type=launch;format=volume", "format=image", "name", "type=build;kind=x",
    "format=bind;name=x", "type=build;type=build",
])
def test_bad_cache_specs_are_refused_in_one_line(tmp_path: Path, app: Path, spec: str) -> None:
    scratch = tmp_path / "scratch"
    proc = ocibuild("build", f"oci:{tmp_path}/out:a", "--path", str(app), "--cache", spec, scratch=scratch,
                    check=False)
    assert "--cache" in one_line_error(proc)
    assert not (tmp_path / "out").exists() and not scratch.exists()


def test_cache_and_cache_image_together_are_refused(tmp_path: Path, app: Path) -> None:
    proc = ocibuild("build", f"oci:{tmp_path}/out:a", "--path", str(app), "--cache", "format=bind;source=/tmp/x",
                    "--cache-image", "oci:/tmp/c:1", scratch=tmp_path / "scratch", check=False)
    assert "--cache" in one_line_error(proc)


def test_pull_policy_keeps_builder_and_run_image_and_works_offline(tmp_path: Path, app: Path, registry_factory) -> None:
    from ocibuild.cnb.defaults import BUILDER_TAG, RUN_TAG

    private = registry_factory("plain")
    warm = tmp_path / "warm"
    ocibuild("build", f"oci:{tmp_path}/warm-out:app", "--path", str(app), scratch=warm)
    builder, run = f"{private.host}/pull/builder:1", f"{private.host}/pull/run:1"
    ocibuild("copy", f"oci:{warm}/layout:{BUILDER_TAG}", builder, scratch=warm)
    ocibuild("copy", f"oci:{warm}/layout:{RUN_TAG}", run, scratch=warm)
    _write_buildpackage("test/kept-package", tmp_path / "pkg")
    package = f"{private.host}/pull/bp:1"
    ocibuild("copy", f"oci:{tmp_path}/pkg:pkg", package, scratch=warm)
    bps = ("-b", package, "-b", "ocibuild/procfile")

    scratch = tmp_path / "scratch"
    never = build_json(f"oci:{tmp_path}/out:a", "--builder", builder, "--run-image", run, "--pull-policy", "never",
                       scratch=scratch, app=app, check=False)
    assert "--pull-policy never" in one_line_error(never, 1)
    first = build_json(f"oci:{tmp_path}/out:a", "--builder", builder, "--run-image", run, *bps,
                       "--pull-policy", "if-not-present", scratch=scratch, app=app)
    assert first["group"] == ["test/kept-package@1.0.0", "ocibuild/procfile@0.1.0"]
    private.stop()  # from here on the registry is gone: the kept copies are all there is
    ocibuild("gc", "--grace", "0", scratch=scratch)  # the kept copies are roots: collection leaves them
    for policy in ("if-not-present", "never"):
        again = build_json(f"oci:{tmp_path}/out:b", "--builder", builder, "--run-image", run, *bps,
                           "--pull-policy", policy, scratch=scratch, app=app)
        assert again["digest"] == first["digest"], policy
    tags = json.loads((scratch / "layout" / "index.json").read_text())["manifests"]
    kept = {m["annotations"]["org.opencontainers.image.ref.name"] for m in tags}
    assert {f"pulled/{builder}", f"pulled/{run}", f"pulled/{package}"} <= kept
    fsck = ocibuild("fsck", "--json", scratch=scratch, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    always = build_json(f"oci:{tmp_path}/out:c", "--builder", builder, "--run-image", run, "--pull-policy", "always",
                        scratch=scratch, app=app, check=False)
    assert always.returncode != 0 and "Traceback" not in always.stderr
    bad = ocibuild("build", f"oci:{tmp_path}/out:d", "--path", str(app), "--pull-policy", "sometimes",
                   scratch=scratch, check=False)
    assert "--pull-policy" in one_line_error(bad)


def test_pre_and_post_buildpacks_wrap_the_group(tmp_path: Path, app: Path) -> None:
    from test_build import PROCFILE

    scratch = tmp_path / "scratch"
    pre = write_buildpack(tmp_path / "pre", "test/pre")
    post = write_buildpack(tmp_path / "post", "test/post")
    # No --buildpack: every group of the builder's order gets them.
    out = build_json(f"oci:{tmp_path}/out:a", "--pre-buildpack", str(pre), "--post-buildpack", str(post),
                     scratch=scratch, app=app)
    assert out["group"] == ["test/pre@1.0.0", PROCFILE, "test/post@1.0.0"]
    # project.toml's pre/post groups, uris relative to project.toml.
    (app / "project.toml").write_text(
        '[_]\nschema-version = "0.2"\n'
        '[[io.buildpacks.pre.group]]\nuri = "../pre"\n[[io.buildpacks.post.group]]\nuri = "../post"\n'
        f'[[io.buildpacks.group]]\nuri = "urn:cnb:builder:{PROCFILE}"\n')
    out = build_json(f"oci:{tmp_path}/out:b", scratch=scratch, app=app)
    assert out["group"] == ["test/pre@1.0.0", PROCFILE, "test/post@1.0.0"]


def test_trust_builder_is_accepted_lifecycle_image_and_missing_extension_refused(tmp_path: Path, app: Path) -> None:
    scratch = tmp_path / "scratch"
    out = build_json(f"oci:{tmp_path}/out:a", "--trust-builder", scratch=scratch, app=app)
    assert out["digest"].startswith("sha256:")
    for flag in (("--lifecycle-image", "buildpacksio/lifecycle:0.20"), ("--extension", "ext/none")):
        proc = ocibuild("build", f"oci:{tmp_path}/refused:b", "--path", str(app), *flag, scratch=tmp_path / "s2",
                        check=False)
        assert flag[0] in one_line_error(proc)
        # the lifecycle image is refused before anything; the extension once the builder is read
        assert not (tmp_path / "s2").exists() if flag[0] == "--lifecycle-image" else not (tmp_path / "refused").exists()
    unknown = ocibuild("build", f"oci:{tmp_path}/out:c", "--path", str(app), "--docker-host", "inherit",
                       scratch=tmp_path / "s3", check=False)
    assert "--docker-host" in one_line_error(unknown)


KEEPER = """\
layers="$1"
if [[ -f "$layers/keep.toml" ]]; then
  echo "keeper: metadata restored"
  grep -q '^\\[types\\]' "$layers/keep.toml" && echo "keeper: types restored"  # never: the buildpack opts in again
  printf '[types]\\nlaunch = true\\n[metadata]\\nv = "1"\\n' > "$layers/keep.toml"
else
  mkdir -p "$layers/keep"; echo "kept $RANDOM$RANDOM" > "$layers/keep/file"
  printf '[types]\\nlaunch = true\\n[metadata]\\nv = "1"\\n' > "$layers/keep.toml"
fi
"""


def test_previous_image_reuses_its_launch_layers(tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    keeper = write_buildpack(tmp_path / "keeper", "test/keeper", KEEPER)
    first_ref = f"{registry.host}/{fresh_repo}-a:1"
    first = build_json(first_ref, "-b", str(keeper), "-b", "ocibuild/procfile", scratch=scratch, app=app)
    second_ref = f"{registry.host}/{fresh_repo}-b:1"
    proc = ocibuild("build", second_ref, "-b", str(keeper), "-b", "ocibuild/procfile", "--path", str(app),
                    "--previous-image", first_ref, scratch=scratch)
    assert "keeper: metadata restored" in proc.stderr and "keeper: types restored" not in proc.stderr
    layers = {}
    for ref in (first_ref, second_ref):
        manifest = json.loads(ocibuild("manifest", ref, scratch=scratch).stdout)
        layers[ref] = [layer["digest"] for layer in manifest["layers"]]
    # The keeper's layer (random content, made once) is the first image's: every layer is shared.
    assert layers[first_ref] == layers[second_ref]
    assert proc.stdout.strip().splitlines()[-1] == first["digest"]
    # The second repository holds the reused blob itself (copied or mounted), so it pulls whole.
    unpacked = tmp_path / "unpacked"
    ocibuild("unpack", second_ref, str(unpacked), scratch=scratch)
    assert (unpacked / "layers" / "test_keeper" / "keep" / "file").read_text().startswith("kept ")


# -- D. project.toml as pack reads it; buildpacks by URL ----------------------------------------------
def test_relative_uri_is_read_against_project_toml_from_any_directory(tmp_path: Path) -> None:
    """buildpacks/samples apps/bash-script: ``uri = "bash-script-buildpack/"`` beside project.toml."""
    from test_build import PROCFILE

    sample = tmp_path / "samples" / "apps" / "bash-script"
    sample.mkdir(parents=True)
    (sample / "Procfile").write_text("web: echo hi\n")
    write_buildpack(sample / "bash-script-buildpack", "samples/bash-script")
    (sample / "project.toml").write_text(
        '[_]\nschema-version = "0.2"\nid = "io.buildpacks.bash-script"\n'
        '[[io.buildpacks.group]]\nuri = "bash-script-buildpack/"\n'
        f'[[io.buildpacks.group]]\nuri = "urn:cnb:builder:{PROCFILE}"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ocibuild.cli.main", "build", f"oci:{tmp_path}/out:app", "--path",
         "../samples/apps/bash-script", "--json"], cwd=elsewhere, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OCIBUILD_SCRATCH": str(tmp_path / "scratch")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["group"] == ["samples/bash-script@1.0.0", PROCFILE]
    # schema 0.1 spells it [[build.buildpacks]]
    (sample / "project.toml").write_text('[[build.buildpacks]]\nuri = "bash-script-buildpack"\n'
                                         '[[build.buildpacks]]\nid = "ocibuild/procfile"\n')
    out = build_json(f"oci:{tmp_path}/out:b", scratch=tmp_path / "scratch", app=sample)
    assert out["group"] == ["samples/bash-script@1.0.0", PROCFILE]


class _Served:
    """A loopback HTTP server in a thread serving ``files`` (path -> bytes), counting GETs."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        self.files, self.hits = files, []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                served.hits.append(self.path)
                body = served.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if not self.path.startswith("/nolength/"):  # else the body ends when the connection does
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def served():  # noqa: ANN201
    servers: list[_Served] = []

    def start(files: dict[str, bytes]) -> _Served:
        servers.append(_Served(files))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_buildpack_by_url_is_downloaded_once_and_cached(tmp_path: Path, app: Path, served) -> None:
    from test_build import PROCFILE

    bp = tgz_of(write_buildpack(tmp_path / "bp", "test/by-url"), tmp_path / "bp.tgz")
    server = served({"/bp.tgz": bp.read_bytes()})
    scratch = tmp_path / "scratch"
    url = f"{server.base}/bp.tgz"
    out = build_json(f"oci:{tmp_path}/out:a", "-b", url, "-b", PROCFILE, scratch=scratch, app=app)
    assert out["group"] == ["test/by-url@1.0.0", PROCFILE]
    again = build_json(f"oci:{tmp_path}/out:b", "-b", url, "-b", PROCFILE, scratch=scratch, app=app)
    assert again["digest"] == out["digest"] and server.hits == ["/bp.tgz"]  # fetched once
    import hashlib

    kept = list((scratch / "cache" / "downloads" / "blobs" / "sha256").iterdir())
    assert [p.name for p in kept] == [hashlib.sha256(bp.read_bytes()).hexdigest() + ".tgz"]
    # project.toml may name the URL too (schema 0.2), with the builder's own buildpack by urn.
    (app / "project.toml").write_text(f'[_]\nschema-version = "0.2"\n[[io.buildpacks.group]]\nuri = "{url}"\n'
                                      f'[[io.buildpacks.group]]\nuri = "urn:cnb:builder:{PROCFILE}"\n')
    from_project = build_json(f"oci:{tmp_path}/out:c", scratch=scratch, app=app)
    assert from_project["group"] == ["test/by-url@1.0.0", PROCFILE]


def test_bad_urls_are_refused_in_one_line_and_leave_nothing(tmp_path: Path, app: Path, served) -> None:
    big_dir = write_buildpack(tmp_path / "big", "test/big")
    (big_dir / "blob").write_bytes(os.urandom(5000))  # incompressible: the .tgz is over the 1000-byte cap
    big = tgz_of(big_dir, tmp_path / "big.tgz")
    junk = tmp_path / "junk.tgz"
    import tarfile

    with tarfile.open(junk, "w:gz") as tar:
        (tmp_path / "readme").write_text("not a buildpack\n")
        tar.add(tmp_path / "readme", arcname="README")
    server = served({"/big.tgz": big.read_bytes(), "/nolength/big.tgz": big.read_bytes(),
                     "/junk.tgz": junk.read_bytes(), "/garbage.tgz": b"\x00" * 100})
    scratch = tmp_path / "scratch"
    cases = {"/missing.tgz": "404", "/big.tgz": "cap", "/nolength/big.tgz": "cap", "/junk.tgz": "buildpack.toml",
             "/garbage.tgz": "buildpack"}
    for path, expected in cases.items():
        proc = ocibuild("build", f"oci:{tmp_path}/out:a", "--path", str(app), "-b", f"{server.base}{path}",
                        scratch=scratch, check=False, env={"OCIBUILD_MAX_DOWNLOAD": "1000"})
        line = one_line_error(proc)
        assert expected in line and path in line, line
        assert not (tmp_path / "out").exists(), path
        assert scratch_leftovers(scratch) == [], (path, scratch_leftovers(scratch))
        assert not list((scratch / "cache" / "downloads" / "urls").glob("*")), path


def test_project_builder_and_docker_uri(tmp_path: Path, app: Path, registry, fresh_repo: str) -> None:
    from ocibuild.cnb.defaults import BUILDER_TAG
    from test_build import PROCFILE

    scratch = tmp_path / "scratch"
    ocibuild("build", f"oci:{tmp_path}/warm:app", "--path", str(app), scratch=scratch)
    builder = f"{registry.host}/{fresh_repo}-builder:1"
    ocibuild("copy", f"oci:{scratch}/layout:{BUILDER_TAG}", builder, scratch=scratch)
    package = tmp_path / "pkg"
    _write_buildpackage("test/from-docker", package)
    ocibuild("copy", f"oci:{package}:pkg", f"{registry.host}/{fresh_repo}-bp:1", scratch=scratch)
    (app / "project.toml").write_text(
        f'[_]\nschema-version = "0.2"\n[io.buildpacks]\nbuilder = "{builder}"\n'
        f'[[io.buildpacks.group]]\nuri = "docker://{registry.host}/{fresh_repo}-bp:1"\n'
        f'[[io.buildpacks.group]]\nuri = "urn:cnb:builder:{PROCFILE}"\n')
    out = build_json(f"oci:{tmp_path}/out:a", scratch=scratch, app=app)
    assert out["group"] == ["test/from-docker@1.0.0", PROCFILE]
    pushed = json.loads(ocibuild("inspect", "--json", builder, scratch=scratch).stdout)
    assert out["builder_digest"] == pushed["digest"]  # project.toml's builder, not the embedded one


def _write_buildpackage(bp_id: str, layout: Path) -> None:
    """A one-buildpack buildpackage image (cnb.md §3), its layer at /cnb/buildpacks/<id>/<version>/."""
    import hashlib

    from support.images import layer_tar

    prefix = f"cnb/buildpacks/{bp_id.replace('/', '_')}/1.0.0/"
    files = {prefix + "buildpack.toml": f'api = "0.10"\n[buildpack]\nid = "{bp_id}"\nversion = "1.0.0"\n'.encode(),
             prefix + "bin/detect": (b"#!/bin/sh\nexit 0\n", 0o755),
             prefix + "bin/build": (b"#!/bin/sh\nexit 0\n", 0o755)}
    diff_id = "sha256:" + hashlib.sha256(layer_tar(files)).hexdigest()
    write_image(layout, (files,), tag="pkg", labels={
        "io.buildpacks.buildpackage.metadata": json.dumps({"id": bp_id, "version": "1.0.0", "stacks": [{"id": "*"}]}),
        "io.buildpacks.buildpack.layers": json.dumps({bp_id: {"1.0.0": {"api": "0.10", "layerDiffID": diff_id}}}),
    })


# -- E. nothing silently ignored -----------------------------------------------------------------------
@pytest.fixture
def warm(tmp_path: Path, app: Path) -> Path:
    """A scratch dir holding the embedded builder and its build/run images (made by a first build)."""
    scratch = tmp_path / "warm"
    ocibuild("build", f"oci:{tmp_path}/warm-out:app", "--path", str(app), scratch=scratch)
    return scratch


@pytest.mark.parametrize(("extra", "named"), [
    ('[[extensions]]\nid = "ext/x"\nuri = "docker://ext/x:1"\n', "extension ext/x needs a uri naming a directory"),
    ('[[extensions]]\nid = "ext/x"\nuri = "./no-such-ext"\n', "no such directory or archive"),
    ('[[targets]]\nos = "linux"\narch = "arm64"\n', "[[targets]]"),
    ('[system.pre]\nbuildpacks = [{ id = "x/y" }]\n', "system buildpack x/y needs a version"),
    ('[lifecycle]\nversion = "0.20.1"\n', "[lifecycle] version"),
    ('[[build.env]]\nname = "A"\nvalue = "1"\nexec-env = ["test"]\n', "build.env.exec-env"),
])
def test_builder_create_refuses_what_it_cannot_honour(tmp_path: Path, warm: Path, extra: str, named: str) -> None:
    from test_build import procfile_builder_toml

    config = tmp_path / "builder.toml"
    config.write_text(procfile_builder_toml(warm / "layout", extra=extra))
    proc = ocibuild("builder", "create", "--config", str(config), "--tag", f"oci:{tmp_path}/builders:b1",
                    scratch=warm, check=False)
    assert named in one_line_error(proc)
    assert not (tmp_path / "builders").exists()


def test_platforms_a_single_platform_image_lacks_are_refused(tmp_path: Path, app: Path, warm: Path) -> None:
    from test_build import procfile_builder_toml

    config = tmp_path / "builder.toml"
    config.write_text(procfile_builder_toml(warm / "layout"))
    proc = ocibuild("builder", "create", "--config", str(config), "--tag", f"oci:{tmp_path}/builders:b1",
                    "--platform", "linux/arm64", scratch=warm, check=False)
    assert "linux/amd64 image only, not linux/arm64" in one_line_error(proc)
    assert not (tmp_path / "builders").exists()
    ok = ocibuild("builder", "create", "--config", str(config), "--tag", f"oci:{tmp_path}/builders:b1",
                  "--platform", "linux/amd64", scratch=warm)
    assert ok.stdout.strip().startswith("sha256:")
    build = ocibuild("build", f"oci:{tmp_path}/out:a", "--path", str(app), "--builder", f"oci:{tmp_path}/builders:b1",
                     "--platform", "linux/arm64", scratch=warm, check=False)
    assert "not linux/arm64" in one_line_error(build)
    assert not (tmp_path / "out").exists() and scratch_leftovers(warm) == []


# -- F. rebase ----------------------------------------------------------------------------------------
def test_rebase_tag_forms_and_the_embedded_run_image_offline(tmp_path: Path, app: Path, registry,
                                                              fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    ref = f"{registry.host}/{fresh_repo}"
    built = build_json(f"{ref}:1", scratch=scratch, app=app)
    # A fresh scratch dir: the embedded run image is made again there, nothing is fetched from
    # ocibuild.local (which does not resolve).
    fresh = tmp_path / "fresh-scratch"
    full = ocibuild("rebase", f"{ref}:1", "--force", "--tag", f"{ref}:1-rebased", scratch=fresh)
    digest = full.stdout.strip()
    assert skopeo_digest(f"docker://{ref}:1-rebased", "--tls-verify=false") == digest
    bare = ocibuild("rebase", f"{ref}:1", "--force", "--tag", "1-bare", scratch=fresh)
    assert skopeo_digest(f"docker://{ref}:1-bare", "--tls-verify=false") == bare.stdout.strip() == digest
    assert skopeo_digest(f"docker://{ref}:1", "--tls-verify=false") == built["digest"]  # IMAGE untouched
    other = ocibuild("rebase", f"{ref}:1", "--force", "--tag", f"{ref}-other:1", scratch=fresh, check=False)
    assert "IMAGE's repository" in one_line_error(other)
    layout = ocibuild("rebase", f"{ref}:1", "--force", "--tag", f"oci:{tmp_path}/l:1", scratch=fresh, check=False)
    assert "--tag" in one_line_error(layout)


def test_manifest_put_5xx_is_one_line_after_the_retries(tmp_path: Path) -> None:
    """A registry that answers 503 to every manifest PUT (``responses``: a real one will not)."""
    import responses
    from typer.testing import CliRunner

    built = write_image(tmp_path / "src", ({"a.txt": b"5xx"},), tag="v1")
    base = "https://registry.test"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, f"{base}/v2/", status=200)
        for blob in (built.config, *built.layers):
            mock.add(responses.HEAD, f"{base}/v2/team/app/blobs/{blob.digest}", status=200,
                     headers={"Content-Length": str(blob.size), "Docker-Content-Digest": blob.digest})
        put = mock.add(responses.PUT, f"{base}/v2/team/app/manifests/1", status=503, body="upstream down",
                       headers={"Retry-After": "0"})
        result = CliRunner().invoke(typer_app, ["copy", f"oci:{tmp_path}/src:v1", "registry.test/team/app:1", "-q"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocibuild: error:") and "503" in lines[0], result.stderr
    assert "push manifest" in lines[0]
    from ocibuild.store.options import RegistryOptions

    assert put.call_count == RegistryOptions().retries + 1


def test_builder_toml_buildpack_by_url(tmp_path: Path, warm: Path, served) -> None:
    from test_build import procfile_builder_toml

    bp = tgz_of(write_buildpack(tmp_path / "bp", "test/from-url"), tmp_path / "bp.tgz")
    server = served({"/bp.tgz": bp.read_bytes()})
    config = tmp_path / "builder.toml"
    config.write_text(procfile_builder_toml(warm / "layout", extra=f'[[buildpacks]]\nuri = "{server.base}/bp.tgz"\n'))
    ocibuild("builder", "create", "--config", str(config), "--tag", f"oci:{tmp_path}/builders:b1", scratch=warm)
    info = json.loads(ocibuild("builder", "inspect", f"oci:{tmp_path}/builders:b1", "--json", scratch=warm).stdout)
    assert {"id": "test/from-url", "version": "1.0.0"}.items() <= next(
        b for b in info["buildpacks"] if b["id"] == "test/from-url").items()
    assert server.hits == ["/bp.tgz"]
