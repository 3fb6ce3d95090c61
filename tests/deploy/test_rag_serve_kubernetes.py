"""deploy/kubernetes/rag-serve/: the retrieval service as a Kata confidential pod — strictly
valid for Kubernetes 1.34, its initdata's agent policy starting only the pinned image with the
service's launch and exactly the pod's argv, no env, no volume, no secret anywhere, the store
credentials as a sealed secret whose resource the initdata pins. The same checks run on what
`coco-ai rag serve-manifest` renders from fresh inputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from coco_ai.guest.agent_policy import agent_policy_text, workload_args
from coco_ai.guest.initdata import (
    AGENT_POLICY_KEY,
    IMAGE_DIGEST_KEY,
    INITDATA_ANNOTATION,
    WORKLOAD_KEY,
    Initdata,
)
from coco_ai.guest.sealed import parse_sealed_secret
from coco_ai.workloads.rag_serve.config import ServeConfig
from coco_ai.workloads.rag_serve.identity import (
    SERVICE_MODULE,
    SERVICE_ROLE,
    STORE_OPTIONS_KEY,
    TRUST_ANCHOR_KEY,
    anchor_digest,
)
from coco_ai.workloads.rag_serve.kubernetes import RUNTIME_CLASSES

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "rag-serve" / "rag-serve.yaml"
KUBERNETES_VERSION = "1.34.0"


def _objects(text: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}


def check_service_objects(objects: dict[str, dict]) -> None:
    assert set(objects) == {"Deployment", "Service", "NetworkPolicy"}
    for doc in objects.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "confidential-ai"
    template = objects["Deployment"]["spec"]["template"]
    pod = template["spec"]
    assert pod["runtimeClassName"] in RUNTIME_CLASSES and pod["runtimeClassName"].startswith("kata")
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "coco-ai-workload"
    assert "volumes" not in pod and "initContainers" not in pod
    (container,) = pod["containers"]
    assert not {"env", "envFrom", "volumeMounts"} & set(container)
    image = container["image"]
    assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image)
    assert template["metadata"]["labels"]["coco-ai.io/confidential"] == "true"

    initdata = Initdata.from_annotation(template["metadata"]["annotations"][INITDATA_ANNOTATION])
    claims = initdata.claims()
    assert initdata.data[AGENT_POLICY_KEY] == agent_policy_text(image, SERVICE_MODULE)
    assert claims[WORKLOAD_KEY] == SERVICE_ROLE
    assert claims[IMAGE_DIGEST_KEY] == image.partition("@")[2]

    # the argv is exactly what the agent policy admits, its one argument a valid config
    config_json = container["args"][-1]
    assert container["command"] + container["args"] == workload_args(SERVICE_MODULE, config_json)
    config = ServeConfig.from_dict(json.loads(config_json))
    assert config.tls and config.run_id == claims["io.coco-ai.run-id"]
    assert anchor_digest(config.trust_anchor_pem.encode()) == claims[TRUST_ANCHOR_KEY]
    # the store credentials: a sealed pointer to exactly the resource the initdata pins
    sealed = parse_sealed_secret(config.sealed_storage_options)
    payload = json.loads(sealed.payload_bytes)
    assert payload["name"] == claims[STORE_OPTIONS_KEY]
    # nothing secret anywhere in the objects (the config has no field that could hold one:
    # ServeConfig refuses unknown fields)
    assert "PRIVATE KEY" not in json.dumps(list(objects.values()))

    port = container["ports"][0]["containerPort"]
    assert port == config.port
    assert objects["Service"]["spec"]["selector"] == {"app": "coco-ai-rag-serve"}
    ingress = objects["NetworkPolicy"]["spec"]
    assert ingress["policyTypes"] == ["Ingress"]
    (rule,) = ingress["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"coco-ai.io/rag-caller": "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_shipped_manifest_is_a_locked_down_confidential_pod() -> None:
    check_service_objects(_objects(MANIFEST.read_text()))


def test_a_pod_with_env_or_a_volume_fails_the_checks() -> None:
    objects = _objects(MANIFEST.read_text())
    objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}
    ]
    with pytest.raises(AssertionError):
        check_service_objects(objects)


def test_cli_renders_the_same_shape_from_fresh_inputs(tmp_path) -> None:
    from coco_ai.guest.sealed import (
        VaultSecret,
        generate_signing_jwk,
        seal_vault_secret,
        signing_key_from_jwk,
    )

    kid = "kbs:///coco-ai/sealed-signing/owner"
    key = signing_key_from_jwk(json.dumps(generate_signing_jwk(kid)).encode(), "test")
    uri = "kbs:///coco-ai/rag-store/options-2"
    (tmp_path / "sealed").write_text(seal_vault_secret(VaultSecret(name=uri), key, kid))
    pem = _self_signed_pem()
    (tmp_path / "ca.pem").write_bytes(pem)
    image = "registry.example.com/coco-ai/rag@sha256:" + "ab" * 32
    args = [
        *("--kbs-url", "https://kbs.example:8080", "--kbs-ca", str(tmp_path / "ca.pem")),
        *("--image", image, "--run-id", "svc-2", "--index-run", "idx-2"),
        *("--index-manifest", "sha256:" + "cd" * 32, "--index-uri", "s3://b/idx-2"),
        *("--embedder-path", "s3://m/minilm", "--trust-anchor", str(tmp_path / "ca.pem")),
        *("--caller", "alice", "--runtime-class", "kata-qemu-snp"),
    ]
    sealed = ("--store-options-uri", uri, "--sealed-storage-options", str(tmp_path / "sealed"))

    def render(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "coco_ai.cli", "rag", "serve-manifest", *args, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = render(*sealed)
    assert done.returncode == 0, done.stderr
    objects = _objects(done.stdout)
    check_service_objects(objects)
    claims = Initdata.from_annotation(
        objects["Deployment"]["spec"]["template"]["metadata"]["annotations"][INITDATA_ANNOTATION]
    ).claims()
    assert claims["io.coco-ai.rag-caller-credential.alice"].endswith("/alice")
    # refused: sealed credentials without their pinned resource, an unknown runtime class
    half = render("--sealed-storage-options", str(tmp_path / "sealed"))
    assert half.returncode == 2 and "go together" in half.stderr
    runc = render(*sealed, "--runtime-class", "runc")
    assert runc.returncode == 2 and "runtime class 'runc'" in runc.stderr


def _self_signed_pem() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
