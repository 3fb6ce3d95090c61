"""Execution mode ``kubernetes``: the workload as a CoCo pod on confidential GPUs.

Everything the pod needs to be confidential is decided here, from the operator's rendered fields:

- ``runtimeClassName`` ``kata-qemu-nvidia-gpu-tdx`` or ``-snp`` (by TEE type);
- ``nvidia.com/pgpu`` limits (the sandbox device plugin's passthrough GPUs);
- the run's initdata in ``io.katacontainers.config.hypervisor.cc_init_data`` (gzip + base64);
- the image pinned by digest (a tag could be re-pointed by the registry);
- no Airflow-supplied secrets: no ``secrets``, ``env_from`` or ``configmaps``, no env var with a
  secret-looking name. Keys reach the workload only from the confidential data hub, in the TEE;
- exactly the argv the run's agent policy admits (`coco_ai.guest.agent_policy.workload_args`), no
  extra env var, no volume, no service-account token and no service links: the agent policy
  refuses a container with anything else.

The workload's configuration carries references only, so it travels as a container argument.

Deferred (``deferrable=True``), the provider's KubernetesPodTrigger watches the pod from the
triggerer; a pod still running when the trigger reports the task's deadline is deleted at once
(:func:`stop_pod`) instead of having its log followed to the workload's end.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from coco_ai.guest.agent_policy import AgentPolicyError, workload_args
from coco_ai.guest.initdata import INITDATA_ANNOTATION, InitdataError
from coco_ai.runs import RunRefs, RunRefsError

RUNTIME_CLASSES = {"tdx": "kata-qemu-nvidia-gpu-tdx", "snp": "kata-qemu-nvidia-gpu-snp"}
#: Labels of every confidential pod: deploy/kubernetes's NetworkPolicies select them by these
#: (the pods reach only Trustee, the object store and DNS; a federation's parties, each other)
CONFIDENTIAL_LABEL = "coco-ai.io/confidential"
WORKLOAD_LABEL = "coco-ai.io/workload"
FL_ROLE_LABEL = "coco-ai.io/fl-role"
#: deploy/kubernetes/serviceaccounts.yaml: no API token, no RBAC
WORKLOAD_SERVICE_ACCOUNT = "coco-ai-workload"
GPU_RESOURCE = "nvidia.com/pgpu"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE", re.IGNORECASE)


class PodSpecError(ValueError):
    """The confidential pod cannot be built as asked (the message names the setting)."""


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


def launch_command(module: str, config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Container command and args that run ``python -m module`` with ``config`` (references
    only): exactly `workload_args`, the argv the run's agent policy admits."""
    try:
        argv = workload_args(module, json.dumps(config, sort_keys=True, separators=(",", ":")))
    except AgentPolicyError as exc:
        raise PodSpecError(str(exc)) from None
    return argv[:2], argv[2:]


def lock_down(pod: k8s.V1Pod) -> k8s.V1Pod:
    """No service-account token mount and no service-link env vars: the agent policy refuses
    both (a token is a volume, the service variables an environment the image did not set)."""
    pod.spec.automount_service_account_token = False
    pod.spec.enable_service_links = False
    for container in pod.spec.containers:
        if container.volume_mounts or container.env or container.env_from:
            raise PodSpecError(
                f"container {container.name!r} has volumes or env vars: the guest's agent policy "
                "admits neither"
            )
    if pod.spec.volumes or pod.spec.init_containers or len(pod.spec.containers) != 1:
        raise PodSpecError(
            "the confidential pod has exactly one container and no volumes or init containers: "
            "the guest's agent policy starts nothing else"
        )
    return pod


def confidential_labels(labels: dict[str, str] | None, refs: RunRefs) -> dict[str, str]:
    """``labels`` plus the confidential pod's own: confidential, its workload kind and, for a
    federation party, its role. A given label may not say otherwise."""
    from coco_ai.guest.initdata import FEDERATION_ROLE_KEY

    ours = {CONFIDENTIAL_LABEL: "true", WORKLOAD_LABEL: refs.workload}
    role = refs.party_claims.get(FEDERATION_ROLE_KEY)
    if role:
        ours[FL_ROLE_LABEL] = role
    merged = dict(labels or {})
    clash = sorted(k for k, v in ours.items() if merged.get(k, v) != v)
    if clash:
        raise PodSpecError(f"labels {', '.join(clash)} are the operator's to set")
    return {**merged, **ours}


def annotations_with_initdata(annotations: dict[str, str] | None, refs: RunRefs) -> dict:
    """``annotations`` plus the run's initdata, checked to have the digest key release pinned."""
    try:
        refs.initdata()
    except (RunRefsError, InitdataError) as exc:
        raise PodSpecError(str(exc)) from None
    merged = dict(annotations or {})
    merged[INITDATA_ANNOTATION] = refs.initdata_annotation
    return merged


def stop_pod(
    client, namespace: str, name: str, *, container: str, grace_s: int | None, log
) -> None:
    """Log the last lines of a pod that must stop now, and delete it (gone already is fine).

    Used when the trigger reports the task's deadline: the provider's resume path would first
    follow the pod's log, which lasts as long as a running workload writes progress lines, so
    the deadline would not stop the workload; this deletes it before anything else."""
    try:
        tail = client.read_namespaced_pod_log(
            name=name, namespace=namespace, container=container, tail_lines=20
        )
        for line in tail.splitlines():
            log.info("[%s] %s", container, line)
    except ApiException as exc:
        log.warning("Last log lines of pod %s/%s unavailable: %s", namespace, name, exc.reason)
    try:
        client.delete_namespaced_pod(name=name, namespace=namespace, grace_period_seconds=grace_s)
    except ApiException as exc:
        if exc.status != 404:
            raise
    log.info("Deleted pod %s/%s", namespace, name)
