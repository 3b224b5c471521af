"""Signing keys: ECDSA P-256 as openssl writes them (PKCS#8 / SEC1 / SubjectPublicKeyInfo PEM) and
cosign's own ``cosign.key``, from a file or from an environment variable (``env://NAME``).

``cosign.key`` is a PEM block ``ENCRYPTED SIGSTORE PRIVATE KEY`` (older: ``ENCRYPTED COSIGN PRIVATE
KEY``) whose body is JSON: an scrypt KDF (salt, N/r/p) and a NaCl secretbox (XSalsa20-Poly1305,
24-byte nonce) sealing the PKCS#8 DER key; Go encodes the byte fields as padded base64. The
password comes from ``COSIGN_PASSWORD`` (unset: the empty password, as cosign accepts).

Key material never reaches a message, a log or the ledger: errors name only where the key came
from (a path, or the variable's name).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ocibuild.attest.errors import KeyProblem

ENV_PREFIX = "env://"
PASSWORD_ENV = "COSIGN_PASSWORD"
SIGSTORE_KEY_PEM = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_KEY_PEM = "ENCRYPTED COSIGN PRIVATE KEY"
_COSIGN_TYPES = (SIGSTORE_KEY_PEM, COSIGN_KEY_PEM)
# The scrypt parameter sets go-securesystemslib accepts (legacy, standard, OWASP); cosign writes the first.
SCRYPT_PARAMS: tuple[tuple[int, int, int], ...] = ((32768, 8, 1), (65536, 8, 1), (131072, 8, 1))
_SCRYPT_WRITE = SCRYPT_PARAMS[0]
_MAX_KEY_FILE = 64 * 1024
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def _read_source(source: str) -> bytes:
    """The bytes a key source names: ``env://NAME`` (the variable's value) or a file path."""
    if source.startswith(ENV_PREFIX):
        name = source[len(ENV_PREFIX):]
        value = os.environ.get(name)
        if not name or value is None:
            raise KeyProblem(f"key {source}: environment variable {name or '(empty name)'} is not set")
        return value.encode()
    path = Path(source)
    try:
        if path.stat().st_size > _MAX_KEY_FILE:
            raise KeyProblem(f"key {source}: over {_MAX_KEY_FILE} bytes; not a key file")
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyProblem(f"key {source}: no such file") from None
    except IsADirectoryError:
        raise KeyProblem(f"key {source}: is a directory") from None
    except OSError as exc:
        raise KeyProblem(f"key {source}: {exc.strerror}") from None


def _pem_block(data: bytes, source: str) -> tuple[str, bytes]:
    """The first PEM block: its type and its decoded body."""
    match = _PEM.search(data)
    if match is None:
        raise KeyProblem(f"key {source}: not a PEM file")
    try:
        body = base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyProblem(f"key {source}: PEM body is not base64") from None
    return match.group(1).decode(), body


