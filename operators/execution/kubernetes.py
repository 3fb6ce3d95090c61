"""Execution mode ``kubernetes``: the fine-tune as a CoCo pod on confidential GPUs.

Everything the pod needs to be confidential is decided here, from the operator's rendered fields:

- ``runtimeClassName`` ``kata-qemu-nvidia-gpu-tdx`` or ``-snp`` (by TEE type);
- ``nvidia.com/pgpu`` limits (the sandbox device plugin's passthrough GPUs);
- the run's initdata in ``io.katacontainers.config.hypervisor.cc_init_data`` (gzip + base64);
- the image pinned by digest (a tag could be re-pointed by the registry);
- no Airflow-supplied secrets: no ``secrets``, ``env_from`` or ``configmaps``, no env var with a
  secret-looking name. Keys reach the workload only from the confidential data hub, in the TEE.

The workload's configuration carries references only, so it travels as a container argument.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes.client import models as k8s

from coco_ai.guest.initdata import INITDATA_ANNOTATION, Initdata

RUNTIME_CLASSES = {"tdx": "kata-qemu-nvidia-gpu-tdx", "snp": "kata-qemu-nvidia-gpu-snp"}
GPU_RESOURCE = "nvidia.com/pgpu"
WORKLOAD_CONFIG_PATH = "/tmp/coco-ai/finetune.json"  # noqa: S108 - the pod's own tmpfs
_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE", re.IGNORECASE)
# Write the (reference-only) config to a file and exec the workload; `$0` is the JSON argument.
_LAUNCH = (
    f'mkdir -p "$(dirname {WORKLOAD_CONFIG_PATH})" && '
    f'printf "%s" "$0" > {WORKLOAD_CONFIG_PATH} && '
    f"exec python -m coco_ai.workloads.finetune --config {WORKLOAD_CONFIG_PATH}"
)


class PodSpecError(ValueError):
    """The confidential pod cannot be built as asked (the message names the setting)."""


def require_image_digest(image: str | None) -> str:
    """Return ``image`` if it is pinned by ``@sha256:<64 hex>``, else raise PodSpecError."""
    if not image or not _IMAGE_BY_DIGEST.match(image):
        raise PodSpecError(
            f"workload image {image!r} must be pinned by digest (name@sha256:<64 hex>); "
            "tags can be re-pointed and would not match the image digest in the initdata"
        )
    return image


def runtime_class_for(tee: str) -> str:
    try:
        return RUNTIME_CLASSES[tee]
    except KeyError:
        raise PodSpecError(
            f"TEE type {tee!r} has no confidential GPU runtime class "
            f"(expected one of {', '.join(RUNTIME_CLASSES)}); 'sample' runs only in local mode"
        ) from None


def gpu_resources(
    gpu_count: int, base: k8s.V1ResourceRequirements | None
) -> k8s.V1ResourceRequirements:
    """``base`` with ``nvidia.com/pgpu`` limits (and requests, if any) set to ``gpu_count``."""
    limits = dict((base.limits or {}) if base else {})
    requests = dict((base.requests or {}) if base else {})
    if gpu_count > 0:
        limits[GPU_RESOURCE] = str(gpu_count)
        if GPU_RESOURCE in requests:
            requests[GPU_RESOURCE] = str(gpu_count)
    else:
        limits.pop(GPU_RESOURCE, None)
        requests.pop(GPU_RESOURCE, None)
    return k8s.V1ResourceRequirements(limits=limits or None, requests=requests or None)


def check_no_secrets(env_vars: Any, secrets: list, env_from: list, configmaps: list) -> None:
    """Refuse every channel through which Airflow could hand the confidential pod a secret."""
    if secrets or env_from or configmaps:
        raise PodSpecError(
            "the confidential pod takes no Kubernetes secrets, env_from or configmaps: "
            "keys are released to the TEE by Trustee, never through Airflow"
        )
    names = [e.name for e in env_vars] if isinstance(env_vars, list) else list(env_vars or {})
    bad = sorted(n for n in names if _SECRET_NAME.search(n))
    if bad:
        raise PodSpecError(f"env vars with secret-looking names are refused: {', '.join(bad)}")


def launch_command(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Container command and args that run the workload with ``config`` (references only)."""
    return ["/bin/sh", "-c"], [_LAUNCH, json.dumps(config, sort_keys=True, separators=(",", ":"))]


def initdata_annotation(run_refs: dict[str, Any]) -> str:
    """The run's annotation, checked to decode to initdata with the digest key release pinned."""
    annotation = run_refs["initdata_annotation"]
    digest = Initdata.from_annotation(annotation).digest().hex()
    expected = run_refs["initdata_digest"].partition(":")[2]
    if digest != expected:
        raise PodSpecError(
            f"initdata annotation digest {digest} differs from the pinned {expected}"
        )
    return annotation


def annotations_with_initdata(annotations: dict[str, str] | None, run_refs: dict) -> dict:
    merged = dict(annotations or {})
    merged[INITDATA_ANNOTATION] = initdata_annotation(run_refs)
    return merged
