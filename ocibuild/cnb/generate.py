"""Generation: each detected extension's ``bin/generate`` writes the Dockerfiles that extend the images.

An extension runs in the build environment as the build user (as buildpacks do):
``bin/generate <output> <platform> <plan>`` in the app directory, with ``CNB_EXTENSION_DIR``,
``CNB_OUTPUT_DIR``, ``CNB_PLATFORM_DIR``, ``CNB_BP_PLAN_PATH`` and the target's ``CNB_TARGET_*``; one
without ``bin/generate`` contributes its ``generate/`` directory as its output. Each gets the plan
entries it provides, which then leave the plan (buildpacks do not get what an extension met).
What it writes is copied out of the sandbox and parsed (``cnb.dockerfile``) before anything uses
it: ``build.Dockerfile`` extends the build image, ``run.Dockerfile`` may switch the run image (each
one's ``${base_image}`` is the run image the previous extensions chose), ``extend-config.toml``
``[[build.args]]`` adds build args.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TextIO

from ocibuild.cnb.descriptor import BuildpackDescriptor, BuildpackStore, GroupElement, Target, escape_id
from ocibuild.cnb.dockerfile import Dockerfile, DockerfileError, parse_dockerfile
from ocibuild.cnb.env import BuildEnv
from ocibuild.cnb.errors import BuildpackError
from ocibuild.cnb.plan import Plan, Require, write_bp_plan
from ocibuild.cnb.sandbox import DIRECT, Owner, Sandbox, exit_reason, give, phase_dir

DOCKERFILES = ("build", "run")


@dataclass(frozen=True)
class Generated:
    """What one extension generated (copied out of the sandbox to ``output``)."""

    extension: GroupElement
    output: Path
    build: Dockerfile | None = None
    run: Dockerfile | None = None
    build_args: tuple[tuple[str, str], ...] = ()

    @property
    def context(self) -> Path:
        """Where ``COPY`` sources come from: ``context.build``, else ``context``, else the output dir."""
        for name in ("context.build", "context"):
            if (self.output / name).is_dir():
                return self.output / name
        return self.output


@dataclass(frozen=True)
class GenerateResult:
    generated: tuple[Generated, ...]
    run_image: str | None  # the run image the run.Dockerfiles switched to (None: unchanged)
    plan: Plan  # what is left for the buildpacks

    @property
    def build_dockerfiles(self) -> tuple[Generated, ...]:
        return tuple(g for g in self.generated if g.build is not None)


def generate(
    extensions: tuple[GroupElement, ...],
    plan: Plan,
    store: BuildpackStore,
    out_dir: Path,
    app_dir: Path,
    platform_dir: Path,
    *,
    run_image: str,
    env: Mapping[str, str] | None = None,
    target: Target | None = None,
    build_config_dir: Path | None = None,
    sandbox: Sandbox | None = None,
    tmp_dir: Path | None = None,
    owner: Owner | None = None,
    output: TextIO | None = None,
) -> GenerateResult:
    """Run every extension's generate in group order; ``run_image`` is the run image before any switch."""
    sb = sandbox or DIRECT
    out: list[Generated] = []
    current = run_image
    for element in extensions:
        desc = store.lookup(element.id, element.version)
        dest = out_dir / escape_id(desc.id)
        requires = plan.find(desc.id, extension=True)
        _run_generate(desc, requires, dest, app_dir, platform_dir, BuildEnv(env), target or Target(),
                      build_config_dir, sb, tmp_dir, owner, output if output is not None else sys.stderr)
        generated = _read_outputs(element, dest)
        if generated.run is not None:
            current = generated.run.image(current)
        out.append(generated)
        plan = plan.filter({r.name for r in requires})
    return GenerateResult(tuple(out), current if current != run_image else None, plan)


def _run_generate(desc: BuildpackDescriptor, requires: tuple[Require, ...], dest: Path, app_dir: Path,
                  platform_dir: Path,
                  build_env: BuildEnv,
                  target: Target, config_dir: Path | None, sb: Sandbox, tmp_dir: Path | None, owner: Owner | None,
                  output: TextIO) -> None:
    generate_bin = desc.path / "bin" / "generate"
    if not generate_bin.exists():  # <extension>/generate/ is the output, ready-made
        static = desc.path / "generate"
        if static.is_dir():
            shutil.copytree(static, dest, symlinks=True)
        else:
            dest.mkdir(parents=True)
        return
    with phase_dir(f"ocibuild-generate-{escape_id(desc.id)}-", tmp_dir, owner) as tmp:
        plan_path, output_dir = tmp / "plan.toml", tmp / "output"
        write_bp_plan(plan_path, requires)
        give(plan_path, owner)
        output_dir.mkdir()
        give(output_dir, owner)
        run_env = build_env.with_overrides(platform_dir, config_dir)
        run_env.update({"CNB_EXTENSION_DIR": sb.visible(desc.path), "CNB_OUTPUT_DIR": sb.visible(output_dir),
                        "CNB_PLATFORM_DIR": sb.visible(platform_dir), "CNB_BP_PLAN_PATH": sb.visible(plan_path),
                        **target.env()})
        try:
            argv = [sb.visible(generate_bin), sb.visible(output_dir), sb.visible(platform_dir), sb.visible(plan_path)]
            proc = sb.run(argv, cwd=sb.visible(app_dir), env=run_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as err:
            raise BuildpackError(f"extension {desc}: cannot run bin/generate: {err}", buildpack=desc.id) from None
        output.write(proc.stdout.decode("utf-8", "replace"))
        output.flush()
        if proc.returncode != 0:
            raise BuildpackError(f"extension {desc}: bin/generate failed ({exit_reason(proc.returncode)})",
                                 buildpack=desc.id)
        shutil.copytree(output_dir, dest, symlinks=True)


def _read_outputs(element: GroupElement, dest: Path) -> Generated:
    dockerfiles: dict[str, Dockerfile | None] = {}
    for kind in DOCKERFILES:
        path = dest / f"{kind}.Dockerfile"
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise DockerfileError(f"extension {element}: {kind}.Dockerfile must be a regular file")
        dockerfiles[kind] = parse_dockerfile(path, kind) if path.is_file() else None
    return Generated(element, dest, dockerfiles["build"], dockerfiles["run"], _build_args(element, dest))


def _build_args(element: GroupElement, dest: Path) -> tuple[tuple[str, str], ...]:
    """``extend-config.toml``: ``[[build.args]] name = ... value = ...``."""
    path = dest / "extend-config.toml"
    if not path.is_file():
        return ()
    where = f"extension {element}: extend-config.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DockerfileError(f"{where}: invalid TOML ({err})") from None
    out = []
    for arg in (doc.get("build") or {}).get("args") or []:
        if not isinstance(arg, dict) or not all(isinstance(arg.get(k, ""), str) for k in ("name", "value")) \
                or not arg.get("name"):
            raise DockerfileError(f"{where}: every [[build.args]] needs a name and a string value")
        out.append((arg["name"], arg.get("value", "")))
    return tuple(out)
