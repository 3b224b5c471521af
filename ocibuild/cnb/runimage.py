"""The run image: which one a build uses, how the image records it, and the target it gives buildpacks."""

from __future__ import annotations

from dataclasses import replace

from ocibuild.cnb.builder import Builder, RunImage
from ocibuild.cnb.descriptor import Target
from ocibuild.errors import InvalidReference, ManifestError
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.manifest import Index
from ocibuild.oci.reference import parse_reference
from ocibuild.store.base import Store, load_config, load_manifest


def qualified(name: str, default_registry: str | None) -> str:
    """A run image name as the image records it: registry/repository:tag, or the ``oci:`` form."""
    try:
        return str(parse_reference(name, default_registry))
    except InvalidReference:
        return name


def run_image_record(builder: Builder, run_name: str, default_registry: str | None) -> tuple[str, tuple[str, ...]]:
    """``runImage.image`` and ``mirrors`` as the lifecycle records them (platform GetRunImageForExport):
    the builder's run-image entry whose image or a mirror is the run image used, else just that name.
    Names are qualified (``registry/repository:tag``; layouts keep ``oci:``) so rebase can match them."""
    used = qualified(run_name, default_registry)
    for entry in builder.run_images or ():
        names = [qualified(n, default_registry) for n in (entry.image, *(entry.mirrors or ())) if n]
        if used in names:
            return names[0] if entry.image else used, tuple(names[1:] if entry.image else names)
    return used, ()


def run_image_candidates(entry: RunImage, app_registry: str | None, default_registry: str | None) -> tuple[str, ...]:
    """The names ``run.toml``'s first entry offers, best first, as the lifecycle ranks them: the
    image or mirror on the app image's registry first (no cross-registry pull at run time), then the
    image, then its mirrors."""
    names = [n for n in (entry.image, *(entry.mirrors or ())) if n]

    def registry(name: str) -> str | None:
        try:
            return getattr(parse_reference(name, default_registry), "registry", None)
        except InvalidReference:
            return None

    same = [n for n in names if app_registry is not None and registry(n) == app_registry]
    return tuple(dict.fromkeys([*same, *names]))


def platform_manifest(store: Store, identifier: str, platform: Platform | None) -> str:
    """A run image given as an index becomes the digest of its manifest for ``platform`` (default: the host's)."""
    _, manifest = load_manifest(store, identifier)
    if not isinstance(manifest, Index):
        return identifier
    from ocibuild.cnb.buildpack import host_platform

    want = platform or host_platform()
    entry = manifest.select(want)
    if entry is None:
        raise ManifestError(f"run image {identifier} has no manifest for {want}")
    return str(entry.digest)


def os_release_distro(text: str | None) -> tuple[str, str]:
    """``(ID, VERSION_ID)`` of an os-release file (shell-style ``KEY=value``, quotes optional)."""
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("ID", "VERSION_ID"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key] = value
    return values.get("ID", ""), values.get("VERSION_ID", "")


def with_build_os_release(target: Target, os_release: str | None) -> Target:
    """The lifecycle's last source of target data: without distro labels on the run image, the
    build image's ``/etc/os-release`` names the distro (lifecycle#1352, #1371)."""
    if target.distro_name:
        return target
    name, version = os_release_distro(os_release)
    return replace(target, distro_name=name, distro_version=version) if name else target


def target_of(store: Store, identifier: str) -> Target:
    """``CNB_TARGET_*`` from the run image: its config's os/architecture/variant and distro labels."""
    _, manifest = load_manifest(store, identifier)
    config = load_config(store, manifest.config)
    labels = config.labels
    return Target(os=config.os or "linux", arch=config.architecture or "amd64",
                  arch_variant=config.get("variant") or "",
                  distro_name=labels.get("io.buildpacks.base.distro.name", ""),
                  distro_version=labels.get("io.buildpacks.base.distro.version", ""))
