"""Transfers through a fault-injecting proxy in front of the real registry (``support.faultproxy``).

Connections dropped mid-blob on push and on pull, 503/429 storms with Retry-After, stalled
responses. Within the retry budget every ``ocibuild copy`` must complete — a push dropped mid-body
starts a new upload session and resends, a pull dropped mid-blob resumes with ``Range`` — and every
digest is then verified by reading the result back. Beyond the budget it fails with one
``ocibuild: error:`` line, leaving no tag and no unverified or partial blob in the destination; a
retried copy without faults then completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from ocibuild import api
from ocibuild.errors import OCIBuildError
from ocibuild.store.registry import RegistryOptions

from support.faultproxy import Fault, FaultProxy
from support.images import ImageInfo, write_image
from support.registry import RegistryServer

FAULTS: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
LAYER_BYTES = 400 * 1024


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    rnd = random.Random(5)
    layers = [{f"data{i}.bin": rnd.randbytes(LAYER_BYTES)} for i in range(3)]  # incompressible: ~1.2 MB of blobs
    return write_image(tmp_path_factory.mktemp("fault-src") / "layout", layers, tag="v1")


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.port) as p:
        yield p
    for kind in p.injected():
        FAULTS[kind.split("@")[0].split("(")[0]] += 1


def ocibuild(*args: str, tmp: Path, host: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OCIBUILD_SCRATCH=str(tmp / "scratch"), DOCKER_CONFIG=str(tmp / "docker"))
    return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "--insecure-registry", host, *args],
                          capture_output=True, text=True, env=env, timeout=240)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(lines) == 1 and proc.returncode in (1, 2), proc.stderr
    return lines[0]


def registry_has_tag(registry: RegistryServer, repo: str, tag: str) -> bool:
    r = requests.head(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.status_code == 200


def verify_layout(layout: Path, tag: str | None, expect: str | None) -> None:
    """Every blob hashes to its name, nothing is left in .tmp, and ``tag`` is present exactly when expected."""
    blobs = layout / "blobs" / "sha256"
    for p in blobs.iterdir() if blobs.exists() else []:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == p.name, f"unverified blob {p.name}"
    tmp = layout / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"partial files left: {list(tmp.iterdir())}"
    entries = json.loads((layout / "index.json").read_bytes())["manifests"] if (layout / "index.json").exists() else []
    tags = {e.get("annotations", {}).get("org.opencontainers.image.ref.name"): e["digest"] for e in entries}
    if expect is None:
        assert tag not in tags
        return
    assert tags.get(tag) == expect
    manifest = json.loads((blobs / expect[7:]).read_bytes())
    for d in [manifest["config"], *manifest["layers"]]:
        assert (blobs / d["digest"][7:]).stat().st_size == d["size"]


def pushed_intact(registry: RegistryServer, repo: str, tag: str, image: ImageInfo, tmp: Path) -> None:
    """Read the pushed image back without the proxy: same digest, and ocibuild verifies every blob."""
    back = tmp / f"readback-{tag}"
    proc = ocibuild("copy", registry.ref(repo, tag), f"oci:{back}:x", tmp=tmp, host=registry.host)
    assert proc.returncode == 0, proc.stderr
    verify_layout(back, "x", image.manifest.digest)


# -- pushes ----------------------------------------------------------------------------------------
PUSH_FAULTS = {
    "drop-up-early": [Fault("drop", after=2_000, direction="up")],
    "drop-up-mid-blob": [Fault("drop", after=250_000, direction="up")],
    "drop-up-late": [Fault("drop", after=380_000, direction="up")],
    "drop-down-on-answer": [Fault("drop", after=100, direction="down")] * 2,
    "503-storm": [Fault("status", status=503, retry_after="0")] * 3,
    "429-retry-after": [Fault("status", status=429, retry_after="1")] * 2,
    "503-no-retry-after": [Fault("status", status=503, retry_after=None)],
    "mixed": [Fault("status", status=503), Fault("drop", after=150_000, direction="up"), Fault("status", status=429)],
    "storm-beyond-retries": [Fault("status", status=503, retry_after="0")] * 40,
}
# Cases whose faults must all really have been taken (a drop whose byte count was never crossed
# would make the case vacuous). The queue empties synchronously when a drop fires; the proxy's log
# is written when the connection's thread ends, possibly after the client exited.
MUST_INJECT = ("drop-up-early", "drop-up-mid-blob", "drop-up-late", "drop-down-early", "drop-down-mid-blob",
               "drop-down-late")


def within_budget(case: str) -> bool:
    return not case.endswith("beyond-retries")


def copy_through_faults(proxy: FaultProxy, case: str, faults: list[Fault], what: str,
                        copy: Callable[[], subprocess.CompletedProcess[str]],
                        left_nothing: Callable[[], None]) -> None:
    """Run ``copy`` with ``faults`` injected. Within the retry budget it must succeed. Beyond it: a
    non-zero exit, nothing committed (``left_nothing``), one error line, and the same copy without
    faults then completes."""
    proxy.inject(*faults)
    proc = copy()
    if case in MUST_INJECT:
        assert not proxy.faults, f"{case}: faults never fired: {list(proxy.faults)}"
    if within_budget(case):
        assert proc.returncode == 0, f"{case}: {what} within the retry budget failed: {proc.stderr}"
        OUTCOMES[f"{what} completed"] += 1
        return
    assert proc.returncode != 0
    left_nothing()
    proxy.faults.clear()
    one_line_error(proc)
    OUTCOMES[f"{what} failed cleanly"] += 1
    again = copy()
    assert again.returncode == 0, f"retried {what} failed: {again.stderr}"
    OUTCOMES[f"retried {what} completed"] += 1


@pytest.mark.parametrize("case", sorted(PUSH_FAULTS))
def test_push_through_faults(tmp_path: Path, registry: RegistryServer, proxy: FaultProxy, image: ImageInfo,
                             fresh_repo: str, case: str) -> None:
    def no_tag() -> None:
        assert not registry_has_tag(registry, fresh_repo, "v1"), "a failed push left its tag"

    copy_through_faults(
        proxy, case, PUSH_FAULTS[case], "push",
        lambda: ocibuild("copy", image.ref, f"{proxy.host}/{fresh_repo}:v1", tmp=tmp_path, host=proxy.host),
        no_tag)
    pushed_intact(registry, fresh_repo, "v1", image, tmp_path)


# -- pulls -----------------------------------------------------------------------------------------
PULL_FAULTS = {
    "drop-down-early": [Fault("drop", after=3_000)],
    "drop-down-mid-blob": [Fault("drop", after=200_000)] * 2,
    "drop-down-late": [Fault("drop", after=390_000)],
    "503-storm": [Fault("status", status=503, retry_after="0")] * 4,
    "429-retry-after": [Fault("status", status=429, retry_after="1")],
    "storm-beyond-retries": [Fault("status", status=503, retry_after="0")] * 40,
    # every connection dies after 10 kB: a 400 kB blob would need ~40 resumes, over the budget (5)
    "drops-beyond-retries": [Fault("drop", after=10_000)] * 80,
}


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, image: ImageInfo, tmp_path_factory: pytest.TempPathFactory) -> str:
    repo = "test/faults-pull-source"
    tmp = tmp_path_factory.mktemp("fault-push")
    proc = ocibuild("copy", image.ref, registry.ref(repo, "v1"), tmp=tmp, host=registry.host)
    assert proc.returncode == 0, proc.stderr
    return repo


@pytest.mark.parametrize("case", sorted(PULL_FAULTS))
def test_pull_through_faults(tmp_path: Path, proxy: FaultProxy, image: ImageInfo, pushed: str, case: str) -> None:
    dest = tmp_path / "dest"
    copy_through_faults(
        proxy, case, PULL_FAULTS[case], "pull",
        lambda: ocibuild("copy", f"{proxy.host}/{pushed}:v1", f"oci:{dest}:v1", tmp=tmp_path, host=proxy.host),
        lambda: verify_layout(dest, "v1", None))
    verify_layout(dest, "v1", image.manifest.digest)


# -- slower than the timeout (in process: the CLI's timeout is 60 s) --------------------------------
@pytest.mark.parametrize("direction", ["pull", "push"])
def test_stalled_responses_time_out_cleanly(tmp_path: Path, registry: RegistryServer, proxy: FaultProxy,
                                            image: ImageInfo, pushed: str, fresh_repo: str, direction: str) -> None:
    options = RegistryOptions(insecure=frozenset({proxy.host}), timeout=0.5, retries=1)
    proxy.default = Fault("stall", seconds=2)  # every connection stalls, however many the client opens
    dest = tmp_path / "dest"
    with pytest.raises(OCIBuildError) as info:
        if direction == "pull":
            api.copy(f"{proxy.host}/{pushed}:v1", f"oci:{dest}:v1", options=options)
        else:
            api.copy(image.ref, f"{proxy.host}/{fresh_repo}:v1", options=options)
    assert "\n" not in str(info.value)
    OUTCOMES[f"stalled {direction} failed cleanly"] += 1
    if direction == "pull":
        verify_layout(dest, "v1", None)
    else:
        assert not registry_has_tag(registry, fresh_repo, "v1")
    # stalls that end before the timeout are just slow: a stall shorter than the timeout then passes
    proxy.default = Fault()
    proxy.faults.clear()
    proxy.inject(Fault("stall", seconds=0.1))
    options = RegistryOptions(insecure=frozenset({proxy.host}), timeout=5, retries=3)
    if direction == "pull":
        api.copy(f"{proxy.host}/{pushed}:v1", f"oci:{dest}:v1", options=options)
        verify_layout(dest, "v1", image.manifest.digest)
    else:
        api.copy(image.ref, f"{proxy.host}/{fresh_repo}:v1", options=options)
        pushed_intact(registry, fresh_repo, "v1", image, tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print what this module tried (run with ``-s``), for the hardening table."""
    yield
    print(f"\nfaults injected: {dict(FAULTS)} total={sum(FAULTS.values())}; outcomes: {dict(OUTCOMES)}")
