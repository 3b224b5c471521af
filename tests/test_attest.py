"""Signatures (cosign key-pair format), SBOM and provenance referrers, discovery and their bad inputs.

Signatures are checked by an independent verifier written here from the format's definition (tag
``sha256-<hex>.sig``, simple signing payload, base64 DER ECDSA-SHA256 in the layer annotation),
against the real registry (2.8.2: no referrers API, so the tag scheme) and in layouts.
cosign itself has no Debian bookworm package nor a PyPI one, so it is not run here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import responses
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ocibuild.attest.errors import KeyProblem, VerificationFailed
from ocibuild.attest.keys import (
    cosign_key_pem, decrypt_cosign_body, generate_signing_key, load_signing_key, load_verifying_key,
)
from ocibuild.attest.provenance import BuildpackUsed, ProvenanceInputs, attach_provenance, statement
from ocibuild.attest.publish import ledger_record
from ocibuild.attest.referrers import attach, attached
from ocibuild.attest.sbom import SBOMSource, attach_sboms, download_sboms
from ocibuild.attest.sign import SIGNATURE_ANNOTATION, SIMPLESIGNING, sign_image
from ocibuild.attest.verify import verify_image
from ocibuild.attest.publish import Blob
from ocibuild.ledger.db import Ledger
from ocibuild.oci import Descriptor, Manifest
from ocibuild.oci.digest import Digest
from ocibuild.store.base import put_bytes, read_blob
from ocibuild.store.layout import LayoutStore
from ocibuild.store.open import open_reference
from ocibuild.transfer.copy import copy_image
from support.copyimages import image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "attest"
CDX = {"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
       "components": [{"type": "library", "name": "busybox", "version": "1.35"}]}
SPDX = {"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": "app",
        "documentNamespace": "https://example.invalid/app", "creationInfo": {"created": "1980-01-01T00:00:01Z",
                                                                           "creators": ["Tool: test"]}}


def schema(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def independent_verify(store, image_digest: str, public_pem: bytes) -> list[dict]:
    """The format from its definition, with nothing of ocibuild.attest: returns the good payloads."""
    public = serialization.load_pem_public_key(public_pem)
    tag = image_digest.replace(":", "-") + ".sig"
    _, raw = store.get_manifest(tag)
    manifest = json.loads(raw)
    good = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        payload = read_blob(store, Descriptor.from_dict(layer))
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
        doc = json.loads(payload)
        assert doc["critical"]["type"] == "cosign container image signature"
        assert doc["critical"]["image"]["docker-manifest-digest"] == image_digest
        assert doc["optional"] is None
        good.append(doc)
    return good


@pytest.fixture
def keys(tmp_path):
    """An openssl-style pair: PKCS#8 private PEM and SubjectPublicKeyInfo public PEM."""
    private = ec.generate_private_key(ec.SECP256R1())
    key = tmp_path / "key.pem"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pub = tmp_path / "key.pub"
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def registry_store(registry, repo):
    store, _ = open_reference(f"{registry.host}/{repo}")
    return store


def test_sign_in_real_registry_uses_the_sig_tag_and_an_independent_verifier_accepts_it(registry, fresh_repo, keys):
    store = registry_store(registry, fresh_repo)
    built = image(store, "signed", tag="v1")
    key, pub = keys
    signed = sign_image(store, built.desc, load_signing_key(str(key)))
    assert signed.tag == f"sha256-{built.desc.digest.encoded}.sig" and signed.tag in store.tags()
    docs = independent_verify(store, str(built.desc.digest), pub.read_bytes())
    assert docs[0]["critical"]["identity"]["docker-reference"] == f"{registry.host}/{fresh_repo}"
    assert verify_image(store, built.desc, load_verifying_key(str(pub))).signatures == 1
    again = sign_image(store, built.desc, load_signing_key(str(key)))  # same key, same payload: nothing added
    assert not again.added and again.manifest.digest == signed.manifest.digest
    other = generate_signing_key()
    both = sign_image(store, built.desc, other)
    assert both.added and both.signatures == 2
    with pytest.raises(Exception):  # the independent verifier refuses the first layer with the other key
        independent_verify(store, str(built.desc.digest), other.public().pem())
    assert verify_image(store, built.desc, other.public()).signatures == 1


