"""Rebase an app image onto a new run image: a manifest and config edit, no layer rebuilt.

The lifecycle's rules (phase/rebaser.go, platform.md "rebaser"): the layers up to
``runImage.topLayer`` are the old run image and are swapped for the new one's; os/architecture come
from the new base; ``runImage.topLayer``/``reference`` are rewritten; the old base's
``io.buildpacks.stack.*``/``io.buildpacks.base.*`` labels are replaced by the new one's (SyncLabels).
Refused without ``force``: an image labelled ``io.buildpacks.rebasable=false``, a new base for
another target (Platform >= 0.12) or another stack (older), and (Platform >= 0.12) a run image whose
name the app does not list in ``runImage.image``/``mirrors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ocibuild.cnb.errors import RebaseError
from ocibuild.cnb.export import LIFECYCLE_LABEL, run_reference, strip_tag
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.manifest import ImageConfig, Manifest, canonical_json
from ocibuild.store.base import Store, digest_arg, load_config, load_manifest, put_bytes

REBASABLE_LABEL = "io.buildpacks.rebasable"
STACK_LABEL = "io.buildpacks.stack.id"
#: Labels that describe the run image (stack id, mixins, distro, ...), replaced wholesale by a rebase.
BASE_LABEL_PREFIXES = ("io.buildpacks.stack.", "io.buildpacks.base.")


@dataclass(frozen=True)
class RebaseResult:
    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig
    replaced: int  # how many run-image layers were swapped out
    uploaded: tuple[str, ...]  # blobs copied into the app's store (mounted/present ones excluded)


def _api_at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def _env(config: ImageConfig, key: str) -> str:
    return dict(config.iter_env()).get(key, "")


def rebase(
    store: Store,
    identifier: str,
    new_run_image_store: Store,
    new_run_identifier: str,
    *,
    force: bool = False,
    dst_tag: str | None = None,
    new_run_name: str | None = None,
) -> RebaseResult:
    """Rebase ``store``/``identifier`` onto the new run image; the result is tagged ``dst_tag``
    (else the identifier when it is a tag). ``new_run_name`` is how the new run image is called
    (checked against ``runImage.image``/``mirrors``); None: the name recorded in the image."""
    _desc, app = load_manifest(store, identifier)
    if not isinstance(app, Manifest):
        raise RebaseError(f"{store.name}:{identifier} is an index; rebase one platform's image")
    app_config = load_config(store, app.config)
    labels = dict(app_config.labels)
    raw_md = labels.get(LIFECYCLE_LABEL)
    if not raw_md:
        raise RebaseError(f"{store.name}:{identifier} has no {LIFECYCLE_LABEL} label: not a buildpacks image")
    md: dict[str, Any] = json.loads(raw_md)
    if labels.get(REBASABLE_LABEL) == "false" and not force:
        raise RebaseError(f"image is not rebasable ({REBASABLE_LABEL}=false); use --force to rebase anyway")
    run_md = dict(md.get("runImage") or {})
    top = run_md.get("topLayer")
    diff_ids = [str(d) for d in app_config.diff_ids]
    if not top or top not in diff_ids:
        raise RebaseError(f"runImage.topLayer {top!r} is not a layer of the image; cannot find the run image")
    n_old = diff_ids.index(top) + 1

    new_desc, new_run = load_manifest(new_run_image_store, new_run_identifier)
    if not isinstance(new_run, Manifest):
        raise RebaseError(f"new run image {new_run_image_store.name} is an index; pick a platform")
    new_config = load_config(new_run_image_store, new_run.config)
    new_labels = dict(new_config.labels)
    platform_api = _env(app_config, "CNB_PLATFORM_API")
    modern = _api_at_least(platform_api, (0, 12))
    name = new_run_name or run_md.get("image") or ""

    if not force:
        if modern:
            app_target = (app_config.os, app_config.architecture, app_config.get("variant") or "")
            new_target = (new_config.os, new_config.architecture, new_config.get("variant") or "")
            if app_target != new_target:
                raise RebaseError(f"new run image is {'/'.join(filter(None, new_target))}, the app image is "
                                  f"{'/'.join(filter(None, app_target))}")
            known = [run_md.get("image") or "", *(run_md.get("mirrors") or [])]
            if name and strip_tag(name) not in {strip_tag(k) for k in known if k}:
                raise RebaseError(f"new run image {name} is not the image's run image or one of its mirrors; "
                                  "use --force")
        elif labels.get(STACK_LABEL) != new_labels.get(STACK_LABEL):
            raise RebaseError(f"new run image stack {new_labels.get(STACK_LABEL)!r} does not match the app's "
                              f"{labels.get(STACK_LABEL)!r}")
    if force and new_run_name:
        run_md["image"] = new_run_name
        run_md.pop("mirrors", None)
        md["stack"] = {"runImage": {"image": new_run_name}}

    new_ids = [str(d) for d in new_config.diff_ids]
    run_md["topLayer"] = new_ids[-1] if new_ids else ""
    run_md["reference"] = run_reference(name or new_run_image_store.name, new_desc.digest)
    md["runImage"] = run_md

    doc = app_config.to_dict()
    for key in ("os", "architecture", "variant", "os.version"):
        if new_config.get(key):
            doc[key] = new_config.get(key)
        else:
            doc.pop(key, None)
    doc["rootfs"] = {"type": "layers", "diff_ids": new_ids + diff_ids[n_old:]}
    old_history = list(doc.get("history") or [])
    app_history = [h for h in old_history if not h.get("empty_layer")][n_old:] if old_history else []
    new_history = [dict(h) for h in (new_config.get("history") or [])]
    created = app_config.created
    for h in new_history:
        if created:
            h["created"] = created
    if old_history:
        doc["history"] = new_history + app_history
    # lifecycle SyncLabels: the old base's labels go, then the new base's come in.
    labels = {k: v for k, v in labels.items() if not k.startswith(BASE_LABEL_PREFIXES)}
    labels.update((k, v) for k, v in new_labels.items() if k.startswith(BASE_LABEL_PREFIXES))
    labels[LIFECYCLE_LABEL] = canonical_json(md).decode()
    doc.setdefault("config", {})["Labels"] = labels
    config = ImageConfig.build(doc, app_config.media_type)
    manifest = Manifest.build(config.descriptor(), [*new_run.layers, *app.layers[n_old:]],
                              media_type=app.media_type)

    from ocibuild.transfer.copy import GraphCopier

    uploaded: list[str] = []
    copier = GraphCopier(new_run_image_store, store)
    for blob in new_run.layers:
        if copier.copy_blob(blob) == "copied":
            uploaded.append(str(blob.digest))
    put_bytes(store, config.descriptor(), config.raw)
    tag = dst_tag if dst_tag is not None else (None if digest_arg(identifier) else identifier)
    desc = manifest.descriptor()
    store.put_manifest(desc, manifest.raw, tag=tag)
    return RebaseResult(desc, manifest, config, n_old, tuple(uploaded))


__all__ = ["RebaseError", "RebaseResult", "rebase"]
