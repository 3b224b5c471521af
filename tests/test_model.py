"""The pure OCI model: digests, descriptors, manifests, indexes, configs."""

from __future__ import annotations

import hashlib
import json

import pytest

from ocibuild.errors import DigestMismatch, InvalidDigest, ManifestError
from ocibuild.oci import EMPTY_DESCRIPTOR, Descriptor, Digest, Hasher, ImageConfig, Index, Manifest, Platform
from ocibuild.oci import canonical_json, parse_manifest
from ocibuild.oci import mediatype as mt

HEX = "a" * 64


# -- digests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    f"sha256:{HEX}",
    "sha512:" + "b" * 128,
    "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
    "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
    "blake3:" + "c" * 64,
])
def test_digest_grammar_accepts(text):
    d = Digest.parse(text)
    assert str(d) == text and Digest.parse(str(d)) == d


@pytest.mark.parametrize("text", [
    "", "sha256", f"sha256:{HEX[:-1]}", f"sha256:{HEX.upper()}", "sha512:" + "b" * 64, f"SHA256:{HEX}",
    f"sha256::{HEX}", f":{HEX}", f"sha256:{HEX}/x", "sha256-:abc", "sha256:ab cd",
])
def test_digest_grammar_refuses(text):
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_digest_of_and_support():
    data = b"hello"
    assert Digest.of(data) == Digest("sha256", hashlib.sha256(data).hexdigest())
    assert Digest.of(data, "sha512").encoded == hashlib.sha512(data).hexdigest()
    assert Digest.parse(f"sha256:{HEX}").supported
    unknown = Digest.parse("blake3:" + "c" * 64)
    assert not unknown.supported
    with pytest.raises(InvalidDigest):
        unknown.hasher()


def test_hasher_verifies_size_and_digest():
    data = b"0123456789"
    good = Hasher(expected=Digest.of(data), expected_size=10)
    good.update(data[:4])
    good.update(data[4:])
    assert good.verify() == Digest.of(data)
    over = Hasher(expected=Digest.of(data), expected_size=10)
    with pytest.raises(DigestMismatch, match="more than the announced 10 bytes"):
        over.update(data + b"!")
    short = Hasher(expected=Digest.of(data), expected_size=10)
    short.update(data[:9])
    with pytest.raises(DigestMismatch, match="size 9"):
        short.verify()
    wrong = Hasher(expected=Digest.of(b"other"))
    wrong.update(data)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        wrong.verify()


# -- descriptors --------------------------------------------------------------------------------
def test_descriptor_round_trip_with_every_field():
    desc = Descriptor(
        mt.OCI_MANIFEST, Digest.of(b"x"), 1,
        annotations={"a": "b"}, urls=("https://example.com/x",), data=b"x", artifact_type="application/x",
        platform=Platform("linux", "arm64", "v8", "10.0", ("sse4",)),
    )
    doc = json.loads(canonical_json(desc.to_dict()))
    again = Descriptor.from_dict(doc)
    assert again == desc and again.to_dict() == desc.to_dict()
    assert doc["data"] == "eA==" and doc["platform"]["os.features"] == ["sse4"]
    with pytest.raises(TypeError):
        desc.annotations["c"] = "d"  # type: ignore[index]


@pytest.mark.parametrize("doc", [
    {"digest": f"sha256:{HEX}", "size": 1},
    {"mediaType": "x", "digest": f"sha256:{HEX}", "size": -1},
    {"mediaType": "x", "digest": f"sha256:{HEX}", "size": True},
    {"mediaType": "x", "digest": "nope", "size": 1},
    {"mediaType": "x", "digest": f"sha256:{HEX}", "size": 1, "data": "***"},
    {"mediaType": "x", "digest": f"sha256:{HEX}", "size": 1, "urls": "http://x"},
    {"mediaType": "x", "digest": f"sha256:{HEX}", "size": 1, "annotations": {"a": 1}},
])
def test_descriptor_refuses_malformed(doc):
    with pytest.raises(ManifestError):
        Descriptor.from_dict(doc)


