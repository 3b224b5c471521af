"""pack's ``--buildpack`` locators: which buildpacks a build asks for, and where each comes from."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ocibuild.cnb.builder import Builder
from ocibuild.cnb.buildpack import Buildpack, load_buildpacks
from ocibuild.cnb.descriptor import Order
from ocibuild.errors import UsageError
from ocibuild.oci.descriptor import Platform

BUILDER_URN = "urn:cnb:builder:"


def _on_builder(source: str, builder: Builder | None) -> bool:
    """``id`` or ``id@version`` of a buildpack the builder holds (pack's ID locator)."""
    bp_id, _, version = source.partition("@")
    versions = (builder.buildpack_layers or {}).get(bp_id) if builder is not None else None
    return bool(versions) and (not version or version in versions)


def is_builder_ref(source: str, builder: Builder | None = None) -> bool:
    """Whether a ``--buildpack`` names a buildpack on the builder rather than a path or an image.

    Precedence, as pack's locators (``urn:cnb:builder:ID[@VERSION]`` always names the builder's
    buildpack): an existing path; then an id[@version] the builder holds (ids may contain ``/``:
    ``ocibuild/procfile``); then an image reference (``team/bp:1``, ``bpkg:1``, ``oci:DIR:TAG``).
    An ``id@version`` the builder lacks (``@`` but no ``:``, so not an image digest) stays an id,
    so that the error names the builder rather than a registry.
    """
    if os.path.exists(source):
        return False
    if _on_builder(source, builder):
        return True
    return "@" in source and ":" not in source


def requested_buildpacks(sources: Sequence[str], builder: Builder, *, platform: Platform | None,
                         registry_options: Any, default_registry: str | None) -> tuple[list[Buildpack], Order | None]:
    """pack's ``--buildpack``: one group, in the order given; sources that are not on the builder
    are fetched (a composite brings its dependencies, which are added but not put in the group)."""
    from ocibuild.cnb.compose import parse_order

    if not sources:
        return [], None
    extra: list[Buildpack] = []
    members: list[str] = []
    for source in sources:
        if source.startswith(BUILDER_URN):  # pack's explicit ID locator
            members.append(source[len(BUILDER_URN):])
            continue
        if source.startswith("urn:cnb:registry:"):
            raise UsageError(f"--buildpack {source}: the Buildpack Registry is not supported; "
                             "give an image reference instead")
        if is_builder_ref(source, builder):
            members.append(source)
            continue
        loaded = load_buildpacks(source, platform=platform, options=registry_options,
                                 default_registry=default_registry)
        members.append(f"{loaded[0].id}@{loaded[0].version}")
        extra += loaded
    return extra, parse_order([members])
