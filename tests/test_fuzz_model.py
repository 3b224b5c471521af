"""Property tests (hypothesis, derandomized): the model's parsers and the tar writer.

Each test counts the examples it ran into ``FUZZ_COUNTS``; the session prints the totals (``-s``)
so the hardening table can report them. Only ``OCIBuildError`` subclasses may escape a parser.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocibuild.cnb.env import ACTIONS, BuildEnv, env_dir_ops
from ocibuild.errors import InvalidDigest, InvalidReference, OCIBuildError
from ocibuild.layer.tarwriter import TarEntry, TarOptions, pack_mode, write_tar
from ocibuild.oci import mediatype as mt
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import ImageConfig, Index, Manifest, parse_manifest
from ocibuild.oci.reference import LayoutReference, Reference, parse_reference

FUZZ_COUNTS: Counter[str] = Counter()
FAST = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    total = sum(FUZZ_COUNTS.values())
    print(f"\nfuzz examples: {dict(sorted(FUZZ_COUNTS.items()))} total={total}")


# -- references ------------------------------------------------------------------------------------
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_component = st.builds(
    lambda parts, seps: parts[0] + "".join(s + p for s, p in zip(seps, parts[1:])),
    st.lists(_alnum, min_size=1, max_size=3),
    st.lists(st.sampled_from([".", "_", "__", "-", "--"]), min_size=2, max_size=2),
)
_domain = st.one_of(
    st.just("localhost"),
    st.builds(lambda a, b: f"{a}.{b}", _alnum, st.sampled_from(["io", "example", "local"])),
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 255)] * 4),
)
_registry = st.builds(lambda d, p: d + (f":{p}" if p else ""), _domain, st.one_of(st.none(), st.integers(1, 65535)))
_tag = st.from_regex(r"\A[\w][\w.-]{0,40}\Z", fullmatch=True).filter(lambda t: t.isascii())
_sha = st.binary(min_size=1, max_size=32).map(lambda b: Digest.of(b))


@FAST
@given(_registry, st.lists(_component, min_size=1, max_size=4), st.one_of(st.none(), _tag), st.one_of(st.none(), _sha))
def test_reference_format_parse_round_trip(registry: str, path: list[str], tag: str | None, digest: Digest | None) -> None:
    FUZZ_COUNTS["reference round trip"] += 1
    repository = "/".join(path)
    if len(registry) + 1 + len(repository) > 255:
        return
    ref = Reference(registry, repository, tag if tag or digest else "latest", digest)
    parsed = parse_reference(str(ref))
    assert parsed == ref
    assert parse_reference("docker://" + str(ref)) == ref
    assert str(parsed) == str(ref)


@FAST
@given(st.text(max_size=80))
def test_arbitrary_reference_text_parses_or_raises_invalid_reference(text: str) -> None:
    FUZZ_COUNTS["reference arbitrary text"] += 1
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        assert "\n" not in str(exc).strip() or "\n" in text
        return
    # Whatever parses is a fixed point of format -> parse.
    assert parse_reference(str(ref)) == ref


@FAST
@given(st.from_regex(r"\A[A-Za-z0-9._/-]{1,30}\Z", fullmatch=True).filter(lambda p: ":" not in p and "@" not in p),
       st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9._+-][A-Za-z0-9._:@/+-]{0,30}\Z", fullmatch=True)),
       st.one_of(st.none(), _sha))
def test_layout_reference_round_trip(path: str, tag: str | None, digest: Digest | None) -> None:
    FUZZ_COUNTS["layout reference round trip"] += 1
    ref = LayoutReference(path, None if digest else tag, digest)
    assert parse_reference(str(ref)) == ref


# -- digests ---------------------------------------------------------------------------------------
_SPEC_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_digestish = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, e: f"{a}:{e}", st.sampled_from(["sha256", "sha512", "sha384", "blake3", "a+b", "SHA256", "x.y-z"]),
              st.text("0123456789abcdefABCDEF=_-xyz", max_size=130)),
    st.binary(max_size=64).map(lambda b: str(Digest.of(b))),
    st.binary(max_size=64).map(lambda b: str(Digest.of(b, "sha512"))),
)


@FAST
@given(_digestish)
def test_digest_grammar(text: str) -> None:
    FUZZ_COUNTS["digest grammar"] += 1
    try:
        d = Digest.parse(text)
    except InvalidDigest:
        ok_grammar = _SPEC_GRAMMAR.fullmatch(text) is not None
        if ok_grammar:  # refused only for a registered algorithm with the wrong encoded shape
            algorithm, encoded = text.split(":", 1)
            assert algorithm in ("sha256", "sha512")
            assert not re.fullmatch(r"[a-f0-9]{%d}" % (64 if algorithm == "sha256" else 128), encoded)
        return
    assert _SPEC_GRAMMAR.fullmatch(text)
    assert str(d) == text and Digest.parse(str(d)) == d
    if d.algorithm in ("sha256", "sha512"):
        assert d.supported and len(d.encoded) == (64 if d.algorithm == "sha256" else 128)


# -- arbitrary JSON as manifest / index / config ---------------------------------------------------
_KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size", "platform",
         "annotations", "urls", "data", "artifactType", "subject", "os", "architecture", "variant",
         "os.version", "os.features", "rootfs", "diff_ids", "Env", "Labels", "created", "type", "x"]
_good_digest = st.binary(max_size=8).map(lambda b: str(Digest.of(b)))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(allow_nan=False), st.text(max_size=10),
    _good_digest, st.sampled_from([2, 1, mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.OCI_CONFIG,
                                   mt.OCI_LAYER_GZIP, "linux", "amd64", "dGVzdA==", "a=b"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=6)),
    max_leaves=25,
)
_descriptor = st.fixed_dictionaries(
    {"mediaType": st.sampled_from([mt.OCI_MANIFEST, mt.OCI_LAYER_GZIP, mt.OCI_CONFIG, "application/x-unknown"]),
     "digest": _good_digest, "size": st.integers(0, 100)},
    optional={k: _json for k in ("platform", "annotations", "urls", "data", "artifactType")},
)
_doc = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"schemaVersion": st.just(2)},
        optional={"mediaType": _scalars, "config": st.one_of(_descriptor, _json), "layers": st.lists(_descriptor | _json, max_size=3),
                  "manifests": st.lists(_descriptor | _json, max_size=3), "annotations": _json,
                  "subject": _descriptor | _json, "artifactType": _scalars},
    ),
    st.fixed_dictionaries(
        {"architecture": _scalars, "os": _scalars},
        optional={"config": st.one_of(_json, st.fixed_dictionaries({}, optional={"Env": _json, "Labels": _json})),
                  "rootfs": st.one_of(_json, st.fixed_dictionaries({"diff_ids": _json})), "variant": _json,
                  "os.version": _json, "created": _json},
    ),
)


def _exercise(obj: Any) -> None:
    """Touch every accessor a command would use: none may raise anything but OCIBuildError."""
    if isinstance(obj, (Manifest, Index)):
        obj.descriptor()
        for child in obj.children():
            child.to_dict()
            _ = child.platform and (str(child.platform), child.platform.to_dict())
        if isinstance(obj, Index):
            obj.select(Platform("linux", "amd64"))
        dict(obj.annotations)
    if isinstance(obj, ImageConfig):
        obj.descriptor()
        _ = (obj.os, obj.architecture, obj.created, obj.diff_ids, dict(obj.labels), obj.env, list(obj.iter_env()))
        str(obj.platform)
        obj.to_dict()


@settings(FAST, max_examples=300)
@given(_doc, st.sampled_from([None, mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, "text/plain"]))
def test_arbitrary_json_only_raises_ocibuild_errors(doc: Any, content_type: str | None) -> None:
    FUZZ_COUNTS["arbitrary JSON documents"] += 1
    raw = json.dumps(doc).encode()
    for parse in (lambda: parse_manifest(raw, content_type), lambda: Manifest.parse(raw, content_type),
                  lambda: Index.parse(raw, content_type), lambda: ImageConfig.parse(raw)):
        try:
            _exercise(parse())
        except OCIBuildError as exc:
            assert str(exc) and "\n" not in str(exc)


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_ocibuild_errors(raw: bytes) -> None:
    FUZZ_COUNTS["arbitrary bytes documents"] += 1
    for parse in (parse_manifest, ImageConfig.parse):
        try:
            _exercise(parse(raw))
        except OCIBuildError:
            pass


# -- tar writer determinism ------------------------------------------------------------------------
_name = st.text("abcxyz-_.é0", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
_path = st.lists(_name, min_size=1, max_size=3).map("/".join)
_entry = st.one_of(
    st.builds(lambda p, data, mode: TarEntry.file(p, data, mode), _path, st.binary(max_size=64),
              st.sampled_from([0o644, 0o755, 0o600, 0o4755])),
    st.builds(lambda p, mode: TarEntry.dir(p, mode), _path, st.sampled_from([0o755, 0o700])),
    st.builds(lambda p, t: TarEntry.symlink(p, t), _path, st.text("abc/._", max_size=12)),
)


def _tar(entries: list[TarEntry], options: TarOptions) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, entries, options)
    return buf.getvalue()


@FAST
@given(st.lists(_entry, max_size=12, unique_by=lambda e: e.path), st.randoms(use_true_random=False),
       st.sampled_from([TarOptions(), TarOptions(mode_policy=pack_mode, strip_setid=True), TarOptions(uid=1000, gid=1000)]))
def test_tar_writer_is_deterministic_whatever_the_order(entries: list[TarEntry], rnd: Any, options: TarOptions) -> None:
    FUZZ_COUNTS["tar writer permutations"] += 1
    first = _tar(entries, options)
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert _tar(shuffled, options) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(e.path for e in entries)
    for m in members:
        assert m.mtime == options.mtime and m.uname == "" and m.gname == ""
        assert (m.uid, m.gid) == (options.uid, options.gid)
        if options.strip_setid:
            assert not m.mode & 0o6000


# -- env-file suffixes -----------------------------------------------------------------------------
_var = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,6}\Z", fullmatch=True)
_suffix = st.sampled_from(["", ".override", ".default", ".prepend", ".append", ".delim", ".bogus", ".append.x",
                           ".PREPEND"])
_env_files = st.dictionaries(st.builds(lambda v, s: v + s, _var, _suffix), st.text("ab:/ \n", max_size=6), max_size=8)


def _expected(files: dict[str, str], start: dict[str, str]) -> dict[str, str]:
    """The lifecycle's rules, written out independently of ocibuild.cnb.env."""
    env = dict(start)
    for fname in sorted(files):
        name, _, action = fname.partition(".")
        action = action or "override"
        if action not in {"override", "default", "prepend", "append"}:
            continue
        value, cur = files[fname], env.get(name, "")
        delim = files.get(f"{name}.delim", "")
        if action == "override":
            env[name] = value
        elif action == "default":
            if not cur:
                env[name] = value
        elif action == "prepend":
            env[name] = value + (delim + cur if cur else "")
        else:
            env[name] = (cur + delim if cur else "") + value
    return env


@settings(FAST, max_examples=200)
@given(_env_files, st.dictionaries(_var, st.text("xy", max_size=3), max_size=3))
def test_env_file_suffixes(files: dict[str, str], start: dict[str, str]) -> None:
    FUZZ_COUNTS["env-file directories"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "env"
        d.mkdir()
        for fname, value in files.items():
            (d / fname).write_bytes(value.encode())
        ops = env_dir_ops(d)
        assert all(op.action in ACTIONS for op in ops)
        env = dict(start)
        for op in ops:
            op.apply(env)
        assert env == _expected(files, start)
        # The build env applies the same ops in the same way.
        benv = BuildEnv({})
        benv.vars.update(start)
        benv.apply(ops)
        assert benv.vars == env

