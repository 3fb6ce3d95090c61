"""The retrieval service as a Kata confidential pod: its Kubernetes objects, rendered from the
data owner's inputs (``coco-ai rag serve-manifest``; docs/formats/rag.md §5.6).

- a Deployment of one pod with ``runtimeClassName`` a Kata CoCo class, the service's initdata in
  ``io.katacontainers.config.hypervisor.cc_init_data`` (its claims, coco_ai.workloads.rag_serve.
  identity; the agent policy that starts only the pinned image with the service's launch), the
  image by digest, exactly the argv that policy admits (`workload_args`: the config is the one
  argument), no env, no volume, no service-account token, no service links;
- a Service on the TLS port;
- a NetworkPolicy admitting, to that port, only pods labelled ``coco-ai.io/rag-caller: "true"``
  (callers still need their attested credential: the policy only narrows who can connect). The
  pod carries ``coco-ai.io/confidential: "true"``, so deploy/kubernetes/networkpolicy.yaml gives
  it its egress (Trustee, the object store, DNS) and nothing else.

Nothing secret is in any object: the store credentials travel as a sealed secret (a signed
pointer) in the config and are unsealed by the CDH inside the TEE.
"""

from __future__ import annotations

import json
from typing import Any

from coco_ai.guest.agent_policy import workload_args
from coco_ai.guest.initdata import INITDATA_ANNOTATION, build_initdata
from coco_ai.workloads.rag_serve.config import ServeConfig
from coco_ai.workloads.rag_serve.identity import SERVICE_MODULE

APP_LABEL = "coco-ai-rag-serve"
CONFIDENTIAL_LABEL = "coco-ai.io/confidential"
CALLER_LABEL = "coco-ai.io/rag-caller"
#: CPU confidential runtime classes (the extractive service needs no GPU); the GPU classes
#: (kata-qemu-nvidia-gpu-tdx/-snp) work too, for generative answers on a GPU
RUNTIME_CLASSES = ("kata-qemu-tdx", "kata-qemu-snp", "kata-qemu-nvidia-gpu-tdx",
                   "kata-qemu-nvidia-gpu-snp")  # fmt: skip
SERVICE_ACCOUNT = "coco-ai-workload"


def service_manifests(
    *,
    config: dict[str, Any],
    claims: dict[str, str],
    image: str,
    kbs_url: str,
    kbs_ca_pem: bytes,
    namespace: str = "confidential-ai",
    runtime_class: str = "kata-qemu-tdx",
    memory: str = "4Gi",
) -> list[dict[str, Any]]:
    """Deployment, Service and NetworkPolicy of the service whose initdata carries ``claims``
    (identity.service_claims) and whose container argument is ``config`` (a ServeConfig)."""
    if runtime_class not in RUNTIME_CLASSES:
        raise ValueError(f"runtime class {runtime_class!r} is not one of {RUNTIME_CLASSES}")
    checked = ServeConfig.from_dict(config)
    if not checked.tls:
        raise ValueError("a pod's service listens beyond loopback: tls must stay on")
    initdata = build_initdata(kbs_url, kbs_ca_pem, claims, image=image, module=SERVICE_MODULE)
    argv = workload_args(SERVICE_MODULE, json.dumps(config, sort_keys=True, separators=(",", ":")))
    labels = {"app": APP_LABEL, CONFIDENTIAL_LABEL: "true"}
    meta = {"namespace": namespace, "labels": {"app": APP_LABEL}}
    container = {
        "name": "rag-serve",
        "image": image,
        "command": argv[:2],
        "args": argv[2:],
        "ports": [{"name": "https", "containerPort": checked.port, "protocol": "TCP"}],
        "resources": {"requests": {"memory": memory}, "limits": {"memory": memory}},
    }
    pod_spec = {
        "runtimeClassName": runtime_class,
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP_LABEL, **meta},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": APP_LABEL}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {INITDATA_ANNOTATION: initdata.annotation()},
                },
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP_LABEL, **meta},
        "spec": {
            "selector": {"app": APP_LABEL},
            "ports": [
                {"name": "https", "port": checked.port, "targetPort": "https", "protocol": "TCP"}
            ],
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{APP_LABEL}-callers", **meta},
        "spec": {
            "podSelector": {"matchLabels": {"app": APP_LABEL}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {CALLER_LABEL: "true"}}}],
                    "ports": [{"protocol": "TCP", "port": checked.port}],
                }
            ],
        },
    }
    return [deployment, service, policy]
