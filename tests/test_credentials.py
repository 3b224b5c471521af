"""Credential lookup chain, credential helpers, and login/logout against a real Basic-auth registry."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from ocibuild.errors import AuthError
from ocibuild.store.registry import Credential, login, logout, lookup
from ocibuild.store.registry import credentials as creds

HELPER = r'''#!{python}
"""docker-credential-testhelper: a file-backed credential helper speaking docker's protocol."""
import json, os, sys
store = os.environ["HELPER_STORE"]
data = json.load(open(store)) if os.path.exists(store) else {{}}
action = sys.argv[1]
payload = sys.stdin.read()
with open(store + ".log", "a") as log:
    log.write(action + " " + (payload if action != "store" else json.loads(payload)["ServerURL"]) + "\n")
if action == "get":
    if payload.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = data[payload.strip()]
    print(json.dumps({{"ServerURL": payload.strip(), "Username": user, "Secret": secret}}))
elif action == "store":
    doc = json.loads(payload)
    data[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    json.dump(data, open(store, "w"))
elif action == "erase":
    if data.pop(payload.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    json.dump(data, open(store, "w"))
'''


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and none of the credential environment variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def helper(tmp_path, monkeypatch) -> Path:
    """Installs docker-credential-testhelper on PATH; returns its JSON store file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-testhelper"
    script.write_text(HELPER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path / "helper-store.json"
    monkeypatch.setenv("HELPER_STORE", str(store))
    return store


def test_lookup_chain_order(home, tmp_path, monkeypatch):
    host = "reg.example:5000"
    entry = lambda user: {"auths": {host: {"auth": b64(f"{user}:pw-{user}")}}}  # noqa: E731
    write(home / ".docker" / "config.json", entry("home"))
    assert lookup(host) == Credential("home", "pw-home")
    monkeypatch.setenv("DOCKER_CONFIG", str(write(tmp_path / "dc" / "config.json", entry("dockerconfig")).parent))
    assert lookup(host) == Credential("dockerconfig", "pw-dockerconfig")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    write(tmp_path / "run" / "containers" / "auth.json", entry("xdg"))
    assert lookup(host) == Credential("xdg", "pw-xdg")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write(tmp_path / "raf.json", entry("raf"))))
    assert lookup(host) == Credential("raf", "pw-raf")
    explicit = write(tmp_path / "explicit.json", entry("explicit"))
    assert lookup(host, auth_file=str(explicit)) == Credential("explicit", "pw-explicit")
    # a file without an entry for the host does not stop the search
    assert lookup(host, auth_file=str(write(tmp_path / "other.json", {"auths": {"else.example": {}}}))) == Credential(
        "raf", "pw-raf"
    )
    assert lookup("unknown.example") is None


def test_entry_forms(home, tmp_path):
    path = write(
        tmp_path / "auth.json",
        {
            "auths": {
                "a.example": {"auth": b64("alice:pa:ss")},
                "b.example": {"username": "bob", "password": "pw"},
                "c.example": {"auth": "", "identitytoken": "refresh-123"},
                "https://d.example/v2/": {"auth": b64("dan:pw")},
                "e.example/some/repo": {"auth": b64("eve:pw")},
                "http://localhost:5000": {"auth": b64("loc:pw")},
            }
        },
    )
    assert lookup("a.example", str(path)) == Credential("alice", "pa:ss")
    assert lookup("b.example", str(path)) == Credential("bob", "pw")
    assert lookup("c.example", str(path)) == Credential("", "", "refresh-123")
    assert lookup("d.example", str(path)) == Credential("dan", "pw")
    assert lookup("e.example", str(path)) == Credential("eve", "pw")
    assert lookup("localhost:5000", str(path)) == Credential("loc", "pw")


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases(home, key):
    write(home / ".docker" / "config.json", {"auths": {key: {"auth": b64("hubuser:hubpw")}}})
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert lookup(name) == Credential("hubuser", "hubpw")


def test_bad_auth_entry_is_an_auth_error(home):
    write(home / ".docker" / "config.json", {"auths": {"x.example": {"auth": b64("no-colon")}}})
    with pytest.raises(AuthError):
        lookup("x.example")


def test_cred_helpers_per_host(home, helper):
    helper.write_text(json.dumps({"reg.example": ["helperuser", "helpersecret"], "tok.example": ["<token>", "idt"]}))
    write(
        home / ".docker" / "config.json",
        {
            "credHelpers": {"reg.example": "testhelper", "tok.example": "testhelper", "none.example": "testhelper"},
            "auths": {"plain.example": {"auth": b64("p:q")}},
        },
    )
    assert lookup("reg.example") == Credential("helperuser", "helpersecret")
    assert lookup("tok.example") == Credential("", "", "idt")  # <token> means identity token
    assert lookup("none.example") is None
    assert lookup("plain.example") == Credential("p", "q")
    assert "get reg.example" in Path(str(helper) + ".log").read_text()


def test_creds_store_for_docker_hub(home, helper):
    helper.write_text(json.dumps({"https://index.docker.io/v1/": ["hub", "hubsecret"]}))
    write(home / ".docker" / "config.json", {"credsStore": "testhelper", "auths": {"https://index.docker.io/v1/": {}}})
    assert lookup("docker.io") == Credential("hub", "hubsecret")
    assert Path(str(helper) + ".log").read_text().splitlines() == ["get https://index.docker.io/v1/"]


def test_missing_helper_is_reported(home):
    write(home / ".docker" / "config.json", {"credHelpers": {"reg.example": "does-not-exist"}})
    with pytest.raises(AuthError, match="docker-credential-does-not-exist"):
        lookup("reg.example")


def test_save_docker_hub_key_mode_and_other_entries(home, tmp_path):
    path = write(tmp_path / "cfg" / "config.json", {"auths": {"keep.example": {"auth": b64("k:k")}}, "psFormat": "x"})
    creds.save("docker.io", Credential("hub", "pw"), path)
    doc = json.loads(path.read_text())
    assert doc["auths"]["https://index.docker.io/v1/"] == {"auth": b64("hub:pw")}
    assert doc["auths"]["keep.example"] == {"auth": b64("k:k")} and doc["psFormat"] == "x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left behind


def test_login_logout_against_basic_registry(home, tmp_path, basic_registry, sentinel_password):
    config = write(tmp_path / "docker" / "config.json", {"auths": {"other.example": {"auth": b64("o:o")}}})
    host = basic_registry.host
    with pytest.raises(AuthError) as info:
        login(host, basic_registry.username, "wrong-password", config_path=config)
    assert "wrong-password" not in str(info.value)
    assert host not in json.loads(config.read_text())["auths"]  # nothing written on a refused login

    written = login(host, basic_registry.username, sentinel_password, config_path=config)
    assert written == config
    doc = json.loads(config.read_text())
    assert doc["auths"][host] == {"auth": b64(f"{basic_registry.username}:{sentinel_password}")}
    assert doc["auths"]["other.example"] == {"auth": b64("o:o")}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert lookup(host, str(config)) == Credential(basic_registry.username, sentinel_password)

    assert logout(host, config_path=config) is True
    doc = json.loads(config.read_text())
    assert host not in doc["auths"] and "other.example" in doc["auths"]
    assert logout(host, config_path=config) is False


def test_login_through_creds_store(home, tmp_path, helper, basic_registry, sentinel_password, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    config = write(tmp_path / "dc" / "config.json", {"credsStore": "testhelper"})
    login(basic_registry.host, basic_registry.username, sentinel_password)  # default path: $DOCKER_CONFIG
    assert sentinel_password not in config.read_text()
    assert json.loads(helper.read_text())[basic_registry.host] == [basic_registry.username, sentinel_password]
    assert lookup(basic_registry.host) == Credential(basic_registry.username, sentinel_password)
    assert logout(basic_registry.host) is True
    assert basic_registry.host not in json.loads(helper.read_text())
