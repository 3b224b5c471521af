"""The CNB API versions ocibuild implements, in one place: what images and ``builder inspect`` declare.

ocibuild is its own lifecycle. It implements Platform API 0.12 to 0.15 (the behaviour of the newest:
exec-env, system buildpacks, ``CNB_INSECURE_REGISTRIES``, run-image mirrors) and runs buildpacks of
Buildpack API 0.7 to 0.12. An image records the Platform API it was built with in
``CNB_PLATFORM_API`` (the launcher and rebase read it) and ocibuild's own label.
"""

from __future__ import annotations

import json

from ocibuild.cnb.descriptor import SUPPORTED_APIS as BUILDPACK_APIS

PLATFORM_APIS: tuple[str, ...] = ("0.12", "0.13", "0.14", "0.15")
PLATFORM_API = PLATFORM_APIS[-1]  # the one builds use
LABEL = "dev.ocibuild.lifecycle"


def declared() -> dict[str, object]:
    """The lifecycle image's ``io.buildpacks.lifecycle.apis`` shape, for ocibuild's native lifecycle."""
    from ocibuild import __version__

    return {
        "version": __version__,
        "platform-api": PLATFORM_API,
        "apis": {"buildpack": {"deprecated": [], "supported": list(BUILDPACK_APIS)},
                 "platform": {"deprecated": [], "supported": list(PLATFORM_APIS)}},
    }


def label() -> str:
    return json.dumps(declared(), separators=(",", ":"))
