"""`confidential_rag_index` on the real embedded stack: a REST-triggered run to a promoted index
that `coco-ai verify` verifies, a run started by a new repository version's Asset event, a
tampered repository that fails closed, and no document, chunk, question, answer or key of the
runs anywhere Airflow keeps anything."""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import pytest
from conftest import (  # tests/e2e is on sys.path (rootdir-relative test modules)
    find_secrets,
    log_files,
    metadata_db_findings,
)

from coco_ai.devstack.stack import DOCUMENTS_KEY_PATH, RAG_DAG_ID
from coco_ai.runs import RunRefs
from coco_ai.workloads.rag_index.corpus import generate_repository, revise_repository, to_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
PIPELINE = (
    "served_index",
    "attestation_gate",
    "key_release",
    "confidential_rag_index",
    "encrypted_checkpoint_upload",
    "attested_promotion",
    "revoke_keys",
)


def _index_versions(stack) -> int:
    from coco_ai.promotion import model_versions

    info = stack.info
    return len(model_versions(info.registered_index_name, registry_uri=info.registry_uri))


def _publish(stack, name: str, plaintext: bytes, key_path: str) -> str:
    """The data owner's step: encrypt a repository version under a new key only Trustee gets."""
    from coco_ai.crypto import encrypt_blob
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

    key = secrets.token_bytes(32)
    blob = encrypt_blob(
        plaintext, kek=key, key_uri=f"kbs:///{key_path}", aad_context=REPOSITORY_AAD
    )
    with stack.admin() as admin:
        admin.set_resource(key_path, key)
    del key
    path = Path(stack.info.documents_uri.removeprefix("file://")).with_name(name)
    path.write_bytes(blob)
    return f"file://{path}"


def _trigger(stack, follow, conf: dict, note: str):
    client = stack.info.client()
    try:
        run = client.trigger(RAG_DAG_ID, conf, note=note)
    finally:
        client.close()
    return follow(run["dag_run_id"], dag_id=RAG_DAG_ID, timeout_s=400)


def _states(run) -> dict[str, str]:
    return {t: ti["state"] for t, ti in run.tasks.items()}


@pytest.fixture(scope="module")
def rest_run(e2e_stack, follow):
    before = _index_versions(e2e_stack)
    run = _trigger(e2e_stack, follow, {}, "e2e: rag REST")
    return run, before


def test_a_rest_triggered_run_promotes_an_index_that_coco_ai_verify_verifies(e2e_stack, rest_run):
    run, before = rest_run
    assert run.state == "success", _states(run)
    assert set(_states(run)) == set(PIPELINE) and set(_states(run).values()) == {"success"}
    info = e2e_stack.info
    client = info.client()
    promoted = client.xcom(RAG_DAG_ID, run.run_id, "attested_promotion")
    client.close()
    assert promoted["workload"] == "rag_index"
    assert promoted["model_name"] == info.registered_index_name
    assert _index_versions(e2e_stack) == before + 1
    metrics = promoted["metrics"]
    assert metrics["ann_recall_at_10"] >= 0.95 and metrics["documents"] == 30
    # the index's key was this run's, and the run's grant is gone
    assert run.refs["workload"] == "rag_index"
    assert e2e_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None
    # a third party with the owner's public key alone: coco-ai verify on the registry entry
    verdict = e2e_stack.third_party_verify(info.registered_index_name)
    assert verdict["verdict"] == "verified"
    assert verdict["checkpoint_uri"] == promoted["checkpoint_uri"]


def test_the_promoted_index_asset_event_carries_references_only(e2e_stack, rest_run):
    run, _ = rest_run
    client = e2e_stack.info.client()
    events = client.request("GET", "/api/v2/assets/events", params={"source_run_id": run.run_id})[
        "asset_events"
    ]
    client.close()
    (event,) = [e for e in events if e["source_task_id"] == "attested_promotion"]
    assert event["uri"] == "x-coco-ai://indexes/rag"
    assert event["extra"]["workload"] == "rag_index"
    assert set(event["extra"]) <= {
        "model_name",
        "workload",
        "version",
        "alias",
        "run_id",
        "checkpoint_uri",
        "manifest_digest",
        "token_digest",
        "signature_uri",
        "signature_digest",
        "record_uri",
        "owner_policy_digest",
    }


