"""Scheduling by data: a new data-set version published as an Asset event starts a run on it."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from coco_ai.devstack import DAG_ID

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_new_dataset_version_event_triggers_a_run_on_that_version(e2e_stack, follow):
    from coco_ai.crypto import encrypt_blob
    from coco_ai.workloads.dataset import DATASET_AAD, generate_examples, to_jsonl

    # the data owner encrypts version 2 under a new key that only Trustee receives
    key_path = "coco-ai/dataset-key/demo-v2"
    key = secrets.token_bytes(32)
    blob = encrypt_blob(
        to_jsonl(generate_examples(seed=7)),
        kek=key,
        key_uri=f"kbs:///{key_path}",
        aad_context=DATASET_AAD,
    )
    with e2e_stack.admin() as admin:
        admin.set_resource(key_path, key)
    del key
    store = Path(e2e_stack.info.dataset_uri.removeprefix("file://")).parent
    (store / "demo-v2.enc").write_bytes(blob)
    dataset_uri = f"file://{store / 'demo-v2.enc'}"
    # ... and approves it: promotion takes approvals from the owner's signed policy only
    assert e2e_stack.info.approve_datasets(dataset_uri) >= 2

    client = e2e_stack.info.client()
    try:
        (asset,) = client.request(
            "GET", "/api/v2/assets", params={"uri_pattern": "x-coco-ai://datasets/training"}
        )["assets"]
        # retried on the api-server's transient "Database error" (SQLite locked under load:
        # the event's transaction rolled back); the test follows the first asset-triggered run
        client.request(
            "POST",
            "/api/v2/assets/events",
            retry=True,
            json={
                "asset_id": asset["id"],
                "extra": {"dataset_uri": dataset_uri, "dataset_key_uri": f"kbs:///{key_path}"},
            },
        )
        deadline = time.monotonic() + 120
        runs: list = []
        while not runs:
            assert time.monotonic() < deadline, "no asset-triggered run was created"
            time.sleep(1)
            runs = [
                r
                for r in client.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
                if r["run_type"] == "asset_triggered"
            ]
    finally:
        client.close()

    run = follow(runs[0]["dag_run_id"], timeout_s=400)
    assert run.state == "success", {t: ti["state"] for t, ti in run.tasks.items()}
    assert run.refs["inputs"]["dataset"]["uri"] == dataset_uri
    assert run.refs["inputs"]["dataset"]["key_uri"] == f"kbs:///{key_path}"
