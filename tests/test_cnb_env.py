"""Env files, suffix rules, include-list and launch env ordering (ocibuild.cnb.env)."""

from __future__ import annotations

import os
from pathlib import Path

from ocibuild.cnb.env import (
    BuildEnv,
    EnvOp,
    LaunchEnv,
    build_layer_ops,
    env_dir_ops,
    include_listed,
    launch_layer_ops,
)


def write(d: Path, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (d / name.replace("__", ".")).write_text(value)
    return d


def apply(ops, base=None) -> dict[str, str]:
    env = dict(base or {})
    for op in ops:
        op.apply(env)
    return env


def test_every_suffix(tmp_path: Path) -> None:
    d = write(
        tmp_path / "env",
        PLAIN="p",
        OVR__override="o",
        DEF__default="d",
        KEPT__default="ignored",
        APP__append="a",
        APP__delim=":",
        PRE__prepend="b",
        NODELIM__prepend="x",
        UNKNOWN__bogus="nope",
    )
    env = apply(env_dir_ops(d), {"PLAIN": "old", "OVR": "old", "KEPT": "k", "APP": "a0", "PRE": "b0", "NODELIM": "y"})
    assert env["PLAIN"] == "p"  # unsuffixed = override for API >= 0.5
    assert env["OVR"] == "o"
    assert env["DEF"] == "d"
    assert env["KEPT"] == "k"
    assert env["APP"] == "a0:a"
    assert env["PRE"] == "bb0"  # no .delim: joined with nothing
    assert env["NODELIM"] == "xy"
    assert "UNKNOWN" not in env and "APP.delim" not in env


def test_append_prepend_on_empty_do_not_add_delimiter(tmp_path: Path) -> None:
    d = write(tmp_path / "env", A__append="a", A__delim=",", P__prepend="p", P__delim=",")
    assert apply(env_dir_ops(d)) == {"A": "a", "P": "p"}


def test_values_are_verbatim_and_directories_skipped(tmp_path: Path) -> None:
    d = write(tmp_path / "env", NL="line\n")
    (d / "subdir").mkdir()
    (d / "LINK").symlink_to(d / "subdir")
    assert apply(env_dir_ops(d)) == {"NL": "line\n"}


def test_include_list_drops_everything_else() -> None:
    environ = {"HOME": "/h", "PATH": "/bin", "HTTP_PROXY": "p", "no_proxy": "n", "SECRET": "s", "CNB_STACK_ID": "x",
               "LD_LIBRARY_PATH": "/l", "CNB_APP_DIR": "/a"}
    assert include_listed(environ) == {k: environ[k] for k in ("HOME", "PATH", "HTTP_PROXY", "no_proxy",
                                                               "CNB_STACK_ID", "LD_LIBRARY_PATH")}
    assert "SECRET" not in BuildEnv(environ).vars


def test_platform_env_prepends_path_vars_and_sets_others(tmp_path: Path) -> None:
    platform = tmp_path / "platform"
    write(platform / "env", PATH="/user/bin", FOO="bar", HOME="/elsewhere")
    env = BuildEnv({"PATH": "/bin", "HOME": "/root"}).with_overrides(platform)
    assert env == {"PATH": "/user/bin:/bin", "FOO": "bar", "HOME": "/elsewhere"}
    assert BuildEnv({"PATH": "/bin"}).with_overrides(None) == {"PATH": "/bin"}  # clear-env


def test_build_config_env_applies_suffixes_after_platform(tmp_path: Path) -> None:
    platform = write(tmp_path / "platform" / "env", FOO="user").parent
    config = write(tmp_path / "config" / "env", FOO__append="cfg", FOO__delim="+", BAR__default="b")
    env = BuildEnv({}).with_overrides(platform, config.parent)
    assert env == {"FOO": "user+cfg", "BAR": "b"}


def test_build_layer_ops_root_dirs_use_visible_path(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    for sub in ("bin", "lib", "include", "pkgconfig"):
        (layer / sub).mkdir(parents=True)
    write(layer / "env.build", ONLY="build")
    write(layer / "env.launch", NOT="launch")
    env = apply(build_layer_ops(layer, "/layers/bp/layer"), {"PATH": "/bin"})
    assert env == {
        "PATH": "/layers/bp/layer/bin:/bin",
        "LD_LIBRARY_PATH": "/layers/bp/layer/lib",
        "LIBRARY_PATH": "/layers/bp/layer/lib",
        "CPATH": "/layers/bp/layer/include",
        "PKG_CONFIG_PATH": "/layers/bp/layer/pkgconfig",
        "ONLY": "build",
    }


def test_launch_env_per_process(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "include").mkdir()
    write(layer / "env", BOTH="env")
    write(layer / "env.launch", BOTH__append="launch", BOTH__delim=" ", L="l")
    write(layer / "env.launch" / "web", W="w", BOTH__override="web")
    write(layer / "env.build", B="b")
    launch = LaunchEnv(tuple(launch_layer_ops(layer, "/layers/x/layer")))
    assert launch.processes == frozenset({"web"})
    assert launch.resolve({"PATH": "/usr/bin"}) == {"PATH": "/layers/x/layer/bin:/usr/bin", "BOTH": "env launch", "L": "l"}
    web = launch.resolve({"PATH": "/usr/bin"}, "web")
    assert web["BOTH"] == "web" and web["W"] == "w" and "CPATH" not in web and "B" not in web


def test_env_op_default_only_when_empty() -> None:
    env = {"A": ""}
    EnvOp("A", "default", "x").apply(env)
    assert env == {"A": "x"}
    assert os.pathsep == ":"
