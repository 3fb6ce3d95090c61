"""Rego policies shipped to Trustee; the stand-in evaluates the very same files.

`load(name)` returns a policy's text and `digest(name)` the SHA-256 of its bytes. Names are file
stems (``resource_prod``, ``attestation_cpu_tdx``…); ``POLICY_SETS`` says which files make up a
deployment, keyed by Trustee policy id (``resource-policy`` for the KBS resource policy,
``default_cpu``/``default_gpu`` for the attestation service).

The resource policies are templates of the data owner's approval: `resource_policy_text(kind,
approved_images, approved_modules)` fills in the approved images, the launches of the approved
workload modules and the code binding, and `policy_text(name, approved_images)` is what is
uploaded and compared for any policy of a set.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from coco_ai.guest.agent_policy import (
    AGENT_POLICY_TEMPLATE,
    IMAGE_PLACEHOLDER,
    LAUNCH_PLACEHOLDER,
    qualified_pinned_image,
    workload_launch,
)
from coco_ai.guest.image_policy import IMAGE_POLICY_URI

RESOURCE_POLICY_ID = "resource-policy"

#: The resource policy templates, by kind.
RESOURCE_POLICIES = {"prod": "resource_prod", "dev": "resource_dev"}

POLICY_SETS: dict[str, dict[str, str]] = {
    # Local development: Trustee's sample CPU TEE and sample GPU.
    "dev": {
        RESOURCE_POLICY_ID: "resource_dev",
        "default_cpu": "attestation_cpu_sample",
        "default_gpu": "attestation_gpu_sampledevice",
    },
    # The stand-in with the production resource policy: sample evidence is refused.
    "prod": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_sample",
        "default_gpu": "attestation_gpu_sampledevice",
    },
    "prod-tdx": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_tdx",
        "default_gpu": "attestation_gpu_nvidia",
    },
    "prod-snp": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_snp",
        "default_gpu": "attestation_gpu_nvidia",
    },
}

# Reference values under which the sample policies affirm Trustee's sample verifier claims
# (RVPS `sample` extractor payload shape: {id: value or [values]}).
DEV_SAMPLE_REFERENCE_VALUES: dict[str, object] = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 4,
    "device_svn": ["2"],
}


def names() -> list[str]:
    """Every shipped policy name (file stem)."""
    return sorted(
        entry.name[: -len(".rego")]
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".rego")
    )


def _bytes(name: str) -> bytes:
    if name not in names():
        raise KeyError(f"no shipped policy named {name!r}; known: {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{name}.rego").read_bytes()


def load(name: str) -> str:
    """The Rego text of policy `name`, exactly as shipped."""
    return _bytes(name).decode("utf-8")


def digest(name: str) -> str:
    """Hex SHA-256 of the policy file's bytes."""
    return hashlib.sha256(_bytes(name)).hexdigest()


def workload_modules() -> list[str]:
    """The modules of every workload kind of the project (coco_ai.workloads.kinds)."""
    from coco_ai.workloads.kinds import KINDS  # imported when rendering only: it loads storage

    return sorted(kind.module for kind in KINDS.values())


#: Modules an approved image may also launch that are not workload kinds: they produce no
#: checkpoint (so promotion, which accepts only `workload_modules`, never accepts them) but hold
#: keys: the retrieval service and its attested callers (coco_ai.workloads.rag_serve).
SERVICE_MODULES = ("coco_ai.workloads.rag_serve", "coco_ai.workloads.rag_serve.client")


def launchable_modules() -> list[str]:
    """Every module the resource policies approve by default: workload kinds and services."""
    return sorted({*workload_modules(), *SERVICE_MODULES})


def _rego_set(values: Iterable[str]) -> str:
    items = sorted(set(values))
    return "{" + ", ".join(json.dumps(item) for item in items) + "}" if items else "set()"


def render_resource_policy(
    template: str, approved_images: Iterable[str], approved_modules: Iterable[str] | None = None
) -> str:
    """Fill a resource policy template's approval lines (each exactly once, as shipped).

    Every image must be a fully qualified reference pinned by digest; none approved leaves
    ``approved_images := set()``, under which nothing is released. ``approved_modules`` are the
    workload modules an approved image may launch (`workload_launch`), every workload kind's
    and service's (`launchable_modules`) by default.
    """
    images = [qualified_pinned_image(image) for image in approved_images]
    modules = launchable_modules() if approved_modules is None else list(approved_modules)
    launches = [workload_launch(module) for module in modules]
    fills = {
        "approved_images := set()": f"approved_images := {_rego_set(images)}",
        "approved_launches := set()": f"approved_launches := {_rego_set(launches)}",
        # A raw string keeps the template verbatim (it holds no backtick, checked where defined).
        'agent_policy_template := ""': f"agent_policy_template := `{AGENT_POLICY_TEMPLATE}`",
        'agent_policy_image_placeholder := ""': (
            f"agent_policy_image_placeholder := {json.dumps(IMAGE_PLACEHOLDER)}"
        ),
        'agent_policy_launch_placeholder := ""': (
            f"agent_policy_launch_placeholder := {json.dumps(LAUNCH_PLACEHOLDER)}"
        ),
        'image_security_policy_uri := ""': (
            f"image_security_policy_uri := {json.dumps(IMAGE_POLICY_URI)}"
        ),
    }
    text = template
    for line, filled in fills.items():
        if text.count(f"\n{line}\n") != 1:
            raise ValueError(f"resource policy template must hold the line {line!r} once")
        text = text.replace(f"\n{line}\n", f"\n{filled}\n")
    return text


def resource_policy_text(
    kind: str, approved_images: Iterable[str], approved_modules: Iterable[str] | None = None
) -> str:
    """The resource policy of ``kind`` (``prod`` or ``dev``) releasing keys only to guests bound
    to one of ``approved_images`` running the launch of one of ``approved_modules`` (every
    workload kind's by default; see resource_prod.rego); what the data owner uploads."""
    if kind not in RESOURCE_POLICIES:
        raise KeyError(f"no resource policy kind {kind!r}; known: {', '.join(RESOURCE_POLICIES)}")
    return render_resource_policy(load(RESOURCE_POLICIES[kind]), approved_images, approved_modules)


def policy_text(name: str, approved_images: Iterable[str] = ()) -> str:
    """The text Trustee must hold for policy file ``name``: resource policies rendered with
    ``approved_images`` (and every workload module), attestation policies as shipped."""
    for kind, resource_name in RESOURCE_POLICIES.items():
        if name == resource_name:
            return resource_policy_text(kind, approved_images)
    return load(name)


@functools.cache
def load_regopy() -> Any:
    """The `regopy` module, loaded so that torch can still be imported afterwards.

    regopy's librego_shared.so and torch's libtorch_cpu.so clash when rego is loaded first: a
    later `import torch` aborts the process ("double free or corruption") in libtorch_cpu's
    static initialisers. Loading libtorch_cpu.so first (about 0.2 s, only when torch is
    installed and not yet imported) avoids it. Every in-process Rego user should import
    regopy through this function.
    """
    if "torch" not in sys.modules:
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.origin is not None:
            lib = Path(spec.origin).parent / "lib" / "libtorch_cpu.so"
            if lib.exists():
                ctypes.CDLL(str(lib))
    import regopy

    return regopy
