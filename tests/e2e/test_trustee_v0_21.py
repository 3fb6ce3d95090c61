"""The whole pipeline against the stand-in emulating Trustee v0.21.0 (the session's main stack
emulates v0.20.0, the version the compose stack pins): bearer admin tokens with a role claim,
/healthz, standard-base64 x5c. One run, from trigger to revoked grant."""

from __future__ import annotations

import json

import pytest

from coco_ai.devstack import DAG_ID
from coco_ai.runs import RunRefs
from tests.quick_runs import approve_quick_runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def test_pipeline_succeeds_against_trustee_v0_21(v021_stack, follow_v021):
    client = v021_stack.info.client()
    try:
        connection = client.request("GET", "/api/v2/connections/trustee_default")
        conf = approve_quick_runs(v021_stack.info)
        run_id = client.trigger(DAG_ID, conf, note="e2e: v0.21.0")["dag_run_id"]
    finally:
        client.close()
    extra = json.loads(connection["extra"])
    assert extra["trustee_version"] == "0.21.0" and extra["admin_auth"] == "bearer"
    run = follow_v021(run_id, timeout_s=600)
    states = {t: ti["state"] for t, ti in run.tasks.items()}
    assert run.state == "success" and set(states.values()) == {"success"}, states
    assert v021_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None
    assert v021_stack.registry_versions() == 1
