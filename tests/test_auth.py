"""Unit behaviour of the auth pieces: challenge parsing, scope sets, token expiry, masking."""

from __future__ import annotations

import email.utils
import time

from ocibuild.store.registry import Credential, TokenCache, merge_scopes, parse_retry_after, parse_www_authenticate
from ocibuild.store.registry.auth import pick_challenge, token_from_response


def test_bearer_challenge_with_quoted_commas():
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.example/token"
    assert c.service == "registry.example"
    assert c.scopes == ("repository:samalba/my-app:pull,push",)


def test_several_challenges_and_odd_spacing():
    header = 'Basic realm="a, b",  Bearer  realm = "https://t/x" , service=svc ,error="insufficient_scope"'
    challenges = parse_www_authenticate(header)
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].realm == "a, b"
    assert challenges[1].params == {"realm": "https://t/x", "service": "svc", "error": "insufficient_scope"}
    assert pick_challenge(challenges).scheme == "bearer"


def test_escaped_quote_and_token68():
    challenges = parse_www_authenticate('Negotiate YWJj==, Basic realm="say \\"hi\\""')
    assert [c.scheme for c in challenges] == ["negotiate", "basic"]
    assert challenges[1].realm == 'say "hi"'
    assert pick_challenge(challenges[:1]) is None


def test_several_scopes_in_challenge():
    (c,) = parse_www_authenticate('Bearer realm="r",scope="repository:a:pull repository:b:pull,push"')
    assert c.scopes == ("repository:a:pull", "repository:b:pull,push")


def test_merge_scopes_unions_actions_and_keeps_host_port_names():
    merged = merge_scopes(
        ["repository:localhost:5000/app:pull", "repository:localhost:5000/app:push,pull", "repository:base:pull"]
    )
    assert merged == ("repository:base:pull", "repository:localhost:5000/app:pull,push")
    assert merge_scopes(["repository:b:pull", "repository:a:pull"]) == merge_scopes(
        ["repository:a:pull", "repository:b:pull"]
    )


def test_token_cache_per_scope_set_and_expiry():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    pull, push = ("repository:a:pull",), ("repository:a:pull,push",)
    cache.put("reg", pull, "t-pull", 300)
    cache.put("reg", push, "t-push", None)  # no expires_in: 60 s default
    assert cache.get("reg", pull) == "t-pull" and cache.get("reg", push) == "t-push"
    assert cache.get("other", pull) is None
    now[0] += 61
    assert cache.get("reg", push) is None
    assert cache.get("reg", pull) == "t-pull"
    cache.invalidate("reg", pull, "not-this-one")
    assert cache.get("reg", pull) == "t-pull"
    cache.invalidate("reg", pull, "t-pull")
    assert cache.get("reg", pull) is None
    assert "t-pull" not in repr(cache)


def test_token_response_fields():
    assert token_from_response({"access_token": "x", "expires_in": 10}, "h") == ("x", 10, None)
    assert token_from_response({"token": "y", "refresh_token": "r"}, "h") == ("y", None, "r")


def test_credentials_masked():
    cred = Credential("alice", "hunter2-secret")
    tok = Credential(identity_token="eyJ-identity")
    for text in (repr(cred), str(cred), repr(tok), str(tok), repr([cred, tok])):
        assert "hunter2" not in text and "eyJ" not in text
    assert "alice" in repr(cred)


def test_retry_after_forms():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("99999") == 60.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 <= parse_retry_after(future) <= 20
