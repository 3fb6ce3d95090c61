"""The confidential workload pod (the fine-tune), built offline and validated against the
Kubernetes schema."""

from __future__ import annotations

import base64
import json

import jinja2
import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from coco_ai.digest import Digest
from coco_ai.guest.initdata import INITDATA_ANNOTATION, Initdata, build_initdata
from coco_ai.kbs.resource_path import parse_resource_uri
from coco_ai.run_keys import DEFAULT_ROOT
from coco_ai.runs import RunInput, RunRefs, RunRefsError
from coco_ai_airflow.execution.kubernetes import PodSpecError
from coco_ai_airflow.workload import ConfidentialWorkloadOperator

IMAGE = "registry.example/coco-ai/finetune@sha256:" + "ab" * 32
KUBERNETES = "1.34.0"


def _plain_jinja():
    # pod specs are not HTML: no autoescaping, as Airflow renders them
    return jinja2.Environment(autoescape=False)  # noqa: S701


def _run_refs(run_id: str = "run-7") -> dict:
    """Key release's XCom for a fine-tune run (what the pod operator receives)."""
    return RunRefs.plan(
        workload="finetune",
        module="coco_ai.workloads.finetune",
        run_id=run_id,
        image=IMAGE,
        run_key_root=DEFAULT_ROOT,
        inputs={
            "dataset": RunInput(
                "s3://datasets/support-v1.enc",
                Digest("sha256", "11" * 32),
                parse_resource_uri("kbs:///coco-ai/dataset-key/support-v1"),
            ),
            "base_model": RunInput("/models/smollm2", Digest("sha256", "22" * 32)),
        },
        staging_root="s3://staging/runs",
        kbs_url="https://kbs.example:8080",
        kbs_ca_pem=None,
    ).to_xcom()


def _operator(run_refs: dict | None = None, **kwargs) -> ConfidentialWorkloadOperator:
    args = {
        "task_id": "confidential_finetune",
        "run_refs": run_refs or _run_refs(),
        "tee": "{{ params.tee }}",
        "gpu_count": "{{ params.gpu_count }}",
        "settings": {"lora": {"r": 4}, "training": {"epochs": 2, "max_steps": None}},
        "image": IMAGE,
        "namespace": "confidential-ai",
        "execution_mode": "kubernetes",
        **kwargs,
    }
    return ConfidentialWorkloadOperator(**args)


def _manifest(op: ConfidentialWorkloadOperator, tee: str = "tdx", gpus: int = 1) -> dict:
    op.render_template_fields(
        {"params": {"tee": tee, "gpu_count": gpus}},
        jinja_env=jinja2.Environment(autoescape=False),  # noqa: S701 - not HTML
    )
    pod = op.build_pod_request_obj(dry_run=True)
    manifest = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    return manifest


@pytest.mark.parametrize(
    ("tee", "runtime_class"),
    [("tdx", "kata-qemu-nvidia-gpu-tdx"), ("snp", "kata-qemu-nvidia-gpu-snp")],
)
def test_pod_is_a_valid_confidential_gpu_pod(tee, runtime_class):
    manifest = _manifest(_operator(), tee=tee, gpus=2)
    spec = manifest["spec"]
    assert spec["runtimeClassName"] == runtime_class
    assert spec["activeDeadlineSeconds"] == 6 * 3600
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/pgpu": "2"}
    assert container["image"] == IMAGE


def test_annotation_decodes_to_the_runs_initdata_with_the_pinned_digest():
    refs = _run_refs("run-42")
    manifest = _manifest(_operator(refs))
    annotation = manifest["metadata"]["annotations"][INITDATA_ANNOTATION]
    initdata = Initdata.from_annotation(annotation)
    assert f"sha384:{initdata.digest().hex()}" == refs["initdata_digest"]
    assert initdata.claim("io.coco-ai.run-id") == "run-42"
    assert initdata.claim("io.coco-ai.workload") == "finetune"
    assert initdata.claim("io.coco-ai.image-digest") == IMAGE.partition("@")[2]
    assert initdata.claim("io.coco-ai.dataset-key") == "kbs:///coco-ai/dataset-key/support-v1"


