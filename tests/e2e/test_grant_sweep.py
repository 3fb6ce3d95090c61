"""The grant sweep DAG revokes a grant that a run left behind when its own revocation failed."""

from __future__ import annotations

import time

import pytest

from coco_ai.devstack import DAG_ID
from coco_ai.run_keys import Grant, grant_path
from coco_ai_airflow._settings import coco_run_id

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

SWEEP_DAG = "coco_ai_grant_sweep"


def _finish(client, dag_id: str, run_id: str, timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := client.dag_run(dag_id, run_id)["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"{dag_id} run {run_id} still {state}"
        time.sleep(1)
    return state


def test_sweep_revokes_the_grant_of_a_run_whose_revocation_failed(e2e_stack):
    client = e2e_stack.info.client()
    try:
        # A run that ends quickly: key release fails on a data set that does not exist.
        dag_run_id = client.trigger(
            DAG_ID, {"dataset_uri": "file:///nonexistent/northwind.enc"}, note="sweep victim"
        )["dag_run_id"]
        assert _finish(client, DAG_ID, dag_run_id) == "failed"
        # What a crash leaves (simulated): the grant in Trustee and revoke_keys failed.
        run_id = coco_run_id(DAG_ID, dag_run_id)
        path = grant_path(run_id)
        with e2e_stack.admin() as admin:
            admin.set_resource(path, Grant(run_id, _some_digest()).to_bytes())
        client.request(
            "PATCH",
            f"/api/v2/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances/revoke_keys",
            json={"new_state": "failed"},
        )
        assert e2e_stack.resource(path.url_path()) is not None

        sweep_run = client.trigger(SWEEP_DAG, {}, note="sweep")["dag_run_id"]
        assert _finish(client, SWEEP_DAG, sweep_run) == "success"
        swept = client.xcom(SWEEP_DAG, sweep_run, "sweep_grants")["swept"]
        assert path.uri() in swept
        assert e2e_stack.resource(path.url_path()) is None
    finally:
        client.close()


def _some_digest():
    from coco_ai.digest import Digest

    return Digest("sha384", "ab" * 48)
