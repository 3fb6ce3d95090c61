"""Fixtures of the distributed tier: PostgreSQL + Redis + Airflow (CeleryExecutor) on loopback.

One PostgreSQL and one Redis for the whole session (each deployment gets its own database and
Redis logical database on them), one Airflow deployment per module: starting one costs about
half a minute of CPU, so every test of a module shares it. Set COCO_DISTRIBUTED_KEEP=1 to keep
the Airflow homes (logs) after the run.
"""

from __future__ import annotations

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
    keep_or_remove,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        check_python_dependencies()
    except HarnessError as exc:
        pytest.fail(str(exc))
    ensure_services_installed()
    with PostgresServer() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    ensure_services_installed()
    with RedisServer() as redis:
        yield redis


@pytest.fixture(scope="module")
def celery_cluster(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[AirflowCluster]:
    home = Path(tempfile.mkdtemp(prefix="coco-airflow-celery-"))
    cluster = AirflowCluster(
        home,
        [HARNESS_DAGS],
        executor="CeleryExecutor",
        database_url=postgres.create_database("airflow_harness"),
        broker_url=redis_server.url_for(0),
        result_backend=postgres.celery_result_backend_for("airflow_harness"),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    keep_or_remove(home)