def test_workload_config_in_the_pod_holds_references_only():
    manifest = _manifest(_operator())
    (container,) = manifest["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    assert "python -m coco_ai.workloads.finetune --config" in container["args"][0]
    config = json.loads(container["args"][1])
    assert config["checkpoint_key_uri"].startswith("kbs:///")
    assert config["dataset"] == {
        "uri": "s3://datasets/support-v1.enc",
        "key_uri": "kbs:///coco-ai/dataset-key/support-v1",
    }
    assert config["staging_uri"] == "s3://staging/runs/run-7"
    assert config["lora"]["r"] == 4 and config["training"]["epochs"] == 2
    # no env at all: keys come from the confidential data hub inside the TEE
    assert not container.get("env") and not container.get("envFrom")


def test_the_runs_agent_policy_admits_exactly_the_pods_process():
    """The argv, environment and mounts the pod yields, shaped as the Kata agent receives them,
    pass the agent policy in the pod's own initdata; another config passes (it is data), a
    changed launch or an extra env var does not."""
    from coco_ai.guest.agent_policy import WORKLOAD_IMAGE_ENV
    from tests.guest.test_agent_policy import KUBERNETES_ENV, create_container, decision

    manifest = _manifest(_operator())
    annotation = manifest["metadata"]["annotations"][INITDATA_ANNOTATION]
    policy = Initdata.from_annotation(annotation).claim("policy.rego")
    (container,) = manifest["spec"]["containers"]
    argv = container["command"] + container["args"]  # containerd: command, then args
    request = create_container(IMAGE, args=argv, env=[*WORKLOAD_IMAGE_ENV, *KUBERNETES_ENV])
    assert decision(policy, "CreateContainerRequest", request)
    request["OCI"]["Process"]["Args"] = [*argv[:3], json.dumps({"run_id": "other"})]
    assert decision(policy, "CreateContainerRequest", request)
    request["OCI"]["Process"]["Args"] = [
        *argv[:2],
        argv[2].replace("exec python", "python"),
        argv[3],
    ]
    assert not decision(policy, "CreateContainerRequest", request)
    preload = create_container(IMAGE, args=argv, env=[*WORKLOAD_IMAGE_ENV, "LD_PRELOAD=/x.so"])
    assert not decision(policy, "CreateContainerRequest", preload)


def test_the_pod_mounts_no_token_and_gets_no_service_links():
    """Kubernetes would otherwise add a service-account volume and every service's variables,
    which the agent policy refuses: the pod would never start."""
    spec = _manifest(_operator())["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert not spec.get("volumes") and not spec.get("initContainers")
    (container,) = spec["containers"]
    assert not container.get("volumeMounts")
    # A DAG asking for the token does not get it either.
    asked = _operator(service_account_name="default", automount_service_account_token=True)
    assert _manifest(asked)["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env_vars": {"PYTHONPATH": "/mnt/code"}}, "env vars"),
        ({"env_vars": {"LD_PRELOAD": "/mnt/hook.so"}}, "env vars"),
        (
            {
                "volumes": [k8s.V1Volume(name="code", empty_dir=k8s.V1EmptyDirVolumeSource())],
                "volume_mounts": [
                    k8s.V1VolumeMount(name="code", mount_path="/opt/venv/lib/python3.11")
                ],
            },
            "volumes",
        ),
    ],
    ids=["pythonpath", "ld-preload", "volume"],
)
def test_what_the_agent_policy_would_refuse_is_refused_before_a_pod_exists(kwargs, message):
    with pytest.raises(PodSpecError, match=message):
        _manifest(_operator(**kwargs))


def test_no_gpu_means_no_pgpu_limit():
    manifest = _manifest(_operator(), gpus=0)
    assert "nvidia.com/pgpu" not in (
        manifest["spec"]["containers"][0].get("resources", {}).get("limits") or {}
    )


@pytest.mark.parametrize(
    "image",
    [
        "registry.example/coco-ai/finetune:1.0",
        "registry.example/coco-ai/finetune@sha256:" + "ab" * 31,
        "registry.example/coco-ai/finetune:latest@sha512:" + "ab" * 64,
    ],
)
def test_image_must_be_pinned_by_digest(image):
    with pytest.raises(PodSpecError, match="pinned by digest"):
        _manifest(_operator(image=image))


def test_image_must_be_the_one_in_the_initdata():
    other = "registry.example/coco-ai/finetune@sha256:" + "cd" * 32
    with pytest.raises(PodSpecError, match="not the image"):
        _manifest(_operator(image=other))


def test_sample_tee_has_no_confidential_runtime_class():
    with pytest.raises(PodSpecError, match="'sample' runs only in local mode"):
        _manifest(_operator(), tee="sample")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"env_vars": {"DATASET_KEY": "x"}},
        {"env_vars": {"HF_TOKEN": "x"}},
        {"secrets": [Secret("env", "KBS_TOKEN", "kbs-token", "token")]},
        {"configmaps": ["settings"]},
    ],
)
def test_no_secret_channel_into_the_pod(kwargs):
    with pytest.raises(PodSpecError):
        _manifest(_operator(**kwargs))


def test_tampered_initdata_annotation_is_refused():
    refs = _run_refs()
    other = build_initdata("https://kbs.example:8080", None, {"io.coco-ai.run-id": "someone-else"})
    refs["initdata_annotation"] = other.annotation()
    with pytest.raises(RunRefsError, match="differs from the pinned"):
        _manifest(_operator(refs))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", "registry.example/coco-ai/finetune:latest", "pinned by digest"),
        ("run_key_root_uri", "kbs:///coco-ai/../x", r"\.\."),
        ("initdata_digest", "sha256:" + "00" * 32, "sha384"),
        ("workload", "Fine Tune", "workload"),
        ("inputs", {"dataset": {"uri": "s3://d", "digest": "md5:00"}}, "dataset"),
    ],
)
def test_malformed_run_references_are_refused_before_a_pod_exists(field, value, message):
    refs = _run_refs()
    refs[field] = value
    with pytest.raises(RunRefsError, match=message):
        _manifest(_operator(refs))


