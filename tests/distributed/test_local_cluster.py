"""The same harness in the standalone-like shape: LocalExecutor on SQLite, no broker."""

from __future__ import annotations

import pytest

from .harness import HARNESS_DAGS, AirflowCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_local_executor_on_sqlite_runs_a_rest_triggered_dag(tmp_path) -> None:
    with AirflowCluster(tmp_path / "home", [HARNESS_DAGS], executor="LocalExecutor") as cluster:
        run_id = cluster.trigger("coco_harness_smoke")
        assert cluster.wait("coco_harness_smoke", run_id, timeout=240) == "success"
        tis = cluster.task_instances("coco_harness_smoke", run_id)
        states = {task_id: ti["state"] for task_id, ti in tis.items()}
        assert states == {"produce": "success", "consume": "success"}
        assert "celery-worker" not in cluster.logs()
        assert "LocalExecutor" in cluster.logs()["scheduler"]
