"""Detection: try the order's groups in turn, run each member's bin/detect, resolve the build plan.

Follows the lifecycle's phase/detector.go: composites are expanded depth-first (the rest of the
enclosing group follows each of the composite's groups; an optional composite whose groups all fail
leaves the rest of the group to be tried alone); a buildpack id already tried in the current group
is not tried again; each id@version's bin/detect runs once per detection. A group passes when every
non-optional member passes, at least one passes, and a plan resolves. Exit codes: 20 when no group
passed, 21 when additionally a bin/detect errored (exit other than 0/100 or a refused plan).

Image extensions (Platform API 0.13): the ``order-extensions`` are tried ahead of every group as an
optional composite whose members are all optional (the lifecycle's ``PrependExtensions``); an extension
without ``bin/detect`` passes with its ``detect/plan.toml`` (or ``plan.toml``); its plan may provide,
never require (``extension <id> outputs "requires" which is not allowed``). A group needs at least one
buildpack besides its extensions.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from ocibuild.cnb.descriptor import (
    BuildpackDescriptor,
    BuildpackStore,
    Group,
    GroupElement,
    Order,
    Target,
)
from ocibuild.cnb.env import BuildEnv
from ocibuild.cnb.execenv import applies
from ocibuild.cnb.errors import BuildpackNotFound, DetectErrored, DetectFailed
from ocibuild.cnb.plan import BuildPlan, Plan, PlanError, Unresolvable, read_build_plan, resolve
from ocibuild.cnb.sandbox import DIRECT, Owner, Sandbox, give, phase_dir

CODE_PASS = 0
CODE_FAIL = 100
NO_GROUP_MESSAGE = "No buildpack groups passed detection."
_EXTENSIONS = GroupElement("<order-extensions>", optional=True)  # stands for the order-extensions in a group


@dataclass(frozen=True)
class DetectRun:
    """One bin/detect run: exit code (-1 when it could not run or its plan was refused), output, plan."""

    element: GroupElement
    code: int
    output: str
    plan: BuildPlan = BuildPlan()
    error: str = ""


@dataclass(frozen=True)
class DetectResult:
    group: tuple[GroupElement, ...]  # the buildpacks
    plan: Plan
    runs: tuple[DetectRun, ...]
    log: tuple[str, ...]
    group_extensions: tuple[GroupElement, ...] = ()  # the extensions that passed, in order


class _GroupFailed(Exception):
    def __init__(self, errored: bool):
        self.errored = errored


class _Detector:
    def __init__(
        self,
        store: BuildpackStore,
        app_dir: Path,
        platform_dir: Path,
        environ: Mapping[str, str] | None,
        target: Target,
        build_config_dir: Path | None,
        exec_env: str,
        sandbox: Sandbox,
        check_targets: bool,
        tmp_dir: Path | None = None,
        owner: Owner | None = None,
        extensions: BuildpackStore | None = None,
        order_extensions: Order = Order(),
    ):
        self.store = store
        self.extensions = extensions
        self.order_extensions = Order(tuple(
            Group(tuple(replace(el, optional=True, extension=True) for el in g)) for g in order_extensions))
        self.app_dir = app_dir
        self.platform_dir = platform_dir
        self.environ = environ
        self.target = target
        self.build_config_dir = build_config_dir
        self.exec_env = exec_env
        self.sandbox = sandbox
        self.check_targets = check_targets
        self.tmp_dir = tmp_dir
        self.owner = owner
        self.runs: dict[str, DetectRun] = {}
        self.log: list[str] = []

    # -- order traversal (detectOrder / detectGroup) --------------------------------------------
    def detect_order(
        self, order: Order, done: list[GroupElement], rest: tuple[GroupElement, ...], optional: bool
    ) -> tuple[tuple[GroupElement, ...], Plan]:
        errored = False
        for group in order:
            try:
                return self.detect_group((*group.elements, *rest), list(done))
            except _GroupFailed as failed:
                errored = errored or failed.errored
        if optional:
            return self.detect_group(rest, list(done))
        raise _GroupFailed(errored)

    def detect_group(
        self, elements: tuple[GroupElement, ...], done: list[GroupElement]
    ) -> tuple[tuple[GroupElement, ...], Plan]:
        for i, element in enumerate(elements):
            if element is _EXTENSIONS:
                return self.detect_order(self.order_extensions, done, elements[i + 1 :], True)
            if any(d.id == element.id and d.extension == element.extension for d in done):
                continue
            if not applies(element.exec_env, self.exec_env):  # an entry for another environment
                continue
            desc = self._lookup(element)
            if desc.is_composite:
                return self.detect_order(desc.order, done, elements[i + 1 :], element.optional)
            member = replace(element, api=desc.api, homepage=desc.homepage)
            done.append(member)
            key = _key(member)
            if key in self.runs:
                continue
            if self.check_targets and desc.targets and not any(self.target.satisfies(t) for t in desc.targets):
                if not element.optional:
                    self.runs[key] = DetectRun(
                        member, -1, "", error=f"unable to satisfy target os/arch constraints ({self.target.os}/"
                        f"{self.target.arch})"
                    )
                else:
                    done.pop()
                continue
            if not applies(desc.exec_env, self.exec_env):
                self.runs[key] = DetectRun(member, CODE_FAIL, f"buildpack {member} is not for exec-env "
                                           f"{self.exec_env} (it declares {', '.join(desc.exec_env)})\n")
                continue
            self.runs[key] = self.run_detect(desc, member)
        return self.resolve(done)

    def _lookup(self, element: GroupElement) -> BuildpackDescriptor:
        if not element.extension:
            return self.store.lookup(element.id, element.version)
        if self.extensions is None:
            raise BuildpackNotFound(f"extension {element} named, but the builder has no /cnb/extensions",
                                    buildpack=element.id)
        return self.extensions.lookup(element.id, element.version)

    # -- one bin/detect -----------------------------------------------------------------------------
    def run_detect(self, desc: BuildpackDescriptor, member: GroupElement) -> DetectRun:
        if desc.is_extension and not (desc.path / "bin" / "detect").exists():
            return _static_detect(desc, member)  # an extension without bin/detect passes
        run = self._run_detect(desc, member)
        if desc.is_extension and run.code == CODE_PASS and any(o.requires for o in run.plan.options()):
            return DetectRun(member, -1, run.output, error=f'extension {desc.id} outputs "requires" which is '
                             "not allowed (extensions only provide)")
        return run

    def _run_detect(self, desc: BuildpackDescriptor, member: GroupElement) -> DetectRun:
        sb = self.sandbox
        api = desc.api_version
        with phase_dir("ocibuild-plan-", self.tmp_dir, self.owner) as tmp:
            plan_path = tmp / "plan.toml"
            plan_path.write_bytes(b"")
            give(plan_path, self.owner)
            env = BuildEnv(self.environ).with_overrides(
                None if desc.clear_env else self.platform_dir, self.build_config_dir
            )
            env["CNB_BUILDPACK_DIR"] = sb.visible(desc.path)  # the lifecycle sets it for extensions too
            if desc.is_extension:
                env["CNB_EXTENSION_DIR"] = sb.visible(desc.path)
            if api.at_least("0.8"):
                env["CNB_PLATFORM_DIR"] = sb.visible(self.platform_dir)
                env["CNB_BUILD_PLAN_PATH"] = sb.visible(plan_path)
            if api.at_least("0.10"):
                env.update(self.target.env())
            if api.at_least("0.12"):
                env["CNB_EXEC_ENV"] = self.exec_env
            argv = [
                f"{sb.visible(desc.path)}/bin/detect",
                sb.visible(self.platform_dir),
                sb.visible(plan_path),
            ]
            try:
                proc = sb.run(
                    argv, cwd=sb.visible(self.app_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            except OSError as err:
                return DetectRun(member, -1, "", error=str(err))
            output = proc.stdout.decode("utf-8", "replace")
            if proc.returncode != CODE_PASS:
                code = proc.returncode if proc.returncode > 0 else -1
                return DetectRun(member, code, output)
            try:
                plan = read_build_plan(plan_path)
            except PlanError as err:
                return DetectRun(member, -1, output, error=f"buildpack {desc.id} {err}")
        return DetectRun(member, CODE_PASS, output, plan)

    # -- Resolve ------------------------------------------------------------------------------------
    def resolve(self, done: list[GroupElement]) -> tuple[tuple[GroupElement, ...], Plan]:
        runs = [self.runs[_key(el)] for el in done]
        for run in runs:
            self.log.extend(_output_block(run))
        self.log.append("======== Results ========")
        detected, any_passed, errored = True, False, False
        passed: list[tuple[GroupElement, BuildPlan]] = []
        for el, run in zip(done, runs):
            if run.code == CODE_PASS:
                self.log.append(f"pass: {el}")
                passed.append((el, run.plan))
                any_passed = True
            elif run.code == CODE_FAIL:
                self.log.append(f"{'skip' if el.optional else 'fail'}: {el}")
                detected = detected and el.optional
            else:
                self.log.append(_err_line(run))
                errored = True
                detected = detected and el.optional
        if not detected:
            raise _GroupFailed(errored)
        if not any(run.code == CODE_PASS and not run.element.extension for run in runs):
            self.log.append("fail: no viable buildpacks in group")
            raise _GroupFailed(False)
        try:
            group, plan = resolve(passed, self.log.append)
        except Unresolvable:
            raise _GroupFailed(False) from None
        if len(group) != len(done):
            self.log.append(f"{len(group)} of {len(done)} buildpacks participating")
        for el in group:
            self.log.append(f"{el.id} {el.version}")
        return group, plan


def detect(
    order: Order,
    buildpacks_dir: Path | str | BuildpackStore,
    app_dir: Path | str,
    platform_dir: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    target: Target | None = None,
    build_config_dir: Path | str | None = None,
    exec_env: str = "production",
    sandbox: Sandbox | None = None,
    check_targets: bool = False,
    tmp_dir: Path | None = None,
    owner: Owner | None = None,
    extensions: BuildpackStore | None = None,
    order_extensions: Order = Order(),
) -> DetectResult:
    """Find the first group of ``order`` that passes detection and resolve its plan.

    ``env`` is the environment the include-list is cut from (default ``os.environ``); user variables
    belong in ``<platform_dir>/env/``. ``sandbox`` (from ``prepare_sandbox``) makes the app dir and
    other host paths appear where buildpacks expect them. ``check_targets`` applies the Platform
    API 0.12 target filter (buildpack ``[[targets]]`` against ``target``). ``tmp_dir`` holds the
    plans (a directory the sandbox shows), owned by ``owner`` (the build user, as root).
    ``order_extensions`` (found in ``extensions``) are tried ahead of every group of ``order``.
    """
    store = buildpacks_dir if isinstance(buildpacks_dir, BuildpackStore) else BuildpackStore(buildpacks_dir)
    detector = _Detector(
        store,
        Path(app_dir).absolute(),
        Path(platform_dir).absolute(),
        env,
        target or Target(),
        Path(build_config_dir).absolute() if build_config_dir is not None else None,
        exec_env,
        sandbox or DIRECT,
        check_targets,
        Path(tmp_dir) if tmp_dir is not None else None,
        owner,
        extensions,
        order_extensions,
    )
    if order_extensions:
        order = Order(tuple(Group((_EXTENSIONS, *g.elements)) for g in order))
    try:
        group, plan = detector.detect_order(order, [], (), False)
    except _GroupFailed as failed:
        detector.log.append(NO_GROUP_MESSAGE)
        log = tuple(detector.log)
        if failed.errored:
            bad = [
                f"{r.element} ({f'exit status {r.code}' if r.code > 0 else (r.error.splitlines() or ['error'])[0]})"
                for r in detector.runs.values()
                if r.code not in (CODE_PASS, CODE_FAIL)
            ]
            raise DetectErrored(
                f"{NO_GROUP_MESSAGE} Buildpack(s) errored: {', '.join(bad)}", log=log, report=_errored_report(detector)
            ) from None
        raise DetectFailed(NO_GROUP_MESSAGE, log=log) from None
    return DetectResult(tuple(e for e in group if not e.extension), plan, tuple(detector.runs.values()),
                        tuple(detector.log), tuple(e for e in group if e.extension))


def _key(element: GroupElement) -> str:
    return f"extension:{element}" if element.extension else str(element)


def _static_detect(desc: BuildpackDescriptor, member: GroupElement) -> DetectRun:
    """An extension with no ``bin/detect``: it passes, providing what its ``detect/plan.toml`` (or
    ``plan.toml``, as the lifecycle reads it) says."""
    path = desc.path / "detect" / "plan.toml"
    try:
        plan = read_build_plan(path if path.is_file() else desc.path / "plan.toml")
    except PlanError as err:
        return DetectRun(member, -1, "", error=f"extension {desc.id} detect/plan.toml: {err}")
    if any(o.requires for o in plan.options()):
        return DetectRun(member, -1, "", error=f'extension {desc.id} outputs "requires" which is not '
                         "allowed (extensions only provide)")
    return DetectRun(member, CODE_PASS, "", plan)


def _output_block(run: DetectRun) -> list[str]:
    """A buildpack's ``======== Output ========`` (and ``Error``) block of the detection log."""
    lines = []
    if run.output:
        lines += [f"======== Output: {run.element} ========", run.output.rstrip("\n")]
    if run.error:
        lines += [f"======== Error: {run.element} ========", run.error]
    return lines


def _err_line(run: DetectRun) -> str:
    return f"err:  {run.element}" + (f" ({run.code})" if run.code > 0 else "")


def _errored_report(detector: _Detector) -> str:
    """Each errored buildpack's output block (once, though several groups may have run it), then
    the ``Results`` with their ``err:`` lines: what the lifecycle shows of errors without ``-v``."""
    errored = [r for r in detector.runs.values() if r.code not in (CODE_PASS, CODE_FAIL)]
    lines = [line for r in errored for line in _output_block(r)]
    return "\n".join([*lines, "======== Results ========", *(_err_line(r) for r in errored)])
