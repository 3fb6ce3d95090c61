"""The project's pipeline DAG on the CeleryExecutor configuration, triggered over REST.

The embedded default (`coco_ai.devstack.DevStack`: Trustee stand-in, encrypted data set, base
model, signing key, the `trustee_default` connection) is started with PostgreSQL and Redis from
the harness and a Celery worker, so the run crosses the same process boundaries as the compose
deployment.

Parameters (environment):
  COCO_DISTRIBUTED_DAG         DAG id (default confidential_finetune)
  COCO_DISTRIBUTED_DAG_CONF    JSON run conf (default {})
  COCO_DISTRIBUTED_TIMEOUT     seconds to wait for the run (default 900)
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from .harness import (
    REPO_ROOT,
    PostgresServer,
    RedisServer,
    check_python_dependencies,
    ensure_services_installed,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1800)]

DAG_ID = os.environ.get("COCO_DISTRIBUTED_DAG", "confidential_finetune")
DAG_CONF = json.loads(os.environ.get("COCO_DISTRIBUTED_DAG_CONF", "{}"))
TIMEOUT = float(os.environ.get("COCO_DISTRIBUTED_TIMEOUT", "900"))

if not any(f'"{DAG_ID}"' in p.read_text() for p in (REPO_ROOT / "dags").glob("*.py")):
    pytest.skip(f"no DAG {DAG_ID!r} in dags/ yet", allow_module_level=True)

from coco_ai.devstack import stack  # noqa: E402 - only once the DAG exists
from coco_ai.devstack.airflow import LOCAL_COMPONENTS  # noqa: E402

if "components" not in inspect.signature(stack.DevStack).parameters:
    pytest.skip(
        "coco_ai.devstack.DevStack has no `components` parameter yet (needed to add the "
        "Celery worker)",
        allow_module_level=True,
    )


def test_target_dag_succeeds_on_celery_over_rest() -> None:
    check_python_dependencies()
    ensure_services_installed()
    root = Path(tempfile.mkdtemp(prefix="coco-distributed-dag-"))
    with PostgresServer() as pg, RedisServer() as redis:
        devstack = stack.DevStack(
            root,
            executor="CeleryExecutor",
            sql_alchemy_conn=pg.sqlalchemy_url,
            components=(*LOCAL_COMPONENTS, "celery worker"),
            extra_env={
                "AIRFLOW__CELERY__BROKER_URL": redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": pg.celery_result_backend,
            },
        )
        info = devstack.start()
        try:
            client = info.client()
            run_id = client.trigger(DAG_ID, DAG_CONF)["dag_run_id"]
            deadline = time.monotonic() + TIMEOUT
            while (state := client.dag_run(DAG_ID, run_id)["state"]) not in ("success", "failed"):
                assert time.monotonic() < deadline, f"run still {state} after {TIMEOUT}s"
                time.sleep(5)
            tis = client.task_instances(DAG_ID, run_id)
            summary = {ti["task_id"]: ti["state"] for ti in tis}
            assert state == "success", summary
            assert set(summary.values()) <= {"success", "skipped"}, summary
            ran = [ti for ti in tis if ti["state"] == "success"]
            assert ran and all(ti["executor"] in (None, "CeleryExecutor") for ti in ran)
            log = (root / "logs" / "airflow-celery-worker.log").read_text()
            assert all(ti["task_id"] in log for ti in ran), "a task did not run on the worker"
        finally:
            stack.stop_stack(root)
    if os.environ.get("COCO_DISTRIBUTED_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)
