"""Fixtures of the distributed tier: PostgreSQL + Redis + Airflow (CeleryExecutor) on loopback.

One cluster per module: starting it costs about a minute of CPU, so every test of a module
shares it. Set COCO_DISTRIBUTED_KEEP=1 to keep the Airflow home (logs) after the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    HARNESS_DAGS,
    AirflowCluster,
    HarnessError,
    PostgresServer,
    RedisServer,
    check_python_dependencies,
    ensure_services_installed,
)


@pytest.fixture(scope="module")
def celery_cluster() -> Iterator[AirflowCluster]:
    try:
        check_python_dependencies()
    except HarnessError as exc:
        pytest.fail(str(exc))
    ensure_services_installed()
    home = Path(tempfile.mkdtemp(prefix="coco-airflow-celery-"))
    with PostgresServer() as pg, RedisServer() as redis:
        cluster = AirflowCluster(
            home,
            [HARNESS_DAGS],
            executor="CeleryExecutor",
            database_url=pg.sqlalchemy_url,
            broker_url=redis.url,
            result_backend=pg.celery_result_backend,
        )
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
    if os.environ.get("COCO_DISTRIBUTED_KEEP") != "1":
        shutil.rmtree(home, ignore_errors=True)
