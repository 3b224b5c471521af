"""What a copy tells the world as it moves blobs: counters always, rich bars on a terminal.

``rich.progress`` is imported only when bars are actually drawn, so quiet and scripted runs (and
``ocibuild --help``) never pay for it.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ocibuild.oci.descriptor import Descriptor

How = Literal["copied", "skipped", "mounted"]
HOWS: tuple[How, ...] = ("copied", "skipped", "mounted")


class ProgressSink(Protocol):
    """Receives one ``start``, any number of ``advance`` and one ``done`` per blob. Thread-safe."""

    def start(self, desc: "Descriptor") -> None: ...

    def advance(self, desc: "Descriptor", n: int) -> None: ...

    def done(self, desc: "Descriptor", how: How) -> None: ...


@dataclass
class CopyStats:
    """Counts and bytes per outcome; what ``copy --json`` reports."""

    counts: dict[str, int] = field(default_factory=lambda: {h: 0 for h in HOWS})
    bytes: dict[str, int] = field(default_factory=lambda: {h: 0 for h in HOWS})
    moved: int = 0  # bytes actually streamed so far (progress of copies in flight)

    def to_dict(self) -> dict[str, Any]:
        return {"blobs": dict(self.counts), "bytes": dict(self.bytes)}


class CountingProgress:
    """A silent sink that only keeps counters. Subclasses draw on top of it."""

    def __init__(self) -> None:
        self.stats = CopyStats()
        self._lock = threading.Lock()

    def start(self, desc: "Descriptor") -> None:
        pass

    def advance(self, desc: "Descriptor", n: int) -> None:
        with self._lock:
            self.stats.moved += n

    def done(self, desc: "Descriptor", how: How) -> None:
        if how not in HOWS:
            raise ValueError(f"unknown outcome {how!r}")
        with self._lock:
            self.stats.counts[how] += 1
            self.stats.bytes[how] += desc.size

    def close(self) -> None:
        pass

    def __enter__(self) -> "CountingProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RichProgress(CountingProgress):
    """One bar per blob in flight plus an overall bar of bytes, drawn on stderr."""

    def __init__(self, total_bytes: int | None = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._overall = self._progress.add_task("total", total=total_bytes)
        self._tasks: dict[Any, Any] = {}
        self._progress.start()

    def set_total(self, total_bytes: int) -> None:
        self._progress.update(self._overall, total=total_bytes)

    def start(self, desc: "Descriptor") -> None:
        with self._lock:
            self._tasks[desc.digest] = self._progress.add_task(desc.digest.short(), total=desc.size)

    def advance(self, desc: "Descriptor", n: int) -> None:
        super().advance(desc, n)
        task = self._tasks.get(desc.digest)
        if task is not None:
            self._progress.advance(task, n)
        self._progress.advance(self._overall, n)

    def done(self, desc: "Descriptor", how: How) -> None:
        super().done(desc, how)
        with self._lock:
            task = self._tasks.pop(desc.digest, None)
        if task is not None:
            self._progress.remove_task(task)
        if how != "copied":  # skipped and mounted blobs still count towards the total
            self._progress.advance(self._overall, desc.size)

    def close(self) -> None:
        self._progress.stop()


def make_progress(quiet: bool = False, stream: Any = None) -> CountingProgress:
    """Bars when ``stream`` (default stderr) is a terminal and not quiet; counters only otherwise."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not quiet and isatty is not None and isatty():
        return RichProgress()
    return CountingProgress()
