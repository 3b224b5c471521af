"""How commands talk: results on stdout (JSON with stable keys, or plain text), chatter on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

PROG = "ocibuild"


def human_size(n: int) -> str:
    """``1.5 MB`` style (decimal units, as registries and skopeo print them)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def emit_json(obj: Any) -> None:
    """One JSON document on stdout: sorted keys, so output is stable across runs."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def emit_bytes(data: bytes) -> None:
    """Exact bytes on stdout (manifests, configs): no newline added, nothing re-encoded."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def note(text: str, quiet: bool = False) -> None:
    """Human progress notes: stderr, silent with ``--quiet``."""
    if not quiet:
        sys.stderr.write(text + "\n")


def error_line(message: str) -> None:
    """The one line a failure prints: ``ocibuild: error: <msg>`` (newlines folded, never a traceback)."""
    text = " ".join(str(message).split()) or "unknown error"
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()
