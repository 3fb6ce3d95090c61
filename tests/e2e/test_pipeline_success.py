"""A run triggered with the official REST client reaches success with a promoted, signed model,
and no byte of any key reaches Airflow's DB, logs, XCom, rendered templates, a pod spec or the
environment of its processes."""

from __future__ import annotations

import json
from pathlib import Path

import airflow_client.client as ac
import jinja2
import pytest
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.models import TriggerDAGRunPostBody
from conftest import (  # tests/e2e is on sys.path (rootdir-relative test modules)
    find_secrets,
    log_files,
    metadata_db_findings,
)
from cryptography.hazmat.primitives import serialization

from coco_ai.devstack import DAG_ID
from coco_ai.devstack.processes import descendants
from coco_ai.runs import RunRefs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def successful_run(e2e_stack, follow, quick_run):
    before = e2e_stack.registry_versions()
    cfg = ac.Configuration(host=e2e_stack.info.api_url, access_token=e2e_stack.token())
    with ac.ApiClient(cfg) as api:
        run = DagRunApi(api).trigger_dag_run(
            DAG_ID,
            TriggerDAGRunPostBody(logical_date=None, conf=quick_run, note="e2e: REST client"),
        )
    assert run.state.value == "queued"
    followed = follow(run.dag_run_id)
    return followed, before


def _plain_jinja():
    # pod specs are not HTML: no autoescaping, as Airflow renders them
    return jinja2.Environment(autoescape=False)  # noqa: S701


def test_run_succeeds_every_task(successful_run):
    run, _ = successful_run
    states = {t: ti["state"] for t, ti in run.tasks.items()}
    assert run.state == "success", states
    assert set(states.values()) == {"success"}, states


def test_model_is_promoted_signed_and_aliased(e2e_stack, successful_run, tmp_path):
    from coco_ai.promotion import verify_model_signature, version_by_alias

    run, before = successful_run
    client = e2e_stack.info.client()
    promoted = client.xcom(DAG_ID, run.run_id, "attested_promotion")
    client.close()
    assert e2e_stack.registry_versions() == before + 1
    served = version_by_alias(
        e2e_stack.info.registered_model_name, "serving", registry_uri=e2e_stack.info.registry_uri
    )
    assert served.version == promoted["version"]
    assert served.tags["coco-ai.manifest_digest"] == promoted["manifest_digest"]
    # the OpenSSF model signature verifies with the organisation's public key
    private = serialization.load_pem_private_key(
        (e2e_stack.root / "keys" / "model-signing.pem").read_bytes(), password=None
    )
    public = tmp_path / "model-signing.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signature = verify_model_signature(promoted["checkpoint_uri"], public_key_path=public)
    assert signature.signature_digest == promoted["signature_digest"]
    # the attestation that let it through: sample CPU and one sample GPU, both affirming
    att = promoted["attestation"]
    assert att["submods"] == {"cpu0": "affirming", "gpu0": "affirming"}
    assert att["run_id"] == run.refs["run_id"]


def test_asset_event_carries_references_only(e2e_stack, successful_run):
    run, _ = successful_run
    client = e2e_stack.info.client()
    events = client.request("GET", "/api/v2/assets/events", params={"source_run_id": run.run_id})[
        "asset_events"
    ]
    client.close()
    (event,) = [e for e in events if e["source_task_id"] == "attested_promotion"]
    assert set(event["extra"]) >= {"model_name", "version", "manifest_digest", "checkpoint_uri"}


def test_run_grant_is_revoked(e2e_stack, successful_run):
    run, _ = successful_run
    assert run.checkpoint_key is not None and len(run.checkpoint_key) == 32
    assert e2e_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None


# ---- secret hygiene -----------------------------------------------------------------------


def _tee_private_forms(pem: bytes) -> dict[str, bytes]:
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return {"tee private key (PKCS#8 DER)": der, "tee private scalar": scalar}


@pytest.fixture(scope="module")
def secrets_of_the_run(e2e_stack, successful_run) -> dict[str, bytes]:
    run, _ = successful_run
    pem_file = e2e_stack.tee_key_dir / f"{run.refs['run_id']}.pem"
    assert pem_file.exists(), "the recorded emulator did not run for this run"
    secrets = {
        "data-set key": e2e_stack.dataset_key(),
        "checkpoint key": run.checkpoint_key,
        "run-key root": e2e_stack.run_key_root(),
        **_tee_private_forms(pem_file.read_bytes()),
    }
    assert all(isinstance(v, bytes) and len(v) >= 32 for v in secrets.values())
    return secrets


def test_no_secret_in_any_table_of_the_metadata_db(e2e_stack, secrets_of_the_run):
    found, rows_seen = metadata_db_findings(e2e_stack, secrets_of_the_run)
    assert rows_seen > 50
    assert found == []


def test_no_secret_in_task_logs_or_service_logs(e2e_stack, successful_run, secrets_of_the_run):
    task_logs, service_logs = log_files(e2e_stack)
    assert any("confidential_finetune" in str(p) for p in task_logs)
    finetune_log = "\n".join(
        p.read_text(errors="replace")
        for p in task_logs
        if "task_id=confidential_finetune" in str(p)
    )
    assert "[workload]" in finetune_log and "key released" in finetune_log  # logs are streamed
    found = [
        f"{p}: {name}"
        for p in task_logs + service_logs
        for name in find_secrets(p.read_bytes(), secrets_of_the_run)
    ]
    assert found == []


def test_no_secret_in_xcom_or_rendered_templates_via_api(
    e2e_stack, successful_run, secrets_of_the_run
):
    run, _ = successful_run
    client = e2e_stack.info.client()
    payload = []
    for task in run.tasks:
        payload.append(client.xcom(DAG_ID, run.run_id, task))
        ti = client.request(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run.run_id}/taskInstances/{task}"
        )
        payload.append(ti.get("rendered_fields"))
    client.close()
    blob = json.dumps(payload).encode()
    assert b"kbs:///coco-ai-run/checkpoint-key/" in blob  # references do travel
    assert find_secrets(blob, secrets_of_the_run) == []


def test_no_secret_in_the_pod_spec_of_this_run(e2e_stack, successful_run, secrets_of_the_run):
    """The same run's references, built into the Kubernetes pod the cluster mode would submit."""
    from kubernetes.client import ApiClient

    from coco_ai_airflow.workload import ConfidentialWorkloadOperator

    run, _ = successful_run
    op = ConfidentialWorkloadOperator(
        task_id="confidential_finetune",
        run_refs=run.refs,
        tee="tdx",
        gpu_count=1,
        settings={"lora": {"r": 4}, "training": {"epochs": 1}},
        image=run.refs["image"],
        namespace="confidential-ai",
        execution_mode="kubernetes",
    )
    op.render_template_fields({}, jinja_env=_plain_jinja())
    manifest = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    assert find_secrets(json.dumps(manifest).encode(), secrets_of_the_run) == []


def test_no_secret_in_the_environment_of_airflow_processes(e2e_stack, secrets_of_the_run):
    pids = set()
    for service in e2e_stack.info.services:
        if service.name.startswith("airflow-"):
            assert service.alive(), service.name
            pids |= {service.pid, *descendants(service.pid)}
    assert len(pids) >= 4
    found, readable = [], 0
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if b"=" not in environ:  # setproctitle reused the environ area for the process title
            continue
        readable += 1
        assert b"AIRFLOW_HOME=" in environ
        found += [f"{pid}: {n}" for n in find_secrets(environ, secrets_of_the_run)]
        # nor any credential of the key broker
        assert b"BEGIN PRIVATE KEY" not in environ
    assert readable >= 4
    assert found == []
