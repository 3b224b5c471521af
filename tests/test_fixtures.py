"""The test harness itself: real registries, schema validation, tool helpers and tiny images."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from support import schemas
from support.images import skopeo_copy, write_busybox_image, write_image
from support.registry import SENTINEL_PASSWORD, RegistryServer
from support.tools import require_tool, run

REPO_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


def _push_blob(server: RegistryServer, repo: str, data: bytes) -> str:
    """Upload ``data`` with the plain registry API (POST then PUT) and return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.session() as s:
        start = s.post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=10)
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        done = s.put(location, params={"digest": digest}, data=data, timeout=10)
        assert done.status_code == 201, done.text
    return digest


# -- registries --------------------------------------------------------------------------------
def test_plain_registry_answers_v2(registry: RegistryServer) -> None:
    assert registry.host == f"127.0.0.1:{registry.port}"
    assert registry.url == f"http://{registry.host}"
    r = requests.get(registry.url + "/v2/", timeout=5)
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.storage.is_dir() and registry.log.is_file()
    assert registry.alive()


def test_basic_registry_requires_the_password(basic_registry: RegistryServer) -> None:
    url = basic_registry.url + "/v2/"
    anonymous = requests.get(url, timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].lower().startswith("basic realm=")
    assert requests.get(url, auth=(basic_registry.username, "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=(basic_registry.username, basic_registry.password), timeout=5).status_code == 200
    assert basic_registry.password == SENTINEL_PASSWORD
    assert re.fullmatch(r"s3ntinel-Pa55-[0-9a-f]{12}", SENTINEL_PASSWORD)
    # the htpasswd file holds a bcrypt hash, never the password itself
    htpasswd = (basic_registry.root / "htpasswd").read_text()
    assert htpasswd.startswith(f"{basic_registry.username}:$2")
    assert SENTINEL_PASSWORD not in htpasswd


def test_basic_registry_auth_file(basic_registry: RegistryServer, tmp_path: Path) -> None:
    path = basic_registry.write_auth_file(tmp_path / "config.json")
    assert path.stat().st_mode & 0o777 == 0o600
    entry = json.loads(path.read_text())["auths"][basic_registry.host]
    assert entry["auth"]  # base64 of user:password, what docker/podman/skopeo read


def test_tls_registry_verifies_with_its_ca_only(tls_registry: RegistryServer) -> None:
    assert tls_registry.url == f"https://{tls_registry.host}"
    assert tls_registry.ca_cert is not None and tls_registry.ca_cert.is_file()
    ok = requests.get(tls_registry.url + "/v2/", verify=str(tls_registry.ca_cert), timeout=5)
    assert ok.status_code == 200
    by_name = requests.get(
        f"https://localhost:{tls_registry.port}/v2/", verify=str(tls_registry.ca_cert), timeout=5
    )
    assert by_name.status_code == 200  # the certificate names DNS:localhost as well as IP:127.0.0.1
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_registry.url + "/v2/", timeout=5)  # system trust store: unknown CA
    curl = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", tls_registry.ca_cert,
                tls_registry.url + "/v2/"])
    assert curl.stdout == "200", curl.stderr
    assert run(["curl", "-sS", tls_registry.url + "/v2/"]).returncode != 0


def test_plain_http_is_not_spoken_by_tls_registry(tls_registry: RegistryServer) -> None:
    r = requests.get(f"http://{tls_registry.host}/v2/", timeout=5)
    assert r.status_code == 400  # Go's "client sent an HTTP request to an HTTPS server"


def test_blob_data_path_and_tampering(registry: RegistryServer, fresh_repo: str) -> None:
    data = b"blob for " + fresh_repo.encode()
    digest = _push_blob(registry, fresh_repo, data)
    path = registry.blob_data_path(digest)
    assert path.read_bytes() == data
    # The registry serves whatever the file holds: the basis of digest-verification tests.
    path.write_bytes(b"tampered")
    r = requests.get(f"{registry.url}/v2/{fresh_repo}/blobs/{digest}", timeout=5)
    assert r.status_code == 200 and r.content == b"tampered"
    with pytest.raises(ValueError):
        registry.blob_data_path("sha512:abc")


def test_log_since_mark_sees_only_new_requests(registry: RegistryServer, fresh_repo: str) -> None:
    requests.get(f"{registry.url}/v2/{fresh_repo}/tags/list", timeout=5)
    mark = registry.log_mark()
    requests.get(f"{registry.url}/v2/{fresh_repo}/manifests/nope", timeout=5)
    requests.head(f"{registry.url}/v2/{fresh_repo}/blobs/sha256:{'0' * 64}", timeout=5)
    entries = registry.access_since(mark)
    assert [(e.method, e.path, e.status) for e in entries] == [
        ("GET", f"/v2/{fresh_repo}/manifests/nope", 404),
        ("HEAD", f"/v2/{fresh_repo}/blobs/sha256:{'0' * 64}", 404),
    ]
    text = registry.log_since(mark)
    assert "tags/list" not in text and "manifests/nope" in text


