"""What an operator does from the UI or REST mid-run: the confidential work stops and the run's
key is revoked, whatever Airflow does with the remaining tasks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coco_ai.devstack import DAG_ID
from coco_ai.runs import RunRefs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def _workload_pids(run_id: str) -> list[int]:
    """The processes of this run's local workload and its guest emulator (argv names the run's
    work directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"coco-ai-local/{run_id}/".encode() in arg for arg in argv):
            pids.append(int(proc.name))
    return pids


def _wait(what: str, condition, timeout_s: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"{what} within {timeout_s:.0f}s"
        time.sleep(0.5)
    return time.monotonic() - start


def test_run_marked_failed_mid_finetune_stops_the_workload_and_revokes_the_key(e2e_stack):
    client = e2e_stack.info.client()
    try:
        dag_run_id = client.trigger(DAG_ID, {"epochs": 3}, note="marked failed mid fine-tune")[
            "dag_run_id"
        ]

        def finetune_running() -> bool:
            tis = {t["task_id"]: t for t in client.task_instances(DAG_ID, dag_run_id)}
            return (tis.get("confidential_finetune") or {}).get("state") == "running"

        _wait("the fine-tune running", finetune_running, 240)
        refs = RunRefs.from_xcom(client.xcom(DAG_ID, dag_run_id, "key_release"))
        _wait("the workload process", lambda: _workload_pids(refs.run_id), 60)
        assert e2e_stack.resource(refs.grant.url_path()) is not None

        client.request(
            "PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{dag_run_id}", json={"state": "failed"}
        )
        stopped_s = _wait("the workload stopped", lambda: not _workload_pids(refs.run_id), 90)
        revoked_s = _wait(
            "the grant revoked",
            lambda: e2e_stack.resource(refs.grant.url_path()) is None,
            120,
        )
        print(f"workload stopped {stopped_s:.1f}s, grant revoked {revoked_s:.1f}s after marking")
        # Airflow (apache/airflow#45530) fails the running task, skips the tasks not yet run
        # but still runs the teardown (revoke_keys); the run is then re-evaluated from its
        # leaves, all skipped, and ends "success" although nothing was promoted: what matters
        # is in the task states.
        _wait(
            "the run final",
            lambda: client.dag_run(DAG_ID, dag_run_id)["state"] in ("success", "failed"),
            120,
        )
        states = {t["task_id"]: t["state"] for t in client.task_instances(DAG_ID, dag_run_id)}
        assert states["confidential_finetune"] == "failed", states
        assert states["encrypted_checkpoint_upload"] == "skipped", states
        assert states["attested_promotion"] == "skipped", states
        assert states["revoke_keys"] == "success", states
        assert refs.grant.uri() in client.xcom(DAG_ID, dag_run_id, "revoke_keys")["revoked"]
        # nothing of the stopped run reached the checkpoint store or the registry
        checkpoints = Path(e2e_stack.info.checkpoint_store_uri.removeprefix("file://"))
        assert not (checkpoints / refs.run_id).exists()
    finally:
        client.close()
