"""deploy/kubernetes/: strictly valid for Kubernetes 1.34, least-privilege RBAC, a NetworkPolicy
that leaves the confidential pods only the key broker, the object store and DNS."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from distributed.harness import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.34.0"
CONFIDENTIAL_LABEL = {"coco-ai.io/confidential": "true"}


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


DOCS = _documents()


def _kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


@pytest.mark.parametrize(
    "doc",
    [d for _, d in DOCS],
    ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in DOCS],
)
def test_manifest_is_strictly_valid_for_kubernetes_1_34(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _named(kind: str, name: str) -> dict:
    (doc,) = [d for d in _kind(kind) if d["metadata"]["name"] == name]
    return doc


def test_strict_validation_rejects_an_unknown_field() -> None:
    bad = dict(_named("NetworkPolicy", "coco-ai-confidential-pods"))
    bad["spec"] = {**bad["spec"], "egres": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_expected_objects_are_shipped_and_no_runtime_class() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    assert ("Namespace", "confidential-ai") in kinds
    assert ("ServiceAccount", "coco-ai-pod-launcher") in kinds
    assert ("Role", "coco-ai-pod-launcher") in kinds
    assert ("RoleBinding", "coco-ai-pod-launcher") in kinds
    assert ("NetworkPolicy", "coco-ai-confidential-pods") in kinds
    assert ("Service", "coco-ai-fl-aggregator") in kinds
    # RuntimeClasses belong to the cluster admin (Kata / CoCo install); only documented here.
    assert not _kind("RuntimeClass")
    assert not _kind("ClusterRole") and not _kind("ClusterRoleBinding")
    for _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "confidential-ai"


def test_pod_launcher_role_is_least_privilege() -> None:
    (role,) = _kind("Role")
    rules = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            assert resource not in rules
            rules[resource] = set(rule["verbs"])
    assert rules == {
        "pods": {"create", "get", "list", "watch", "patch", "delete"},
        "pods/log": {"get"},
        "events": {"list", "watch"},
    }
    for verbs in rules.values():
        assert "*" not in verbs


def test_role_binding_grants_the_role_to_the_launcher_only() -> None:
    (binding,) = _kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "coco-ai-pod-launcher",
    }
    assert [s["name"] for s in binding["subjects"]] == ["coco-ai-pod-launcher"]


def test_workload_service_account_gets_no_token() -> None:
    accounts = {a["metadata"]["name"]: a for a in _kind("ServiceAccount")}
    assert accounts["coco-ai-workload"]["automountServiceAccountToken"] is False


def test_network_policy_allows_only_broker_object_store_and_dns() -> None:
    policy = _named("NetworkPolicy", "coco-ai-confidential-pods")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": CONFIDENTIAL_LABEL}
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["ingress"] == []
    destinations = {}
    for rule in spec["egress"]:
        (peer,) = rule["to"]
        assert "ipBlock" not in peer, "no address-range escape hatch"
        namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        destinations[namespace] = (
            peer["podSelector"]["matchLabels"],
            {(p["protocol"], p["port"]) for p in rule["ports"]},
        )
    assert destinations == {
        "trustee": ({"app": "kbs"}, {("TCP", 8080)}),
        "minio": ({"app": "minio"}, {("TCP", 9000)}),
        "kube-system": ({"k8s-app": "kube-dns"}, {("UDP", 53), ("TCP", 53)}),
    }


def test_readme_documents_runtime_classes_and_prerequisites() -> None:
    readme = (K8S_DIR / "README.md").read_text()
    for needle in (
        "kata-qemu-nvidia-gpu-tdx",
        "kata-qemu-nvidia-gpu-snp",
        "GPU Operator",
        "Trustee",
        "coco-ai.io/confidential",
        "3.29",
    ):
        assert needle in readme, needle


def test_federation_parties_reach_only_the_aggregators_port() -> None:
    """The aggregator's Service selects the pod the operator labels as the aggregator; the only
    traffic the federation policies add is participant -> aggregator on that port."""
    from coco_ai_airflow.execution.kubernetes import CONFIDENTIAL_LABEL, FL_ROLE_LABEL

    aggregator = {CONFIDENTIAL_LABEL: "true", FL_ROLE_LABEL: "aggregator"}
    participant = {CONFIDENTIAL_LABEL: "true", FL_ROLE_LABEL: "participant"}
    service = _named("Service", "coco-ai-fl-aggregator")
    assert service["spec"]["selector"] == aggregator
    (port,) = service["spec"]["ports"]
    assert (port["protocol"], port["port"], port["targetPort"]) == ("TCP", 8002, 8002)
    inbound = _named("NetworkPolicy", "coco-ai-fl-aggregator")["spec"]
    assert inbound["podSelector"] == {"matchLabels": aggregator}
    assert inbound["policyTypes"] == ["Ingress"]
    (rule,) = inbound["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": participant}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8002}]
    outbound = _named("NetworkPolicy", "coco-ai-fl-participants")["spec"]
    assert outbound["podSelector"] == {"matchLabels": participant}
    assert outbound["policyTypes"] == ["Egress"]
    (rule,) = outbound["egress"]
    assert rule["to"] == [{"podSelector": {"matchLabels": aggregator}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8002}]
