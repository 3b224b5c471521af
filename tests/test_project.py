"""project.toml: include/exclude (gitignore patterns), env, buildpacks, the project metadata label."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocibuild.cnb.project import Project, load_project
from ocibuild.errors import UsageError


@pytest.mark.parametrize(("path", "is_dir", "kept"), [
    ("a.log", False, False),            # unanchored glob matches at any depth
    ("x/b.log", False, False),
    ("keep.log", False, True),          # a later negation re-includes
    ("build", True, False),             # dir-only pattern: the directory ...
    ("build/x", False, False),          # ... and everything below it
    ("src/build", False, True),         # ... but not a file of that name
    ("secret", False, False),           # anchored to the root
    ("x/secret", False, True),
    ("docs/a/b.md", False, False),      # ** spans directories
    ("docs/c.md", False, False),        # ... including none
    ("main.py", False, True),
])
def test_exclude_patterns(path: str, is_dir: bool, kept: bool) -> None:
    project = Project(exclude=("*.log", "build/", "/secret", "docs/**/*.md", "!keep.log"))
    assert project.includes(path, is_dir) is kept


def test_include_patterns_keep_only_matches() -> None:
    project = Project(include=("src/", "Procfile"))
    assert project.includes("src/a.py", False)
    assert project.includes("Procfile", False)
    assert not project.includes("README.md", False)


def test_schema_02(tmp_path: Path) -> None:
    (tmp_path / "project.toml").write_text('''
[_]
schema-version = "0.2"
id = "demo"
version = "1.2.3"
source-url = "https://example.invalid/demo"

[io.buildpacks]
exclude = ["*.log"]

[[io.buildpacks.group]]
id = "ocibuild/procfile"
version = "0.1.0"

[[io.buildpacks.group]]
uri = "./bp"

[[io.buildpacks.build.env]]
name = "GREETING"
value = "from-project"
''')
    p = load_project(tmp_path / "project.toml")
    assert p.exclude == ("*.log",)
    assert p.env == {"GREETING": "from-project"}
    assert p.buildpacks == ("ocibuild/procfile@0.1.0", "./bp")
    assert p.metadata_label == {"source": {"type": "project", "version": {"declared": "1.2.3"},
                                           "metadata": {"url": "https://example.invalid/demo"}}}


def test_schema_01(tmp_path: Path) -> None:
    (tmp_path / "project.toml").write_text('''
[project]
version = "0.9"

[build]
include = ["src/"]

[[build.buildpacks]]
id = "x/y"

[[build.env]]
name = "A"
value = "1"
''')
    p = load_project(tmp_path / "project.toml")
    assert (p.include, p.env, p.buildpacks) == (("src/",), {"A": "1"}, ("x/y",))
    assert p.metadata_label["source"]["version"] == {"declared": "0.9"}


@pytest.mark.parametrize("text", [
    "[io.buildpacks]\ninclude = ['a']\nexclude = ['b']\n",      # both set
    "[io.buildpacks]\nexclude = 'not-a-list'\n",
    "[[io.buildpacks.build.env]]\nvalue = 'no name'\n",
    "[[io.buildpacks.group]]\nversion = '1'\n",                  # neither id nor uri
    "this is = = not toml",
])
def test_bad_descriptors_are_one_line_usage_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "project.toml").write_text(text)
    with pytest.raises(UsageError) as err:
        load_project(tmp_path / "project.toml")
    assert "\n" not in str(err.value) and "project.toml" in str(err.value)


def test_unknown_schema_version_and_non_utf8_are_refused(tmp_path: Path) -> None:
    (tmp_path / "project.toml").write_text('[_]\nschema-version = "7.0"\n')
    with pytest.raises(UsageError, match="unsupported project.toml schema-version '7.0'"):
        load_project(tmp_path / "project.toml")
    (tmp_path / "project.toml").write_bytes(b'[_]\nid = "\xff"\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        load_project(tmp_path / "project.toml")


def test_non_utf8_buildpack_toml_is_a_descriptor_error(tmp_path: Path) -> None:
    from ocibuild.cnb.buildpack import load_buildpacks
    from ocibuild.cnb.errors import DescriptorError

    bp = tmp_path / "bp"
    (bp / "bin").mkdir(parents=True)
    (bp / "buildpack.toml").write_bytes(b'api = "0.10"\n[buildpack]\nid = "x/\xff"\nversion = "1"\n')
    (bp / "bin" / "build").write_text("#!/bin/sh\n")
    with pytest.raises(DescriptorError, match="buildpack.toml: not UTF-8 text"):
        load_buildpacks(bp)
