"""Content digests as the image spec defines them, and a hasher that checks while it streams."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from ocibuild.errors import DigestMismatch, InvalidDigest

# image-spec descriptor.md: algorithm-component ([+._-] algorithm-component)* ":" encoded
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# Registered algorithms and the exact shape of their encoded part.
_REGISTERED = {
    "sha256": re.compile(r"^[a-f0-9]{64}$"),
    "sha512": re.compile(r"^[a-f0-9]{128}$"),
}
CHUNK = 1 << 20


@dataclass(frozen=True, order=True)
class Digest:
    """``algorithm:encoded``. Immutable and hashable: this is what identity means in ocibuild."""

    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        if not isinstance(text, str) or not _GRAMMAR.match(text):
            raise InvalidDigest(f"invalid digest {text!r}: expected algorithm:hex, e.g. sha256:<64 hex>")
        algorithm, encoded = text.split(":", 1)
        shape = _REGISTERED.get(algorithm)
        if shape is not None and not shape.match(encoded):
            raise InvalidDigest(f"invalid {algorithm} digest {text!r}: wrong length or not lowercase hex")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        h = Hasher(algorithm)
        h.update(data)
        return h.digest()

    @property
    def supported(self) -> bool:
        """Whether ocibuild can verify content against this digest."""
        return self.algorithm in _REGISTERED

    @property
    def hex(self) -> str:
        return self.encoded

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"

    def short(self, n: int = 12) -> str:
        return f"{self.algorithm}:{self.encoded[:n]}"

    def hasher(self) -> "Hasher":
        """A hasher that verifies content against this digest."""
        return Hasher(self.algorithm, expected=self)


@dataclass
class Hasher:
    """Incremental digest and size of a stream; ``verify()`` compares against what was announced."""

    algorithm: str = "sha256"
    expected: Digest | None = None
    expected_size: int | None = None
    size: int = 0
    _h: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in _REGISTERED:
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r} (ocibuild verifies sha256 and sha512)")
        self._h = hashlib.new(self.algorithm)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)  # type: ignore[attr-defined]
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise DigestMismatch(
                f"{self._what()}: more than the announced {self.expected_size} bytes"
            )

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())  # type: ignore[attr-defined]

    def verify(self) -> Digest:
        """Raise ``DigestMismatch`` unless the content seen so far is exactly what was announced."""
        got = self.digest()
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatch(f"{self._what()}: size {self.size}, expected {self.expected_size}")
        if self.expected is not None and got != self.expected:
            raise DigestMismatch(f"digest mismatch: content hashes to {got}, expected {self.expected}")
        return got

    def _what(self) -> str:
        return f"blob {self.expected}" if self.expected else "content"