def test_fresh_repo_is_named_after_the_test(fresh_repo: str) -> None:
    assert REPO_NAME.fullmatch(fresh_repo), fresh_repo
    assert fresh_repo.startswith("test/test-fresh-repo-is-named-after")


@pytest.mark.parametrize("n", [1, 2])
def test_fresh_repo_differs_between_tests(fresh_repo: str, n: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Parametrized twice: the shared base dir records what each instance saw.
    seen = tmp_path_factory.getbasetemp() / "fresh-repo-seen.txt"
    previous = seen.read_text().split() if seen.exists() else []
    assert REPO_NAME.fullmatch(fresh_repo)
    assert fresh_repo not in previous
    seen.write_text("\n".join([*previous, fresh_repo]))


def test_private_registry_stops_for_good(registry_factory) -> None:  # type: ignore[no-untyped-def]
    server = registry_factory("plain")
    assert requests.get(server.url + "/v2/", timeout=5).status_code == 200
    pid = server.pid
    server.stop()
    assert not server.alive()
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/v2/", timeout=2)
    server.stop()  # idempotent


# -- tools -------------------------------------------------------------------------------------
def test_require_tool_fails_naming_the_tool_and_ci_script() -> None:
    assert require_tool("sh").endswith("/sh")
    with pytest.raises(pytest.fail.Exception) as info:
        require_tool("ocibuild-no-such-tool")
    message = str(info.value)
    assert "ocibuild-no-such-tool" in message and ".ci/run" in message
    assert "\n" not in message


def test_run_captures_output_and_bounds_time() -> None:
    proc = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    with pytest.raises(pytest.fail.Exception, match="exit 3"):
        run([sys.executable, "-c", "import sys; sys.exit(3)"], check=True)
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        run(["sleep", "5"], timeout=0.2)


# -- schemas -----------------------------------------------------------------------------------
MINIMAL_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": schemas.OCI_MANIFEST,
    "config": {"mediaType": schemas.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 2},
    "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "b" * 64, "size": 32}
    ],
}


def test_schema_accepts_a_minimal_manifest() -> None:
    schemas.validate_manifest(MINIMAL_MANIFEST)
    schemas.validate_manifest(json.dumps(MINIMAL_MANIFEST).encode())
    assert schemas.schema_errors(MINIMAL_MANIFEST, "manifest") == []


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"schemaVersion": 1}, "schemaVersion"),
        ({"config": {"mediaType": schemas.OCI_CONFIG, "digest": "sha256:" + "a" * 64}}, "size"),
        ({"config": {"mediaType": schemas.OCI_CONFIG, "digest": "not a digest", "size": 2}}, "config.digest"),
        ({"layers": [{"mediaType": "no-slash", "digest": "sha256:" + "b" * 64, "size": 1}]}, "mediaType"),
        ({"annotations": {"a": 1}}, "annotations"),
    ],
)
def test_schema_rejects_an_invalid_manifest(change: dict, complaint: str) -> None:
    doc = {**MINIMAL_MANIFEST, **change}
    with pytest.raises(AssertionError, match=complaint):
        schemas.validate_manifest(doc)