def test_run_references_must_come_from_key_release():
    with pytest.raises(RunRefsError, match="lack"):
        _manifest(_operator({"run_id": "run-7"}))


def test_bad_workload_settings_fail_before_any_pod_exists():
    from coco_ai.workloads.finetune.config import ConfigError

    op = _operator(settings={"lora": {"r": 0}})
    with pytest.raises(ConfigError, match=r"lora\.r"):
        _manifest(op)


def test_annotation_is_standard_base64_gzip():
    manifest = _manifest(_operator())
    raw = base64.b64decode(manifest["metadata"]["annotations"][INITDATA_ANNOTATION], validate=True)
    assert raw[:2] == b"\x1f\x8b"


def test_the_pod_is_labelled_for_the_network_policies_and_runs_as_the_workload_account():
    manifest = _manifest(_operator(labels={"team": "ml"}))
    labels = manifest["metadata"]["labels"]
    assert labels["coco-ai.io/confidential"] == "true"
    assert labels["coco-ai.io/workload"] == "finetune"
    assert labels["team"] == "ml" and "coco-ai.io/fl-role" not in labels
    assert manifest["spec"]["serviceAccountName"] == "coco-ai-workload"
    with pytest.raises(PodSpecError, match=r"coco-ai\.io/confidential are the operator's"):
        _manifest(_operator(labels={"coco-ai.io/confidential": "false"}))


def _party_refs(role: str, participant_id: str) -> dict:
    """Key release's XCom for one party of a federated run."""
    from coco_ai.federated.identity import FederationIdentity

    inputs = {"base_model": RunInput("/models/smollm2", Digest("sha256", "22" * 32))}
    if role == "participant":
        inputs["dataset"] = RunInput(
            f"s3://datasets/{participant_id}.enc",
            Digest("sha256", "33" * 32),
            parse_resource_uri(f"kbs:///owner-{participant_id}/dataset/v1"),
        )
    return RunRefs.plan(
        workload=f"fl_{role}",
        module="coco_ai.workloads.federated",
        run_id="fl-run-3",
        image=IMAGE,
        run_key_root=DEFAULT_ROOT,
        inputs=inputs,
        staging_root="s3://staging/runs",
        kbs_url="https://kbs.example:8080",
        kbs_ca_pem=None,
        party_claims=FederationIdentity("northwind", role, participant_id).claims(),
    ).to_xcom()


FL_SETTINGS = {
    "party": {
        "aggregator_id": "aggregator",
        "participants": ["dept-a", "dept-b"],
        "server_host": "coco-ai-fl-aggregator.confidential-ai.svc",
        "server_port": 8002,
    },
    "trust": {"anchor_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
    "min_participants": 2,
}


@pytest.mark.parametrize(
    ("role", "participant_id"), [("aggregator", "aggregator"), ("participant", "dept-b")]
)
def test_each_federation_party_is_its_own_confidential_pod(role, participant_id):
    """Kubernetes mode of the federated DAG: one Kata pod per party, each with its own initdata
    (the run's claims and its party's), labelled with its role for the Service and the
    federation's NetworkPolicies, its config naming itself and the aggregator's Service."""
    refs = _party_refs(role, participant_id)
    op = _operator(refs, task_id=role, settings=FL_SETTINGS)
    manifest = _manifest(op)
    assert manifest["metadata"]["labels"]["coco-ai.io/fl-role"] == role
    assert manifest["metadata"]["labels"]["coco-ai.io/workload"] == f"fl_{role}"
    initdata = Initdata.from_annotation(manifest["metadata"]["annotations"][INITDATA_ANNOTATION])
    assert f"sha384:{initdata.digest().hex()}" == refs["initdata_digest"]
    assert initdata.claim("io.coco-ai.fl-federation") == "northwind"
    assert initdata.claim("io.coco-ai.fl-role") == role
    assert initdata.claim("io.coco-ai.fl-participant") == participant_id
    assert initdata.claim("io.coco-ai.run-id") == "fl-run-3"
    (container,) = manifest["spec"]["containers"]
    assert "python -m coco_ai.workloads.federated --config" in container["args"][0]
    config = json.loads(container["args"][1])
    assert config["party"]["participant_id"] == participant_id
    assert config["party"]["server_host"] == "coco-ai-fl-aggregator.confidential-ai.svc"
    assert ("dataset" in config) == (role == "participant")
    assert not container.get("env") and not manifest["spec"].get("volumes")