def test_a_new_repository_version_event_indexes_only_what_changed(e2e_stack, follow, rest_run):
    # the next version of the stack's repository: one document edited, one removed, one added
    v2 = revise_repository(changed=1, removed=1, added=1)
    key_path = "coco-ai/rag-key/northwind-docs-v2"
    documents_uri = _publish(e2e_stack, "northwind-docs-v2.enc", to_jsonl(v2), key_path)
    # ... and approves it: promotion takes approvals from the owner's signed policy only
    assert e2e_stack.info.approve_documents(documents_uri) >= 2
    client = e2e_stack.info.client()
    try:
        (asset,) = client.request(
            "GET", "/api/v2/assets", params={"uri_pattern": "x-coco-ai://datasets/rag-documents"}
        )["assets"]
        client.request(
            "POST",
            "/api/v2/assets/events",
            json={
                "asset_id": asset["id"],
                "extra": {
                    "documents_uri": documents_uri,
                    "documents_key_uri": f"kbs:///{key_path}",
                },
            },
        )
        deadline = time.monotonic() + 120
        runs: list = []
        while not runs:
            assert time.monotonic() < deadline, "no asset-triggered run was created"
            time.sleep(1)
            runs = [
                r
                for r in client.request("GET", f"/api/v2/dags/{RAG_DAG_ID}/dagRuns")["dag_runs"]
                if r["run_type"] == "asset_triggered"
            ]
    finally:
        client.close()
    run = follow(runs[0]["dag_run_id"], dag_id=RAG_DAG_ID, timeout_s=400)
    assert run.state == "success", _states(run)
    assert run.refs["inputs"]["documents"]["uri"] == documents_uri
    assert run.refs["inputs"]["documents"]["key_uri"] == f"kbs:///{key_path}"
    # built on the served index (the REST run's, same repository lineage and settings)
    client = e2e_stack.info.client()
    try:
        served = client.xcom(RAG_DAG_ID, run.run_id, "served_index")
        metrics = client.xcom(RAG_DAG_ID, run.run_id, "attested_promotion")["metrics"]
    finally:
        client.close()
    assert served is not None and set(served) == {"uri", "run_id", "manifest_digest"}
    assert served["run_id"] != run.refs["run_id"]
    assert metrics["documents"] == len(v2.documents)
    assert (metrics["documents_reused"], metrics["documents_changed"]) == (len(v2.documents) - 2, 1)
    assert (metrics["documents_added"], metrics["documents_removed"]) == (1, 1)
    assert 0 < metrics["chunks_embedded"] < metrics["chunks"]


def test_a_tampered_repository_fails_closed(e2e_stack, follow, rest_run):
    served = _index_versions(e2e_stack)
    blob = bytearray(Path(e2e_stack.info.documents_uri.removeprefix("file://")).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    tampered = Path(e2e_stack.info.documents_uri.removeprefix("file://")).with_name("tampered.enc")
    tampered.write_bytes(bytes(blob))
    run = _trigger(e2e_stack, follow, {"documents_uri": f"file://{tampered}"}, "e2e: tampered")
    states = _states(run)
    assert run.state == "failed", states
    assert states["confidential_rag_index"] == "failed"
    assert states["attested_promotion"] == "upstream_failed"
    assert states["revoke_keys"] == "success"
    assert e2e_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None
    assert _index_versions(e2e_stack) == served  # nothing promoted
    staging = Path(run.refs["staging_uri"].removeprefix("file://"))  # nothing left the TEE
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))


# ---- secret hygiene: the documents, their chunks, the questions and answers, the keys ----------


@pytest.fixture(scope="module")
def confidential_text(e2e_stack, rest_run) -> dict[str, bytes]:
    """What the data owner's repository holds (the embedded default generates it): every
    sentence of every document (each chunk is a run of them), every question and answer; and
    the keys of the REST run."""
    run, _ = rest_run
    repository = generate_repository()
    found: dict[str, bytes] = {}
    for doc in repository.documents:
        for i, sentence in enumerate(re.split(r"(?<=[.!?])\s+", doc.text)):
            if len(sentence) >= 24:  # short fragments are not distinctive
                found[f"document {doc.id} sentence {i}"] = sentence.encode()
    for i, q in enumerate(repository.questions):
        found[f"question {i}"] = q.question.encode()
        found[f"answer {i}"] = q.answer.encode()
    found["repository key"] = e2e_stack.resource(DOCUMENTS_KEY_PATH)
    found["index key"] = run.checkpoint_key
    assert len(found) > 100 and all(found.values())
    return found


def test_no_document_chunk_question_or_key_in_the_metadata_db(e2e_stack, confidential_text):
    found, rows_seen = metadata_db_findings(e2e_stack, confidential_text)
    assert rows_seen > 50
    assert found == []


def test_no_document_chunk_question_or_key_in_any_log(e2e_stack, rest_run, confidential_text):
    run, _ = rest_run
    task_logs, service_logs = log_files(e2e_stack)
    # the REST run's indexing log (the directory order of the runs' logs is the file system's)
    (indexing,) = [
        p
        for p in task_logs
        if f"run_id={run.run_id}/" in str(p) and "task_id=confidential_rag_index" in str(p)
    ]
    assert "[rag-index] retrieval: hit rate@1" in indexing.read_text()  # streamed
    found = [
        f"{p}: {name}"
        for p in task_logs + service_logs
        for name in find_secrets(p.read_bytes(), confidential_text)
    ]
    assert found == []


def test_no_document_chunk_question_or_key_in_xcom_or_rendered_fields(
    e2e_stack, rest_run, confidential_text
):
    run, _ = rest_run
    client = e2e_stack.info.client()
    payload = []
    for task in run.tasks:
        payload.append(client.xcom(RAG_DAG_ID, run.run_id, task))
        ti = client.request(
            "GET", f"/api/v2/dags/{RAG_DAG_ID}/dagRuns/{run.run_id}/taskInstances/{task}"
        )
        payload.append(ti.get("rendered_fields"))
    client.close()
    blob = json.dumps(payload).encode()
    assert b"kbs:///coco-ai/rag-key/" in blob  # references do travel
    assert find_secrets(blob, confidential_text) == []
