"""The buildpacks view of an app image, as ``pack inspect`` shows it: processes, buildpacks, run image, base.

Everything comes from the image's labels and config; nothing is pulled but the config.
"""

from __future__ import annotations

import json
from typing import Any

from ocibuild.cnb.export import BUILD_LABEL, LIFECYCLE_LABEL, PROCESS_DIR
from ocibuild.oci.manifest import ImageConfig


def _label_json(config: ImageConfig, key: str) -> dict[str, Any]:
    raw = config.labels.get(key)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def is_buildpacks_image(config: ImageConfig) -> bool:
    return LIFECYCLE_LABEL in config.labels


def default_process(config: ImageConfig, build_md: dict[str, Any]) -> str | None:
    """The process the image runs: its ``/cnb/process/<type>`` entrypoint, else CNB_PROCESS_TYPE, else the
    buildpacks' default (pack looks at the entrypoint first too)."""
    entrypoint = list((config.get("config") or {}).get("Entrypoint") or [])
    if entrypoint and entrypoint[0].startswith(PROCESS_DIR + "/"):
        return entrypoint[0][len(PROCESS_DIR) + 1:]
    env = dict(config.iter_env())
    return env.get("CNB_PROCESS_TYPE") or build_md.get("buildpack-default-process-type") or None


def cnb_view(config: ImageConfig) -> dict[str, Any]:
    """The ``--json`` form: ``{"stack", "base_image", "run_images", "buildpacks", "processes"}`` as pack has it."""
    md = _label_json(config, LIFECYCLE_LABEL)
    build_md = _label_json(config, BUILD_LABEL)
    run = md.get("runImage") or {}
    default = default_process(config, build_md)
    processes = []
    for p in build_md.get("processes") or []:
        command = p.get("command") or []
        if isinstance(command, str):
            command = [command]
        processes.append({
            "type": p.get("type", ""),
            "shell": "" if p.get("direct") else "bash",
            "command": command[0] if command else "",
            "default": p.get("type") == default,
            "args": [*command[1:], *(p.get("args") or [])],
            "working-dir": p.get("working-dir") or "/workspace",
        })
    run_images = []
    if run.get("image"):
        run_images.append({"name": run["image"], "user_configured": False})
    run_images += [{"name": m, "user_configured": False} for m in run.get("mirrors") or []]
    return {
        "stack": {"id": config.labels.get("io.buildpacks.stack.id", "")},
        "base_image": {"top_layer": run.get("topLayer", ""), "reference": run.get("reference", "")},
        "run_images": run_images,
        "buildpacks": [{"id": b.get("id", ""), "version": b.get("version", ""),
                        **({"homepage": b["homepage"]} if b.get("homepage") else {})}
                       for b in build_md.get("buildpacks") or []],
        "extensions": build_md.get("extensions") or [],
        "processes": processes,
    }


def cnb_lines(view: dict[str, Any]) -> list[str]:
    """The human form, laid out like ``pack inspect``'s output."""
    lines = [f"Stack: {view['stack']['id']}", "", "Base Image:"]
    base = view["base_image"]
    if base.get("reference"):
        lines.append(f"  Reference: {base['reference']}")
    lines.append(f"  Top Layer: {base.get('top_layer', '')}")
    lines += ["", "Run Images:"]
    lines += [f"  {r['name']}" for r in view["run_images"]] or ["  (none)"]
    lines += ["", "Buildpacks:"]
    width = max([len(b["id"]) for b in view["buildpacks"]] + [2])
    lines.append(f"  {'ID':<{width}}  VERSION")
    lines += [f"  {b['id']:<{width}}  {b['version']}" for b in view["buildpacks"]] or ["  (none)"]
    lines += ["", "Processes:"]
    if not view["processes"]:
        lines.append("  (none)")
    else:
        lines.append("  TYPE                 SHELL        COMMAND        ARGS        WORK DIR")
        for p in view["processes"]:
            kind = f"{p['type']} (default)" if p["default"] else p["type"]
            lines.append(f"  {kind:<20} {p['shell']:<12} {p['command']:<14} {' '.join(p['args']):<11} "
                         f"{p['working-dir']}")
    return lines