def test_schema_index_config_and_layout_header() -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": schemas.OCI_INDEX,
        "manifests": [
            {
                "mediaType": schemas.OCI_MANIFEST, "digest": "sha256:" + "c" * 64, "size": 10,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    schemas.validate_index(index)
    index["manifests"][0]["platform"] = {"os": "linux"}
    with pytest.raises(AssertionError, match="architecture"):
        schemas.validate_index(index)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
              "config": {"Labels": {"a": "b"}, "Env": ["A=1"]}}
    schemas.validate_config(config)
    with pytest.raises(AssertionError):
        schemas.validate_config({**config, "config": {"Labels": {"a": 1}}})
    schemas.validate_layout_header(b'{"imageLayoutVersion":"1.0.0"}')
    with pytest.raises(AssertionError, match="imageLayoutVersion"):
        schemas.validate_layout_header({"imageLayoutVersion": "2.0.0"})


def test_schema_dir_missing_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(schemas.SCHEMA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="OCIBUILD_SCHEMA_DIR"):
        schemas.validate_manifest(MINIMAL_MANIFEST)


def test_schema_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(schemas.schema_dir(), copy)
    monkeypatch.setenv(schemas.SCHEMA_ENV, str(copy))
    assert schemas.schema_dir() == copy
    schemas.validate_manifest(MINIMAL_MANIFEST)


# -- tiny images and layouts ---------------------------------------------------------------------
def test_written_image_passes_every_checker(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = write_image(layout, [{"a.txt": b"a\n"}, {"dir/b.txt": (b"#!/bin/sh\n", 0o755)}], tag="v1",
                       labels={"io.example": "yes"})
    report = schemas.validate_layout(layout, verify_blobs=True)
    assert report.manifests == [info.manifest.digest]
    assert report.configs == [info.config.digest]
    assert sorted(report.blobs) == sorted(b.digest for b in info.layers)
    # peers agree: oci-image-tool checks refs and digests, umoci checks diff_ids while unpacking
    run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", layout], check=True)
    run(["umoci", "unpack", "--rootless", "--image", f"{layout}:v1", tmp_path / "bundle"], check=True)
    assert (tmp_path / "bundle/rootfs/dir/b.txt").stat().st_mode & 0o777 == 0o755
    # reproducible: the same input gives the same manifest digest
    again = write_image(tmp_path / "again", [{"a.txt": b"a\n"}, {"dir/b.txt": (b"#!/bin/sh\n", 0o755)}],
                        tag="v1", labels={"io.example": "yes"})
    assert again.manifest.digest == info.manifest.digest


def test_validate_layout_catches_damage(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = write_image(layout, tag="t")
    config_path = layout / "blobs/sha256" / info.config.digest.split(":")[1]
    config_path.write_bytes(config_path.read_bytes().replace(b"amd64", b"arm64"))
    with pytest.raises(AssertionError, match="hashes to"):
        schemas.validate_layout(layout)
    config_path.unlink()
    with pytest.raises(AssertionError, match="missing"):
        schemas.validate_layout(layout)
    report = schemas.validate_layout(layout, require_complete=False)
    assert report.missing == [info.config.digest]


def test_busybox_image_runs(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_busybox_image(layout, tag="bb")
    schemas.validate_layout(layout)
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--rootless", "--image", f"{layout}:bb", bundle], check=True)
    out = subprocess.run(["chroot", bundle / "rootfs", "/bin/sh", "-c", "echo hi from $(id -u)"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "hi from 0\n", out.stderr


@pytest.mark.parametrize("which", ["registry", "basic_registry", "tls_registry"])
def test_skopeo_round_trip_through_each_registry(which: str, request: pytest.FixtureRequest,
                                                 fresh_repo: str, tmp_path: Path) -> None:
    server: RegistryServer = request.getfixturevalue(which)
    info = write_image(tmp_path / "src", [{"f": which.encode()}], tag="v1")
    mark = server.log_mark()
    skopeo_copy(info.ref, server.skopeo_ref(fresh_repo, "v1"), server)
    pushed = [e for e in server.access_since(mark) if e.method == "PUT" and "/manifests/" in e.path]
    assert [e.status for e in pushed] == [201]
    stored = server.get(f"/v2/{fresh_repo}/manifests/v1",
                        headers={"Accept": schemas.OCI_MANIFEST})
    assert stored.status_code == 200
    assert stored.headers["Docker-Content-Digest"] == info.manifest.digest
    assert stored.content == info.manifest_bytes  # stored byte for byte
    skopeo_copy(server.skopeo_ref(fresh_repo, "v1"), f"oci:{tmp_path / 'back'}:v1", server)
    schemas.validate_layout(tmp_path / "back")
    assert (tmp_path / "back/blobs/sha256" / info.manifest.digest.split(":")[1]).read_bytes() == info.manifest_bytes


# -- registry configuration and failure reporting -------------------------------------------------
def test_config_overrides_reach_the_registry(registry_factory, fresh_repo: str) -> None:  # type: ignore[no-untyped-def]
    server = registry_factory("plain", config_overrides={"storage": {"delete": {"enabled": False}}})
    digest = _push_blob(server, fresh_repo, b"kept")
    with server.session() as s:
        r = s.delete(f"{server.url}/v2/{fresh_repo}/blobs/{digest}", timeout=5)
    assert r.status_code == 405  # deletes disabled by the override; the default config allows them
    assert json.loads(server.config.read_text())["storage"]["filesystem"]["rootdirectory"] == str(server.storage)


def test_registry_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    from support.registry import start_registry

    with pytest.raises(pytest.fail.Exception) as info:
        start_registry(tmp_path / "bad", "plain", config_overrides={"log": {"level": "shouting"}})
    message = str(info.value)
    assert "did not become ready" in message and "process exited" in message
    assert "log tail" in message and "shouting" in message


def test_ocibuild_args_name_the_way_in(registry: RegistryServer, tls_registry: RegistryServer) -> None:
    assert registry.ocibuild_args() == ["--insecure-registry", registry.host]
    assert tls_registry.ocibuild_args() == ["--ca-cert", str(tls_registry.ca_cert)]
