"""Build provenance: an in-toto Statement v1 with a SLSA v1 provenance predicate, attached as a referrer.

It records what the build was made from: the builder image (name and digest), each buildpack of
the group (id, version, and the diffID of its layer on the builder), the run image (name and
digest), the source directory and, for a git checkout, its commit. There are no timestamps, so
rebuilding the same thing yields the same document and attaching it again adds nothing.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocibuild import __version__
from ocibuild.attest.publish import ROLE_PROVENANCE, Blob, Record, no_record
from ocibuild.attest.referrers import attach
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest
from ocibuild.oci.manifest import canonical_json

IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
BUILD_TYPE = "urn:ocibuild:buildtype:cnb-build:v1"
BUILDER_ID = "urn:ocibuild:platform"


@dataclass(frozen=True)
class BuildpackUsed:
    id: str
    version: str
    layer_diff_id: str | None  # the buildpack's layer on the builder


@dataclass(frozen=True)
class ProvenanceInputs:
    image: str  # the name the image was built as
    builder: str
    builder_digest: str
    buildpacks: tuple[BuildpackUsed, ...]
    run_image: str
    run_image_digest: str | None
    source: Path


@dataclass(frozen=True)
class GitSource:
    commit: str
    dirty: bool


def git_source(path: Path) -> GitSource | None:
    """HEAD of the git checkout ``path`` is in (None: not a checkout, or no git here)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = (git("rev-parse", "--verify", "-q", "HEAD") or "").strip()
    if len(commit) not in (40, 64) or any(c not in "0123456789abcdef" for c in commit):
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitSource(commit, bool(status and status.strip()))


def _digest_set(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    digest = Digest.parse(text)
    return {digest.algorithm: digest.encoded}


def statement(inputs: ProvenanceInputs, image: Descriptor, git: GitSource | None = None) -> dict[str, Any]:
    """The in-toto statement for ``image`` (see the module docstring for what goes in)."""
    source: dict[str, Any] = {"name": "source", "uri": Path(inputs.source).absolute().as_uri()}
    if git is not None:
        source["digest"] = {"gitCommit": git.commit}
        source["annotations"] = {"dirty": git.dirty}
    else:
        source["annotations"] = {"git": False}
    deps: list[dict[str, Any]] = [
        {"name": "builder", "uri": inputs.builder, "digest": _digest_set(inputs.builder_digest)},
        *({"name": f"buildpack:{bp.id}", "uri": f"urn:cnb:buildpack:{bp.id}@{bp.version}",
           "digest": _digest_set(bp.layer_diff_id), "annotations": {"id": bp.id, "version": bp.version}}
          for bp in inputs.buildpacks),
        {"name": "run-image", "uri": inputs.run_image, "digest": _digest_set(inputs.run_image_digest)},
        source,
    ]
    for dep in deps:
        if not dep.get("digest"):
            dep.pop("digest", None)  # a ResourceDescriptor needs uri or digest; it always has uri
    return {
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": inputs.image, "digest": _digest_set(str(image.digest))}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "image": inputs.image,
                    "builder": inputs.builder,
                    "runImage": inputs.run_image,
                    "buildpacks": [f"{bp.id}@{bp.version}" for bp in inputs.buildpacks],
                    "source": {"path": str(Path(inputs.source).absolute()),
                               **({"gitCommit": git.commit} if git is not None else {})},
                },
                "internalParameters": {},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"ocibuild": __version__}},
                "metadata": {},
            },
        },
    }


def attach_provenance(store: Any, image: Descriptor, inputs: ProvenanceInputs,
                      record: Record = no_record) -> Descriptor:
    doc = canonical_json(statement(inputs, image, git_source(Path(inputs.source))))
    blob = Blob(IN_TOTO_MEDIA_TYPE, doc, annotations={PREDICATE_ANNOTATION: SLSA_PROVENANCE})
    return attach(store, image, IN_TOTO_MEDIA_TYPE, [blob], ROLE_PROVENANCE, record=record,
                  annotations={PREDICATE_ANNOTATION: SLSA_PROVENANCE})