def _require_p256(key: object, source: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise KeyProblem(f"key {source}: not an ECDSA key (ocibuild signs with ECDSA P-256)")
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyProblem(f"key {source}: ECDSA on {key.curve.name}, not P-256")


@dataclass(frozen=True)
class VerifyingKey:
    """An ECDSA P-256 public key and where it came from (for messages)."""

    key: ec.EllipticCurvePublicKey = field(repr=False)
    source: str

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (DER) is this key's ECDSA-SHA256 signature over ``data``."""
        try:
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def fingerprint(self) -> str:
        """``sha256:`` of the DER SubjectPublicKeyInfo, shortened: names a key without showing it."""
        der = self.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA P-256 private key. ``repr`` shows only its source."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    source: str

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 over ``data``, DER encoded (what cosign puts, base64, in the annotation)."""
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public(self) -> VerifyingKey:
        return VerifyingKey(self.key.public_key(), self.source)


def _password(password: bytes | None) -> bytes:
    if password is not None:
        return password
    return os.environ.get(PASSWORD_ENV, "").encode()


def _b64_field(doc: dict, path: tuple[str, ...], source: str) -> bytes:
    value: object = doc
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise KeyProblem(f"key {source}: encrypted key has no {'.'.join(path)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyProblem(f"key {source}: {'.'.join(path)} is not base64") from None


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def decrypt_cosign_body(body: bytes, password: bytes, source: str = "cosign.key") -> bytes:
    """The PKCS#8 DER key sealed in a cosign key body (scrypt + NaCl secretbox JSON)."""
    import nacl.exceptions
    import nacl.secret

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise KeyProblem(f"key {source}: encrypted key body is not JSON") from None
    if not isinstance(doc, dict):
        raise KeyProblem(f"key {source}: encrypted key body is not a JSON object")
    kdf, cipher = doc.get("kdf") or {}, doc.get("cipher") or {}
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyProblem(f"key {source}: unknown key derivation (want scrypt)")
    if not isinstance(cipher, dict) or cipher.get("name") != "nacl/secretbox":
        raise KeyProblem(f"key {source}: unknown cipher (want nacl/secretbox)")
    params = kdf.get("params") or {}
    triple = (params.get("N"), params.get("r"), params.get("p")) if isinstance(params, dict) else None
    if triple not in SCRYPT_PARAMS:
        raise KeyProblem(f"key {source}: unsupported scrypt parameters")
    salt = _b64_field(doc, ("kdf", "salt"), source)
    nonce = _b64_field(doc, ("cipher", "nonce"), source)
    sealed = _b64_field(doc, ("ciphertext",), source)
    if len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
        raise KeyProblem(f"key {source}: nonce is {len(nonce)} bytes, not 24")
    box_key = _scrypt(password, salt, *triple)  # type: ignore[misc]
    try:
        return nacl.secret.SecretBox(box_key).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        raise KeyProblem(f"key {source}: wrong password (set {PASSWORD_ENV}) or a damaged key") from None


def encrypt_cosign_body(der: bytes, password: bytes) -> bytes:
    """Seal a PKCS#8 DER key as cosign does (fresh salt and nonce; legacy scrypt parameters)."""
    import nacl.secret

    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(nacl.secret.SecretBox.NONCE_SIZE)
    n, r, p = _SCRYPT_WRITE
    sealed = nacl.secret.SecretBox(_scrypt(password, salt, n, r, p)).encrypt(der, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    doc = {
        "kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
        "ciphertext": b64(sealed),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _pem(kind: str, body: bytes) -> bytes:
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"]) + "\n").encode()


def cosign_key_pem(key: SigningKey, password: bytes) -> bytes:
    """``cosign.key`` bytes for ``key``, sealed with ``password``."""
    der = key.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return _pem(SIGSTORE_KEY_PEM, encrypt_cosign_body(der, password))


def generate_signing_key(source: str = "generated") -> SigningKey:
    return SigningKey(ec.generate_private_key(ec.SECP256R1()), source)


def load_signing_key(source: str, password: bytes | None = None) -> SigningKey:
    """A private key from a path or ``env://NAME``: cosign.key, PKCS#8 (plain or encrypted) or SEC1 PEM."""
    data = _read_source(source)
    kind, body = _pem_block(data, source)
    if kind in _COSIGN_TYPES:
        der = decrypt_cosign_body(body, _password(password), source)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError):
            raise KeyProblem(f"key {source}: the sealed key is not PKCS#8") from None
    elif kind in ("PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
        secret = _password(password) if kind == "ENCRYPTED PRIVATE KEY" else None
        try:
            key = serialization.load_pem_private_key(_PEM.search(data).group(0), password=secret)  # type: ignore[union-attr]
        except TypeError:
            raise KeyProblem(f"key {source}: wrong password (set {PASSWORD_ENV})") from None
        except ValueError:
            hint = f"wrong password (set {PASSWORD_ENV}) or " if secret is not None else ""
            raise KeyProblem(f"key {source}: {hint}not a valid {kind}") from None
    elif kind == "PUBLIC KEY":
        raise KeyProblem(f"key {source}: a public key; signing needs the private key")
    else:
        raise KeyProblem(f"key {source}: unsupported PEM block {kind!r}")
    _require_p256(key, source)
    return SigningKey(key, source)  # type: ignore[arg-type]


def load_verifying_key(source: str) -> VerifyingKey:
    """A public key (SubjectPublicKeyInfo PEM, as ``cosign.pub`` and ``openssl ec -pubout`` write it)."""
    data = _read_source(source)
    kind, _body = _pem_block(data, source)
    if kind != "PUBLIC KEY":
        what = "a private key; verification takes the public key" if "PRIVATE" in kind else f"a {kind!r} PEM block"
        raise KeyProblem(f"key {source}: {what}")
    try:
        key = serialization.load_pem_public_key(_PEM.search(data).group(0))  # type: ignore[union-attr]
    except ValueError:
        raise KeyProblem(f"key {source}: not a valid public key") from None
    _require_p256(key, source)
    return VerifyingKey(key, source)  # type: ignore[arg-type]
