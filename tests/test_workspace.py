"""The kept workspace: synced copies of the app that undo what buildpacks changed, never touching the app."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from ocibuild.cnb.workspace import prepared, sync


def tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = f"dir {oct(path.stat().st_mode & 0o777)}"
            else:
                out[rel] = path.read_bytes() + oct(path.stat().st_mode & 0o777).encode()
    return out


def make_app(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "Procfile").write_text("web: echo hi\n")
    (root / "src" / "pkg" / "main.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("src/pkg/main.py", root / "main")
    return root


def test_first_sync_copies_and_second_copies_nothing(tmp_path: Path) -> None:
    app, dest = make_app(tmp_path / "app"), tmp_path / "kept" / "tree"
    assert sync(app, dest) == 3
    assert tree(dest) == tree(app)
    assert sync(app, dest) == 0
    assert tree(dest) == tree(app)


def test_what_buildpacks_changed_is_undone(tmp_path: Path) -> None:
    app, dest = make_app(tmp_path / "app"), tmp_path / "kept" / "tree"
    before = tree(app)
    sync(app, dest)
    (dest / "Procfile").write_text("web: echo XX\n")          # same size, rewritten in place
    (dest / "build-output.bin").write_bytes(b"\0" * 10)       # added
    (dest / "src" / "pkg" / "main.py").unlink()               # removed
    (dest / "run.sh").chmod(0o644)                            # mode changed
    os.unlink(dest / "main")
    (dest / "main").mkdir()                                   # a symlink replaced by a directory
    sync(app, dest)
    assert tree(dest) == before
    assert tree(app) == before, "the app directory is never written"


def test_app_changes_propagate(tmp_path: Path) -> None:
    app, dest = make_app(tmp_path / "app"), tmp_path / "kept" / "tree"
    sync(app, dest)
    (app / "Procfile").write_text("web: echo changed and longer\n")
    (app / "src" / "pkg" / "main.py").unlink()
    (app / "new").mkdir()
    (app / "new" / "file").write_text("n")
    assert sync(app, dest) == 2
    assert tree(dest) == tree(app)
    assert filecmp.cmp(app / "Procfile", dest / "Procfile", shallow=False)


def test_include_filter_and_concurrent_build_gets_a_fresh_copy(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    (app / "debug.log").write_text("x")

    def no_logs(rel: str, is_dir: bool) -> bool:
        return not rel.endswith(".log")

    with prepared(app, tmp_path / "scratch", tmp_path / "fresh1", no_logs) as kept:
        assert kept.parent.parent == tmp_path / "scratch" / "workspaces"
        assert not (kept / "debug.log").exists() and (kept / "Procfile").exists()
        with prepared(app, tmp_path / "scratch", tmp_path / "fresh2", no_logs) as other:
            assert other == tmp_path / "fresh2"
            assert tree(other) == tree(kept)
