"""Where the app image goes: pack's IMAGE and ``--tag``, parsed once before anything is built."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ocibuild.errors import UsageError
from ocibuild.oci.reference import LayoutReference, Reference, parse_reference


@dataclass(frozen=True)
class Destinations:
    """IMAGE (tag ``latest`` when it names none), more tags in its own repository or layout, and
    other repositories of the same registry (``-t team/app:1``)."""

    image: Reference | LayoutReference
    same_tags: tuple[str, ...] = ()
    other_repositories: tuple[Reference, ...] = ()


def destinations(image_text: str, tags: Sequence[str], default_registry: str | None) -> Destinations:
    """Every tag parsed with the same default registry; a tag on another registry or in another
    layout is refused (pack: "tag ... must be on the same registry")."""
    image = parse_reference(image_text, default_registry)
    if image.digest is not None:
        raise UsageError(f"IMAGE {image_text}: name a tag, not a digest (the digest is what the build makes)")
    if image.identifier is None:  # bare oci:DIR: like a registry name without a tag
        image = image.with_tag("latest")
    same: list[str] = []
    others: list[Reference] = []
    for text in tags:
        if isinstance(image, LayoutReference):
            tag = _layout_tag(image, text)
            if tag != image.tag and tag not in same:
                same.append(tag)
            continue
        ref = parse_reference(text, default_registry)
        if isinstance(ref, LayoutReference):
            raise UsageError(f"--tag {text}: a layout tag for a registry IMAGE {image}")
        if ref.registry != image.registry:
            raise UsageError(f"--tag {text}: on registry {ref.registry}, not {image.registry} where IMAGE goes")
        if ref.digest is not None or not ref.tag:
            raise UsageError(f"--tag {text}: name a tag, not a digest")
        if ref.repository == image.repository:
            if ref.tag != image.tag and ref.tag not in same:
                same.append(ref.tag)
        elif ref not in others:
            others.append(ref)
    return Destinations(image, tuple(same), tuple(others))


def _layout_tag(image: LayoutReference, text: str) -> str:
    if not text.startswith(("oci:", "ocidir://")):
        return image.with_tag(text).tag or ""
    ref = parse_reference(text)
    assert isinstance(ref, LayoutReference)
    if os.path.realpath(ref.path) != os.path.realpath(image.path):
        raise UsageError(f"--tag {text}: not in the layout {image.path} that IMAGE names")
    if ref.tag is None:
        raise UsageError(f"--tag {text}: name a tag (oci:{image.path}:TAG)")
    return ref.tag