def test_a_signature_made_by_the_format_definition_is_accepted(tmp_path, keys):
    """The reverse direction: a signature written here by hand, as cosign writes it, verifies."""
    store = LayoutStore(tmp_path / "lay", create=True)
    built = image(store, "by-hand", tag="v1")
    key, pub = keys
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    payload = json.dumps({"critical": {"identity": {"docker-reference": "example.invalid/app"},
                                       "image": {"docker-manifest-digest": str(built.desc.digest)},
                                       "type": "cosign container image signature"}, "optional": None}).encode()
    sig = base64.b64encode(private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = Descriptor.for_bytes(SIMPLESIGNING, payload, annotations={SIGNATURE_ANNOTATION: sig})
    put_bytes(store, layer, payload)
    config = Descriptor.for_bytes("application/vnd.oci.image.config.v1+json", b"{}")
    put_bytes(store, config, b"{}")
    manifest = Manifest.build(config, [layer])
    store.put_manifest(manifest.descriptor(), manifest.raw, tag=f"sha256-{built.desc.digest.encoded}.sig")
    result = verify_image(store, built.desc, load_verifying_key(str(pub)))
    assert result.signatures == 1 and result.docker_reference == "example.invalid/app"


def _tamper_signature_manifest(store, digest: Digest, edit) -> None:
    tag = f"sha256-{digest.encoded}.sig"
    _, raw = store.get_manifest(tag)
    doc = json.loads(raw)
    edit(store, doc)
    parsed = Manifest.parse(json.dumps(doc).encode())
    store.put_manifest(parsed.descriptor(), parsed.raw, tag=tag)


def test_bad_signatures_fail_in_one_line_saying_which(tmp_path, keys):
    key, pub = keys
    store = LayoutStore(tmp_path / "lay", create=True)
    built = image(store, "victim", tag="v1")
    other = image(store, "other", tag="v2")
    sign_image(store, built.desc, load_signing_key(str(key)))
    sign_image(store, other.desc, load_signing_key(str(key)))

    wrong = generate_signing_key().public()
    with pytest.raises(VerificationFailed, match="does not verify with key .*another key"):
        verify_image(store, built.desc, wrong)

    # a tampered payload: new bytes pushed, the layer re-pointed at them, the old signature kept
    def alter_payload(store, doc):
        layer = doc["layers"][0]
        payload = json.loads(read_blob(store, Descriptor.from_dict(layer)))
        payload["critical"]["identity"]["docker-reference"] = "evil.invalid/x"
        data = json.dumps(payload).encode()
        desc = Descriptor.for_bytes(SIMPLESIGNING, data)
        put_bytes(store, desc, data)
        layer.update(digest=str(desc.digest), size=desc.size)
    _tamper_signature_manifest(store, built.desc.digest, alter_payload)
    with pytest.raises(VerificationFailed, match="payload was altered"):
        verify_image(store, built.desc, load_verifying_key(str(pub)))

    # payload bytes changed on disk under the same digest
    sign_image(store, built.desc, load_signing_key(str(key)))  # a good layer is appended again
    _, raw = store.get_manifest(f"sha256-{other.desc.digest.encoded}.sig")
    victim_layer = Descriptor.from_dict(json.loads(raw)["layers"][0])
    path = store.blob_path(victim_layer.digest)
    path.write_bytes(path.read_bytes().replace(b"cosign", b"Cosign"))
    with pytest.raises(VerificationFailed, match="tampered"):
        verify_image(store, other.desc, load_verifying_key(str(pub)))

    # a signature for another digest, copied under this image's tag
    third = image(store, "third", tag="v3")
    fifth = image(store, "fifth", tag="v5")
    sign_image(store, fifth.desc, load_signing_key(str(key)))
    _, good_raw = store.get_manifest(f"sha256-{fifth.desc.digest.encoded}.sig")
    good = Manifest.parse(good_raw)
    store.put_manifest(good.descriptor(), good.raw, tag=f"sha256-{third.desc.digest.encoded}.sig")
    with pytest.raises(VerificationFailed, match=f"is for {fifth.desc.digest}, not {third.desc.digest}"):
        verify_image(store, third.desc, load_verifying_key(str(pub)))

    # unsigned
    fourth = image(store, "fourth", tag="v4")
    with pytest.raises(VerificationFailed, match="no signatures"):
        verify_image(store, fourth.desc, load_verifying_key(str(pub)))


def test_referrer_whose_subject_does_not_match_fails_verification(tmp_path, keys):
    key, pub = keys
    store = LayoutStore(tmp_path / "lay", create=True)
    built = image(store, "subject", tag="v1")
    elsewhere = image(store, "elsewhere", tag="v2")
    sign_image(store, built.desc, load_signing_key(str(key)))
    foreign = attach(store, elsewhere.desc, "application/vnd.cyclonedx+json",
                     [Blob("application/vnd.cyclonedx+json", json.dumps(CDX).encode())], "sbom")
    # forge: list the other image's referrer in this image's fallback index
    from ocibuild.oci import Index

    forged = Index.build([Descriptor(foreign.media_type, foreign.digest, foreign.size,
                                     artifact_type="application/vnd.cyclonedx+json")])
    store.put_manifest(forged.descriptor(), forged.raw, tag=f"sha256-{built.desc.digest.encoded}")
    with pytest.raises(VerificationFailed, match="subject mismatch"):
        verify_image(store, built.desc, load_verifying_key(str(pub)))
    assert verify_image(store, built.desc, load_verifying_key(str(pub)), referrers=False).signatures == 1


def test_cosign_key_files(tmp_path, monkeypatch):
    # go-securesystemslib's own test vector (encrypted/encrypted_test.go): scrypt + secretbox as cosign uses
    vector = (b'{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7F'
              b'V3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},'
              b'"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}')
    assert decrypt_cosign_body(vector, b"supersecret") == b"reallyimportant"
    with pytest.raises(KeyProblem, match="wrong password"):
        decrypt_cosign_body(vector, b"nope")

    key = generate_signing_key()
    path = tmp_path / "cosign.key"
    path.write_bytes(cosign_key_pem(key, b"s3cret"))
    text = path.read_text()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    monkeypatch.setenv("COSIGN_PASSWORD", "s3cret")
    loaded = load_signing_key(str(path))
    assert loaded.public().pem() == key.public().pem()
    assert "s3cret" not in repr(loaded) and "PRIVATE" not in repr(loaded)
    monkeypatch.setenv("COSIGN_PASSWORD", "wrong")
    with pytest.raises(KeyProblem) as err:
        load_signing_key(str(path))
    assert "wrong password" in str(err.value) and "wrong" not in str(err.value).replace("wrong password", "")
    # from an environment variable
    monkeypatch.setenv("COSIGN_PASSWORD", "s3cret")
    monkeypatch.setenv("MY_KEY", text)
    assert load_signing_key("env://MY_KEY").public().pem() == key.public().pem()
    with pytest.raises(KeyProblem, match="MISSING is not set"):
        load_signing_key("env://MISSING")
    with pytest.raises(KeyProblem, match="not P-256"):
        other = tmp_path / "p384.pem"
        other.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        load_signing_key(str(other))


def test_sbom_and_provenance_referrers_by_tag_scheme_in_real_registry(tmp_path, registry, fresh_repo):
    store = registry_store(registry, fresh_repo)
    built = image(store, "app", tag="v1")
    (tmp_path / "launch.sbom.cdx.json").write_text(json.dumps(CDX))
    (tmp_path / "web.sbom.spdx.json").write_text(json.dumps(SPDX))
    sources = [SBOMSource(tmp_path / "launch.sbom.cdx.json", "example/node", "launch", "", "cdx.json"),
               SBOMSource(tmp_path / "web.sbom.spdx.json", "example/node", "launch", "web", "spdx.json")]
    ledger = Ledger(tmp_path / "ledger.db")
    record = ledger_record(ledger, store)
    sboms = attach_sboms(store, built.desc, sources, record)
    inputs = ProvenanceInputs("app:v1", "builder:1", "sha256:" + "a" * 64,
                              (BuildpackUsed("example/node", "1.0.0", "sha256:" + "b" * 64),),
                              "run:1", "sha256:" + "c" * 64, tmp_path)
    prov = attach_provenance(store, built.desc, inputs, record)
    # registry 2.8.2: no referrers API, so the sha256-<hex> fallback index lists them
    assert f"sha256-{built.desc.digest.encoded}" in store.tags()
    found = {a.artifact_type: a.digest for a in attached(store, built.desc)}
    by_type = {Manifest.parse(store.get_manifest(str(d.digest))[1]).artifact_type: d.digest for d in sboms}
    assert found == {**by_type, "application/vnd.in-toto+json": prov.digest}
    assert set(by_type) == {"application/vnd.cyclonedx+json", "application/spdx+json"}
    for desc in sboms:
        manifest = Manifest.parse(store.get_manifest(str(desc.digest))[1])
        assert manifest.subject.digest == built.desc.digest and manifest.config.media_type.endswith("empty.v1+json")
    doc = json.loads(read_blob(store, Manifest.parse(store.get_manifest(str(prov.digest))[1]).layers[0]))
    jsonschema.validate(doc, schema("in-toto-slsa-v1.schema.json"))
    assert doc["subject"][0]["digest"] == {"sha256": built.desc.digest.encoded}
    names = {d["name"]: d for d in doc["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert names["builder"]["digest"] == {"sha256": "a" * 64}
    assert names["buildpack:example/node"]["annotations"]["version"] == "1.0.0"
    assert names["run-image"]["digest"] == {"sha256": "c" * 64}
    roles = {row.role for row in ledger.query()}
    assert {"sbom", "provenance", "referrers-index"} <= roles
    ledger.close()

    out = tmp_path / "out"
    got = download_sboms(store, "v1", out)
    assert got.source == "referrers"
    cdx = json.loads((out / "layers/sbom/launch/example_node/sbom.cdx.json").read_text())
    jsonschema.validate(cdx, schema("cyclonedx-min.schema.json"))
    jsonschema.validate(json.loads((out / "layers/sbom/launch/example_node/web/sbom.spdx.json").read_text()),
                        schema("spdx-min.schema.json"))

    # attaching the same documents again changes nothing (deterministic manifests)
    assert attach_sboms(store, built.desc, sources) == sboms


def test_provenance_records_the_git_commit(tmp_path):
    repo = tmp_path / "app"
    repo.mkdir()
    (repo / "f").write_text("x")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "f"], ["commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    from ocibuild.attest.provenance import git_source

    inputs = ProvenanceInputs("app", "b", "sha256:" + "a" * 64, (), "run", None, repo)
    subject = Descriptor("application/vnd.oci.image.manifest.v1+json", Digest("sha256", "d" * 64), 10)
    doc = statement(inputs, subject, git_source(repo))
    jsonschema.validate(doc, schema("in-toto-slsa-v1.schema.json"))
    source = next(d for d in doc["predicate"]["buildDefinition"]["resolvedDependencies"] if d["name"] == "source")
    assert source["digest"] == {"gitCommit": head} and source["annotations"] == {"dirty": False}
    assert git_source(tmp_path / "nowhere") is None


def test_copy_referrers_carries_signatures_and_sboms_into_a_layout(tmp_path, registry, fresh_repo, keys):
    key, pub = keys
    src = registry_store(registry, fresh_repo)
    built = image(src, "copied", tag="v1")
    sbom = attach(src, built.desc, "application/vnd.cyclonedx+json",
                  [Blob("application/vnd.cyclonedx+json", json.dumps(CDX).encode())], "sbom")
    sign_image(src, built.desc, load_signing_key(str(key)))
    dst = LayoutStore(tmp_path / "dst", create=True)
    copy_image(src, "v1", dst, "v1", referrers=True)
    assert [a.digest for a in attached(dst, built.desc) if a.how == "referrer"] == [sbom.digest]
    assert verify_image(dst, built.desc, load_verifying_key(str(pub))).signatures == 1


def test_cli_sign_verify_referrers_and_sbom_download(tmp_path, keys):
    key, pub = keys
    store = LayoutStore(tmp_path / "lay", create=True)
    built = image(store, "cli", tag="v1")
    ref = f"oci:{tmp_path / 'lay'}:v1"
    run = lambda *a: subprocess.run([sys.executable, "-m", "ocibuild.cli.main", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                "OCIBUILD_SCRATCH": str(tmp_path / "scratch")})
    signed = run("sign", ref, "--key", str(key))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith(f"sha256-{built.desc.digest.encoded}.sig sha256:")
    assert key.read_text().split("\n")[1] not in signed.stdout + signed.stderr
    ok = run("verify", ref, "--key", str(pub))
    assert ok.returncode == 0 and ok.stdout.startswith(f"verified {built.desc.digest}")
    bad_pub = tmp_path / "other.pub"
    bad_pub.write_bytes(generate_signing_key().public().pem())
    bad = run("verify", ref, "--key", str(bad_pub))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "does not verify with key" in bad.stderr and "Traceback" not in bad.stderr
    listed = run("referrers", ref, "--json")
    assert listed.returncode == 0
    assert [a["via"] for a in json.loads(listed.stdout)["attached"]] == [f"tag sha256-{built.desc.digest.encoded}.sig"]
    none = run("sbom", "download", ref, "-o", str(tmp_path / "o"))
    assert none.returncode == 1 and "has no SBOM" in none.stderr
    missing = run("sign", ref, "--key", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    ledger = Ledger(tmp_path / "scratch" / "ledger.db")
    assert {r.role for r in ledger.query()} == {"signature"}
    ledger.close()


def test_build_with_sign_key_attaches_sboms_and_provenance_and_signs_last(registry, fresh_repo, tmp_path):
    """``ocibuild build --sign-key`` end to end on the real registry: the image's SBOMs (written by the
    greeter buildpack) and a provenance are its referrers, and the signature verifies with the public key."""
    import json as _json
    import os as _os
    import shutil as _shutil
    import subprocess as _sp
    import sys as _sys

    repo = Path(__file__).resolve().parent.parent
    app = tmp_path / "app"
    _shutil.copytree(repo / "examples" / "hello", app)
    env = dict(_os.environ, OCIBUILD_SCRATCH=str(tmp_path / "scratch"), COSIGN_PASSWORD="pw")

    def cli(*args: str) -> _sp.CompletedProcess[str]:
        return _sp.run([_sys.executable, "-m", "ocibuild.cli.main", *args, "--insecure-registry", registry.host],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    keys = cli("generate-key-pair", "--output-key-prefix", str(tmp_path / "k"))
    assert keys.returncode == 0, keys.stderr
    image = f"{registry.host}/{fresh_repo}:1"
    mirror = f"{registry.host}/{fresh_repo}-mirror"  # a -t tag in another repository: attested and signed there too
    built = cli("build", image, "--path", str(app), "--buildpack", str(repo / "fixtures/build/buildpacks/greeter"),
                "--buildpack", "ocibuild/procfile@0.1.0", "--sign-key", str(tmp_path / "k.key"), "--json",
                "-t", f"{mirror}:1")
    assert built.returncode == 0, built.stderr
    digest = _json.loads(built.stdout)["digest"]
    assert "attesting" in _json.loads(built.stdout)["phases"]
    verified = cli("verify", f"{registry.host}/{fresh_repo}@{digest}", "--key", str(tmp_path / "k.pub"))
    assert verified.returncode == 0, verified.stderr
    listed = cli("referrers", f"{registry.host}/{fresh_repo}@{digest}", "--json")
    assert listed.returncode == 0, listed.stderr
    kinds = {r["artifactType"] for r in _json.loads(listed.stdout)["attached"]}
    assert "application/vnd.cyclonedx+json" in kinds and "application/vnd.in-toto+json" in kinds, kinds
    wrong = cli("generate-key-pair", "--output-key-prefix", str(tmp_path / "other"))
    assert wrong.returncode == 0
    refused = cli("verify", f"{registry.host}/{fresh_repo}@{digest}", "--key", str(tmp_path / "other.pub"))
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0, refused.stderr

    mirrored = registry_store(registry, f"{fresh_repo}-mirror")
    assert str(mirrored.resolve("1").digest) == digest
    in_mirror = cli("referrers", f"{mirror}@{digest}", "--json")
    assert in_mirror.returncode == 0, in_mirror.stderr
    attached_there = _json.loads(in_mirror.stdout)["attached"]
    assert {r["artifactType"] for r in attached_there} == kinds
    docs = independent_verify(mirrored, digest, (tmp_path / "k.pub").read_bytes())
    assert [d["critical"]["identity"]["docker-reference"] for d in docs] == [mirror]  # signed as that reference
    assert cli("verify", f"{mirror}@{digest}", "--key", str(tmp_path / "k.pub")).returncode == 0
