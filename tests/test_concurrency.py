"""8 concurrent ``ocibuild`` processes against one scratch layout and one registry (bounded: 60 s, as issue 5 asks).

Workers loop real CLI commands: builds into the scratch layout, copies in (layout -> scratch), tags
(copy within the scratch layout), pushes (scratch -> registry) and ``gc --grace 0``. Every command
that succeeded records what it wrote; afterwards every recorded tag must still name its digest with
every blob present (no lost tag, no missing blob), and ``ocibuild fsck`` must be clean. The
operations completed and the anomalies found are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from support.images import write_image
from support.registry import RegistryServer

DURATION = 60.0
WORKERS = ("build", "build", "copy-in", "copy-in", "tag", "push", "push", "gc")


def test_eight_processes_build_copy_tag_gc(tmp_path: Path, registry: RegistryServer, fresh_repo: str) -> None:
    scratch = tmp_path / "scratch"
    layout = scratch / "layout"
    env = dict(os.environ, OCIBUILD_SCRATCH=str(scratch), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    src = write_image(tmp_path / "src", [{"a.txt": b"a" * 5000}, {"b.bin": os.urandom(200_000)}], tag="v1")
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("web: echo hi\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ocibuild.cli.main", "--insecure-registry", registry.host, *args],
                              capture_output=True, text=True, env=env, timeout=120)

    seed = cli("copy", src.ref, f"oci:{layout}:seed")
    assert seed.returncode == 0, seed.stderr
    written: list[tuple[str, str]] = []  # (where, tag) that a successful command wrote
    ops: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION

    def worker(n: int, kind: str) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            tag = f"{kind}-{n}-{i}"
            if kind == "build":
                args, where = ("build", f"oci:{layout}:{tag}", "--path", str(app)), "layout"
            elif kind == "copy-in":
                args, where = ("copy", src.ref, f"oci:{layout}:{tag}"), "layout"
            elif kind == "tag":
                args, where = ("copy", f"oci:{layout}:seed", f"oci:{layout}:{tag}"), "layout"
            elif kind == "push":
                args, where = ("copy", f"oci:{layout}:seed", registry.ref(fresh_repo, tag)), "registry"
            else:
                args, where = ("gc", "--grace", "0"), ""
            proc = cli(*args)
            with lock:
                if proc.returncode == 0:
                    ops[kind] += 1
                    if where:
                        written.append((where, tag))
                else:
                    failures.append(f"{kind}: {proc.stderr.strip().splitlines()[-1:]}")

    threads = [threading.Thread(target=worker, args=(n, k)) for n, k in enumerate(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION + 180)

    anomalies: list[str] = []
    index = json.loads((layout / "index.json").read_bytes())
    tags = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]
            if "org.opencontainers.image.ref.name" in e.get("annotations", {})}
    blobs = layout / "blobs" / "sha256"
    for where, tag in written:
        if where == "layout":
            entry = tags.get(tag)
            if entry is None:
                anomalies.append(f"lost tag {tag}")
                continue
            doc = json.loads((blobs / entry["digest"][7:]).read_bytes())
            for child in [doc.get("config"), *doc.get("layers", []), *doc.get("manifests", [])]:
                if child and not (blobs / child["digest"][7:]).exists():
                    anomalies.append(f"{tag}: missing blob {child['digest']}")
        else:
            r = requests.get(f"{registry.url}/v2/{fresh_repo}/manifests/{tag}", timeout=10,
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            if r.status_code != 200:
                anomalies.append(f"lost registry tag {tag}")
    fsck = cli("fsck")
    if fsck.returncode != 0:
        anomalies.append(f"fsck: {fsck.stdout.strip()}")
    total = sum(ops.values())
    print(f"\nconcurrency: {len(WORKERS)} processes for {DURATION:g}s: {total} operations completed {dict(ops)}; "
          f"failed commands: {len(failures)}; anomalies: {len(anomalies)}")
    for line in failures[:10] + anomalies[:20]:
        print("  ", line)
    assert total >= len(WORKERS), "too few operations to mean anything"
    assert not failures, failures[:5]
    assert not anomalies, anomalies[:10]
