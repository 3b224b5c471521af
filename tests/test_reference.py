"""Reference parsing: Docker normalisation, ``--registry`` defaults, ``oci:`` layout references."""

from __future__ import annotations

import pytest

from ocibuild.errors import InvalidReference
from ocibuild.oci import Digest
from ocibuild.oci.reference import LayoutReference, Reference, parse_reference, parse_repository

HEX = "0123456789abcdef" * 4
DIG = f"sha256:{HEX}"


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("library/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("index.docker.io/x", "docker.io", "library/x", "latest", None),
    ("registry-1.docker.io/org/x", "docker.io", "org/x", "latest", None),
    ("docker://busybox:musl", "docker.io", "library/busybox", "musl", None),
    ("localhost/a", "localhost", "a", "latest", None),
    ("localhost:5000/a", "localhost:5000", "a", "latest", None),
    (f"host:5000/a/b:tag@{DIG}", "host:5000", "a/b", "tag", DIG),
    (f"ghcr.io/a/b@{DIG}", "ghcr.io", "a/b", None, DIG),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
    ("127.0.0.1:5000/a-b/c__d.e:v1.0_rc-1", "127.0.0.1:5000", "a-b/c__d.e", "v1.0_rc-1", None),
    ("org/app", "docker.io", "org/app", "latest", None),
])
def test_docker_normalisation(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert isinstance(ref, Reference)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert ref.identifier == (digest or tag)


def test_hub_api_host_and_str():
    ref = parse_reference("busybox")
    assert ref.api_host == "registry-1.docker.io" and str(ref) == "docker.io/library/busybox:latest"
    local = parse_reference("localhost:5000/a:1")
    assert local.api_host == "localhost:5000" and str(local) == "localhost:5000/a:1"


@pytest.mark.parametrize("text", [
    "Busybox", "library/BusyBox", "host:5000/A/b", "a:bad/tag", "a@sha256:short", "a:tag@nope",
    "", "   ", "a//b", "-a", "a:" + "t" * 129, "x/" + "a" * 260,
])
def test_invalid_references_are_refused(text):
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_default_registry_applies_to_short_names_only():
    assert parse_reference("app", "127.0.0.1:5000") == Reference("127.0.0.1:5000", "app", "latest")
    assert parse_reference("org/app:1", "127.0.0.1:5000") == Reference("127.0.0.1:5000", "org/app", "1")
    # no library/ prefix off Docker Hub; explicit domains win
    assert parse_reference("ghcr.io/x/y", "127.0.0.1:5000").registry == "ghcr.io"
    assert parse_reference("localhost/y", "127.0.0.1:5000").registry == "localhost"
    # --registry docker.io (or an alias) means Docker Hub, with its library/ prefix
    assert parse_reference("busybox", "index.docker.io").repository == "library/busybox"
    assert parse_reference("app", "https://myreg.example:8443/").registry == "myreg.example:8443"
    with pytest.raises(InvalidReference):
        parse_reference("app", "not a host")


def test_parse_repository_drops_tag():
    repo = parse_repository("localhost:5000/a/b")
    assert (repo.registry, repo.repository, repo.tag, repo.digest) == ("localhost:5000", "a/b", None, None)


@pytest.mark.parametrize("text, path, tag, digest", [
    ("oci:./layout", "./layout", None, None),
    ("oci:/abs/dir:v1", "/abs/dir", "v1", None),
    ("oci:dir:tag:with:colons", "dir", "tag:with:colons", None),
    (f"oci:dir@{DIG}", "dir", None, DIG),
    ("oci:dir:org/app@1+x", "dir", "org/app@1+x", None),
    ("ocidir://dir:t", "dir", "t", None),
])
def test_layout_references(text, path, tag, digest):
    ref = parse_reference(text)
    assert isinstance(ref, LayoutReference)
    assert (ref.path, ref.tag) == (path, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert ref.identifier == (digest or tag)
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text", ["oci:", "oci::tag", "oci:dir:", "oci:dir:bad tag"])
def test_bad_layout_references(text):
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_layout_reference_ignores_default_registry():
    assert parse_reference("oci:d:t", "127.0.0.1:5000") == LayoutReference("d", "t")
