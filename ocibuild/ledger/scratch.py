"""The scratch directory: where ocibuild keeps the layout it composes into, its ledger and its cache.

One scratch directory is shared by every build of a user (concurrently, across processes); the
ledger and the layout's locks make that safe. Layout::

    <scratch>/layout/     the scratch OCI image layout (ephemeral builders, intermediate images)
    <scratch>/ledger.db   the SQLite ledger of every digest ocibuild created
    <scratch>/cache/      the build cache (a GC root)
    <scratch>/work/       per-build working directories (``work/<lease id>/``)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocibuild.ledger.db import Ledger
    from ocibuild.store.layout import LayoutStore

ENV_SCRATCH = "OCIBUILD_SCRATCH"


def default_scratch_dir() -> Path:
    """``$OCIBUILD_SCRATCH``, else ``$XDG_CACHE_HOME/ocibuild``, else ``~/.cache/ocibuild``."""
    env = os.environ.get(ENV_SCRATCH, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # XDG base-dir spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ocibuild"
    return Path.home() / ".cache" / "ocibuild"


@dataclass(frozen=True)
class Scratch:
    """Paths of one scratch directory. Cheap to build; ``ensure()`` creates the directories."""

    root: Path

    @classmethod
    def resolve(cls, path: "str | os.PathLike[str] | Scratch | None" = None) -> "Scratch":
        """An explicit path (option), else the environment, else the XDG default."""
        if isinstance(path, Scratch):
            return path
        root = Path(path).expanduser() if path is not None else default_scratch_dir()
        return cls(root.absolute())

    @property
    def layout_path(self) -> Path:
        return self.root / "layout"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def cache_path(self) -> Path:
        return self.root / "cache"

    @property
    def work_path(self) -> Path:
        return self.root / "work"

    @property
    def location(self) -> str:
        """How the ledger names the scratch layout (its absolute path)."""
        return layout_location(self.layout_path)

    def ensure(self) -> "Scratch":
        for d in (self.root, self.cache_path, self.work_path):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def open_ledger(self) -> "Ledger":
        from ocibuild.ledger.db import Ledger

        self.root.mkdir(parents=True, exist_ok=True)
        return Ledger(self.ledger_path)

    def open_layout(self, create: bool = True) -> "LayoutStore":
        from ocibuild.store.layout import LayoutStore

        if create:
            self.ensure()
        return LayoutStore(self.layout_path, create=create)


def layout_location(path: "str | os.PathLike[str]") -> str:
    """The ledger's ``location`` for a layout directory: its absolute, symlink-resolved path.

    Registry locations are ``host/repository`` and never start with ``/``.
    """
    return str(Path(path).expanduser().resolve())


def is_layout_location(location: str) -> bool:
    return location.startswith("/")