def test_empty_descriptor_is_the_empty_json_blob():
    assert EMPTY_DESCRIPTOR.digest == Digest("sha256", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
    assert EMPTY_DESCRIPTOR.size == 2 and EMPTY_DESCRIPTOR.data == b"{}" and EMPTY_DESCRIPTOR.media_type == mt.OCI_EMPTY


# -- manifests ----------------------------------------------------------------------------------
def _layers() -> list[Descriptor]:
    return [Descriptor.for_bytes(mt.OCI_LAYER_GZIP, f"layer{i}".encode()) for i in range(2)]


def test_manifest_build_is_deterministic_and_canonical():
    cfg = Descriptor.for_bytes(mt.OCI_CONFIG, b"{}")
    a = Manifest.build(cfg, _layers(), annotations={"z": "1", "a": "2"})
    b = Manifest.build(cfg, _layers(), annotations={"a": "2", "z": "1"})
    assert a.raw == b.raw and a.digest == b.digest == Digest.of(a.raw)
    assert a.raw == canonical_json(json.loads(a.raw))  # sorted keys, compact separators
    assert b" " not in a.raw and a.raw.index(b'"annotations"') < a.raw.index(b'"config"')
    assert a.descriptor() == Descriptor(mt.OCI_MANIFEST, a.digest, len(a.raw))
    assert a.children() == (cfg, *_layers())


def test_parse_keeps_raw_bytes_and_digest():
    raw = b'{\n  "schemaVersion": 2,\n  "mediaType": "%s",\n  "config": %s,\n  "layers": []\n}\n' % (
        mt.OCI_MANIFEST.encode(), canonical_json(Descriptor.for_bytes(mt.OCI_CONFIG, b"{}").to_dict()))
    m = parse_manifest(raw)
    assert isinstance(m, Manifest) and m.raw == raw and m.digest == Digest.of(raw) and m.size == len(raw)
    assert m.json()["schemaVersion"] == 2


def test_duplicate_keys_are_refused():
    raw = b'{"schemaVersion":2,"schemaVersion":2,"manifests":[]}'
    with pytest.raises(ManifestError, match="duplicate JSON key"):
        parse_manifest(raw)


def test_media_type_must_match_content_type():
    idx = Index.build([])
    with pytest.raises(ManifestError, match="served as"):
        parse_manifest(idx.raw, mt.OCI_MANIFEST)
    assert isinstance(parse_manifest(idx.raw, mt.OCI_INDEX), Index)
    # no mediaType field: the content type decides, then the shape
    shapeless = b'{"schemaVersion":2,"manifests":[]}'
    assert parse_manifest(shapeless, mt.DOCKER_MANIFEST_LIST).media_type == mt.DOCKER_MANIFEST_LIST
    assert parse_manifest(shapeless, "application/json").media_type == mt.OCI_INDEX


@pytest.mark.parametrize("raw, match", [
    (b'{"schemaVersion":1,"fsLayers":[]}', "schema 1"),
    (b'{"schemaVersion":2}', "not an image manifest"),
    (b"[]", "not a JSON object"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"schemaVersion":2,"mediaType":"%s","layers":[]}' % mt.OCI_MANIFEST.encode(), "no config"),
])
def test_parse_refuses_bad_documents(raw, match):
    with pytest.raises(ManifestError, match=match):
        parse_manifest(raw)


def test_index_platform_selection():
    def entry(name: str, platform: Platform) -> Descriptor:
        return Descriptor.for_bytes(mt.OCI_MANIFEST, name.encode(), platform=platform)

    amd, v7, v8 = (entry("amd", Platform("linux", "amd64")), entry("v7", Platform("linux", "arm", "v7")),
                   entry("v8", Platform("linux", "arm64", "v8")))
    idx = Index.build([amd, v7, v8])
    assert idx.select(Platform.parse("linux/amd64")) == amd
    assert idx.select(Platform.parse("linux/arm64")) == v8  # no variant asked: any variant
    assert idx.select(Platform.parse("linux/arm/v7")) == v7
    assert idx.select(Platform.parse("linux/arm/v6")) is None
    assert idx.select(Platform.parse("windows/amd64")) is None
    assert Index.parse(idx.raw).manifests == (amd, v7, v8)
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    for bad in ("linux", "linux/amd64/v8/x", "Linux/amd64", "linux//"):
        with pytest.raises(Exception, match="invalid platform"):
            Platform.parse(bad)


def test_image_config_accessors_and_build():
    doc = {
        "architecture": "arm64", "os": "linux", "variant": "v8", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["A=1", "B=x=y"], "Labels": {"k": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{HEX}"]},
    }
    cfg = ImageConfig.build(doc)
    assert cfg.platform == Platform("linux", "arm64", "v8")
    assert cfg.env == ("A=1", "B=x=y") and list(cfg.iter_env()) == [("A", "1"), ("B", "x=y")]
    assert dict(cfg.labels) == {"k": "v"} and cfg.created == "2024-01-01T00:00:00Z"
    assert cfg.diff_ids == (Digest.parse(f"sha256:{HEX}"),)
    edited = cfg.to_dict()
    edited["config"]["Env"].append("C=3")
    assert cfg.env == ("A=1", "B=x=y")  # the original never changes
    assert ImageConfig.build(edited).digest != cfg.digest
    assert cfg.descriptor() == Descriptor(mt.OCI_CONFIG, Digest.of(cfg.raw), len(cfg.raw))
    with pytest.raises(ManifestError, match="bad diff_id"):
        ImageConfig.build({"rootfs": {"diff_ids": ["nope"]}}).diff_ids
    with pytest.raises(ManifestError):
        ImageConfig.parse(b'{"config": []}')
