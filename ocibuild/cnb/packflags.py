"""pack build's flags that are more than a value: ``--cache``, ``--pull-policy``, ``--publish``,
``--report-output-dir``, and the flags ocibuild refuses rather than ignores.

Parsing is here, away from the CLI (so it is testable and one-line errors are ``UsageError``s) and away
from the pipeline (which only sees the result: ``BuildOptions`` fields).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocibuild.errors import NotFound, UsageError
from ocibuild.fileutil import write_atomic

PULL_POLICIES = ("always", "never", "if-not-present")
#: Tag prefix of the copies of builders and run images kept in the scratch layout (``--pull-policy``).
KEPT_PREFIX = "pulled/"
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# -- --cache ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheChoice:
    """Where the build cache goes: an image, a directory, or a named directory in the scratch dir."""

    image: str | None = None
    directory: Path | None = None
    volume: str | None = None


def parse_cache(values: list[str] | tuple[str, ...], *, cache_image: str | None = None,
                cache_dir: Path | None = None) -> CacheChoice:
    """pack's ``--cache 'type=build;format=image|bind|volume;name=…|source=…'`` mapped onto
    ``--cache-image`` (format=image), ``--cache-dir`` (format=bind) or a named directory kept in the
    scratch dir (format=volume, pack's default). ``type=launch`` is refused: there is no daemon whose
    image store a launch cache would stand in for; launch layers are reused from the previous image."""
    if not values:
        return CacheChoice(image=cache_image, directory=cache_dir)
    if cache_image or cache_dir is not None:
        raise UsageError("--cache and --cache-image/--cache-dir name the same cache: give one of them")
    if len(values) > 1:
        raise UsageError("--cache given twice: ocibuild keeps one (build) cache")
    text = values[0]
    fields: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UsageError(f"--cache {text!r}: expected key=value pairs separated by ';', got {part!r}")
        if key in fields:
            raise UsageError(f"--cache {text!r}: {key} given twice")
        fields[key] = value.strip()
    unknown = set(fields) - {"type", "format", "name", "source"}
    if unknown:
        raise UsageError(f"--cache {text!r}: unknown key {sorted(unknown)[0]!r} (type, format, name, source)")
    kind = fields.get("type", "build")
    if kind == "launch":
        raise UsageError("--cache type=launch: not supported (no daemon; launch layers are reused from the "
                         "previous image)")
    if kind != "build":
        raise UsageError(f"--cache type={kind}: expected build or launch")
    fmt = fields.get("format", "volume")
    if fmt == "image":
        if "source" in fields or not fields.get("name"):
            raise UsageError(f"--cache {text!r}: format=image takes name=IMAGE")
        return CacheChoice(image=fields["name"])
    if fmt == "bind":
        if "name" in fields or not fields.get("source"):
            raise UsageError(f"--cache {text!r}: format=bind takes source=DIR")
        return CacheChoice(directory=Path(fields["source"]))
    if fmt == "volume":
        if "source" in fields:
            raise UsageError(f"--cache {text!r}: format=volume takes name=NAME, not source")
        name = fields.get("name")
        if name is not None and not _VOLUME_NAME.match(name):
            raise UsageError(f"--cache {text!r}: a volume name is letters, digits, '.', '_' and '-'")
        return CacheChoice(volume=name or "")
    raise UsageError(f"--cache format={fmt}: expected image, bind or volume")


def volume_path(cache_root: Path, name: str, image: str) -> Path:
    """The directory of a ``format=volume`` cache: by name, else per image (as pack names volumes)."""
    import hashlib

    if name:
        return cache_root / "volumes" / name
    return cache_root / "volumes" / ("image-" + hashlib.sha256(image.encode()).hexdigest()[:16])


# -- --pull-policy ---------------------------------------------------------------------------------
def parse_pull_policy(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in PULL_POLICIES:
        raise UsageError(f"--pull-policy {value!r}: expected always, never or if-not-present")
    return value


def kept_tag(qualified: str) -> str:
    return KEPT_PREFIX + qualified


def read_through(text: str, policy: str, *, default_registry: str | None, options: Any,
                 scratch: str | os.PathLike[str] | None, platform: Any = None) -> tuple[Any, str] | None:
    """A builder or run image read through the copy kept in the scratch layout, as ``policy`` says:
    ``always`` refreshes the copy from the registry first; ``if-not-present`` uses the copy when there
    is one (no network), else pulls it; ``never`` uses the copy or refuses. An index is kept for the
    build's platform only. None for names that are not registry references (layouts are read as
    they are)."""
    from ocibuild.ledger import Scratch
    from ocibuild.oci.reference import Reference, parse_reference

    ref = parse_reference(text, default_registry)
    if not isinstance(ref, Reference):
        return None
    tag = kept_tag(str(ref))
    store = Scratch.resolve(Path(scratch) if scratch is not None else None).ensure().open_layout()
    present = tag in set(store.tags())
    if policy == "never" and not present:
        raise NotFound(f"--pull-policy never: {ref} is not kept in the scratch layout {store.path} "
                       "(pull it once with --pull-policy if-not-present)")
    if policy == "always" or not present:
        _pull(ref, store, tag, options, platform)
    return store, tag


def _pull(ref: Any, store: Any, tag: str, options: Any, platform: Any) -> None:
    from ocibuild.cnb.buildpack import host_platform
    from ocibuild.oci.manifest import Index, parse_manifest
    from ocibuild.store.open import open_parsed
    from ocibuild.transfer.copy import copy_image

    source = open_parsed(ref, options)
    identifier = ref.identifier or "latest"
    _desc, raw = source.get_manifest(identifier)
    platforms = [platform or host_platform()] if isinstance(parse_manifest(raw), Index) else None
    copy_image(source, identifier, store, tag, platforms=platforms)


# -- --publish -------------------------------------------------------------------------------------
def check_publish(image: str, publish: bool) -> None:
    """pack's ``--publish``: IMAGE goes to a registry. ocibuild always writes where IMAGE names (there
    is no daemon), so the flag only checks that IMAGE is a registry reference."""
    if publish and image.startswith(("oci:", "ocidir://", "oci-archive:", "docker-archive:")):
        raise UsageError(f"--publish: IMAGE {image} is not a registry reference (drop --publish to write a layout)")


# -- refused flags ---------------------------------------------------------------------------------
def refuse(flag: str, value: Any, why: str) -> None:
    """A pack flag ocibuild cannot honour yet: one line naming it, never silently ignored."""
    if value:
        raise UsageError(f"{flag}: not supported by ocibuild ({why})")


# -- --report-output-dir ---------------------------------------------------------------------------
def write_report(directory: Path, tags: list[str], digest: str, manifest_size: int) -> Path:
    """The lifecycle's ``report.toml``: ``[image] tags, digest, manifest-size``; written atomically."""

    import tomli_w

    directory.mkdir(parents=True, exist_ok=True)
    doc = {"image": {"tags": tags, "digest": digest, "manifest-size": manifest_size}}
    data = tomli_w.dumps(doc).encode()
    path = write_atomic(directory / "report.toml", data, prefix=".report-")
    return path


