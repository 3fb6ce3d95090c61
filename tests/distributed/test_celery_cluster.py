"""A real CeleryExecutor deployment (PostgreSQL, Redis, five Airflow processes) runs DAGs
triggered over REST, and a worker killed mid-task never lets downstream work succeed on the
killed attempt."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from .harness import AirflowCluster, assert_dead

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]


def _marker(cluster: AirflowCluster) -> Path:
    return cluster.home / f"marker-{uuid.uuid4().hex}.txt"


def test_rest_triggered_run_succeeds_on_celery_worker(celery_cluster: AirflowCluster) -> None:
    run_id = celery_cluster.trigger("coco_harness_smoke")
    assert celery_cluster.wait("coco_harness_smoke", run_id, timeout=240) == "success"

    tis = celery_cluster.task_instances("coco_harness_smoke", run_id)
    assert {k: v["state"] for k, v in tis.items()} == {"produce": "success", "consume": "success"}
    # The XCom went through the metadata DB from one Celery task to the next.
    xcom = celery_cluster.client.xcom("coco_harness_smoke", run_id, "consume")
    assert xcom in (42, "42")
    # The tasks ran in the Celery worker, not in the scheduler.
    logs = celery_cluster.logs()
    assert "CeleryExecutor" in logs["scheduler"]
    assert re.search(r"coco_harness_smoke", logs["celery-worker"])


def test_worker_killed_mid_task_fails_run_without_downstream(
    celery_cluster: AirflowCluster,
) -> None:
    dag_id = "coco_harness_fault"
    marker = _marker(celery_cluster)
    run_id = celery_cluster.trigger(dag_id, {"marker": str(marker), "sleep": 600})
    celery_cluster.wait_task(dag_id, run_id, "long_task", {"running"})
    _wait_for_line(marker, "long_task try=1")

    celery_cluster.kill_worker()
    assert_dead(_attempt_pid(marker, 1))
    try:
        # No retries: the scheduler notices the missing heartbeats and fails the attempt.
        assert celery_cluster.wait(dag_id, run_id, timeout=300) == "failed"
    finally:
        celery_cluster.start_worker()
        celery_cluster.wait_worker_ready()

    tis = celery_cluster.task_instances(dag_id, run_id)
    assert tis["long_task"]["state"] == "failed"
    assert tis["downstream"]["state"] == "upstream_failed"
    assert "downstream" not in marker.read_text()


def test_worker_killed_mid_task_is_retried_before_downstream(
    celery_cluster: AirflowCluster,
) -> None:
    dag_id = "coco_harness_fault_retry"
    marker = _marker(celery_cluster)
    run_id = celery_cluster.trigger(dag_id, {"marker": str(marker), "sleep": 600})
    celery_cluster.wait_task(dag_id, run_id, "long_task", {"running"})
    _wait_for_line(marker, "long_task try=1")

    celery_cluster.kill_worker()
    assert_dead(_attempt_pid(marker, 1))
    celery_cluster.start_worker()  # the replacement container
    celery_cluster.wait_worker_ready()
    assert celery_cluster.wait(dag_id, run_id, timeout=300) == "success"

    tis = celery_cluster.task_instances(dag_id, run_id)
    assert tis["long_task"]["try_number"] == 2
    lines = marker.read_text().splitlines()
    # downstream ran exactly once, and only after the second attempt completed.
    assert [ln.split()[0] + " " + ln.split()[1] for ln in lines] == [
        "long_task try=1",
        "long_task try=2",
        "downstream after",
    ]


def _attempt_pid(marker: Path, try_number: int) -> int:
    match = re.search(rf"long_task try={try_number} pid=(\d+)", marker.read_text())
    assert match, marker.read_text()
    return int(match.group(1))


def _wait_for_line(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {path}")
        time.sleep(0.5)
