"""pack's ``--buildpack`` locators: which buildpacks a build asks for, and where each comes from."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ocibuild.cnb.builder import Builder
from ocibuild.cnb.buildpack import Buildpack, load_buildpacks
from ocibuild.cnb.descriptor import Order
from ocibuild.errors import UsageError

if TYPE_CHECKING:
    from ocibuild.cnb.pipeline import BuildOptions
    from ocibuild.cnb.project import Project

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


def requested_buildpacks(opts: "BuildOptions", project: "Project", builder: Builder) -> tuple[list[Buildpack], Order | None]:
    """pack's ``--buildpack`` (else project.toml's): one group, in the order given; sources that are
    not on the builder are fetched (a composite brings its dependencies, which are added but not put
    in the group). ``--pre-buildpack``/``--post-buildpack`` (else project.toml's pre/post groups) go
    before/after that group, or before/after every group of the builder's order when none is given."""
    from ocibuild.cnb.compose import parse_order

    sources = opts.buildpacks or project.buildpacks
    pre = opts.pre_buildpacks or project.pre_buildpacks
    post = opts.post_buildpacks or project.post_buildpacks
    if not sources and not pre and not post:
        return [], None
    extra: list[Buildpack] = []
    pre_members = _members(pre, opts, builder, extra, "--pre-buildpack")
    post_members = _members(post, opts, builder, extra, "--post-buildpack")
    if not sources:
        if not builder.order:
            raise UsageError("--pre-buildpack/--post-buildpack: the builder has no order to add them to")
        return extra, parse_order([[*pre_members, *group, *post_members] for group in builder.order])
    members = _members(sources, opts, builder, extra, "--buildpack")
    return extra, parse_order([[*pre_members, *members, *post_members]])


def _members(sources: Sequence[str], opts: "BuildOptions", builder: Builder, extra: list[Buildpack],
             flag: str) -> list[str]:
    """The group members ``sources`` name; buildpacks fetched for them are appended to ``extra``."""
    from ocibuild.cnb.fetch import is_url, load_url_buildpacks

    members: list[str] = []
    for source in sources:
        if source.startswith(BUILDER_URN):  # pack's explicit ID locator
            members.append(source[len(BUILDER_URN):])
            continue
        if source.startswith("urn:cnb:registry:"):
            raise UsageError(f"{flag} {source}: the Buildpack Registry is not supported; "
                             "give an image reference instead")
        if is_url(source):
            from ocibuild.ledger import Scratch

            loaded = load_url_buildpacks(source, Scratch.resolve(opts.scratch).cache_path, platform=opts.platform,
                                         options=opts.registry_options, default_registry=opts.default_registry)
        elif is_builder_ref(source, builder):
            members.append(source)
            continue
        else:
            if opts.pull_policy:  # a buildpackage image goes through its kept copy too
                from ocibuild.cnb.packflags import kept_buildpackage

                source = kept_buildpackage(source, opts.pull_policy, default_registry=opts.default_registry,
                                           options=opts.registry_options, scratch=opts.scratch,
                                           platform=opts.platform)
            loaded = load_buildpacks(source, platform=opts.platform, options=opts.registry_options,
                                     default_registry=opts.default_registry)
        members.append(f"{loaded[0].id}@{loaded[0].version}")
        extra += loaded
    return members