def report_tags(dest: Any) -> list[str]:
    """Every name the build wrote, fully qualified (``oci:DIR:TAG`` for a layout)."""
    from ocibuild.oci.reference import LayoutReference

    image = dest.image
    if isinstance(image, LayoutReference):
        return [f"oci:{image.path}:{t}" for t in (image.tag, *dest.same_tags)]
    names = [str(image)] + [str(image.with_tag(t)) for t in dest.same_tags]
    return names + [str(ref) for ref in dest.other_repositories]


# -- rebase --tag ----------------------------------------------------------------------------------
def rebase_tag(image: str, tag: str, default_registry: str | None) -> str:
    """``rebase --tag``: a bare tag, or a full reference in IMAGE's own repository (or layout); the
    tag it names. Another repository or layout is refused: the result's blobs live in IMAGE's."""
    from ocibuild.oci.reference import _TAG, LayoutReference, parse_reference

    if _TAG.match(tag) and ":" not in tag:
        return tag
    source = parse_reference(image, default_registry)
    named = parse_reference(tag, default_registry)
    if isinstance(source, LayoutReference) != isinstance(named, LayoutReference):
        raise UsageError(f"--tag {tag}: not where IMAGE {image} is")
    if isinstance(named, LayoutReference):
        if os.path.realpath(named.path) != os.path.realpath(source.path):
            raise UsageError(f"--tag {tag}: not in the layout {source.path} that IMAGE names")
    elif (named.registry, named.repository) != (source.registry, source.repository):
        raise UsageError(f"--tag {tag}: not in IMAGE's repository {source.registry}/{source.repository}")
    if named.digest is not None or not named.tag:
        raise UsageError(f"--tag {tag}: name a tag, not a digest")
    return named.tag


def kept_buildpackage(source: str, policy: str, *, default_registry: str | None, options: Any,
                      scratch: str | os.PathLike[str] | None, platform: Any = None) -> str:
    """A ``--buildpack`` that names a buildpackage image, read through its kept copy as ``policy``
    says: the ``oci:LAYOUT@DIGEST`` of that copy. Other sources (paths, ids, layouts) are returned as
    they are."""
    from ocibuild.cnb.buildpack import _looks_like_reference

    if os.path.exists(source) or not (source.startswith("docker://") or _looks_like_reference(source)):
        return source
    kept = read_through(source.removeprefix("docker://"), policy, default_registry=default_registry,
                        options=options, scratch=scratch, platform=platform)
    if kept is None:
        return source
    store, tag = kept
    return f"oci:{store.path}@{store.resolve(tag).digest}"
