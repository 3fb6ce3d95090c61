"""Tiny DAGs that prove the distributed harness (tests/distributed/harness.py).

- coco_harness_smoke: two tasks passing an XCom, run by whichever executor the cluster uses.
- coco_harness_fault / coco_harness_fault_retry: `long_task` records each attempt in the file
  named by conf["marker"] and, on its first attempt, sleeps long enough to be killed mid-way;
  `downstream` records that it ran. The fault tests kill the worker during the first attempt.
"""

from __future__ import annotations

import datetime
import os
import time

import pendulum
from airflow.sdk import dag, get_current_context, task

START = pendulum.datetime(2025, 1, 1, tz="UTC")


def _record(marker: str, line: str) -> None:
    with open(marker, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@dag(dag_id="coco_harness_smoke", schedule=None, start_date=START, catchup=False)
def coco_harness_smoke():
    @task
    def produce() -> dict:
        return {"pid": os.getpid(), "value": 21}

    @task
    def consume(produced: dict) -> int:
        return produced["value"] * 2

    consume(produce())


def _fault_dag(dag_id: str, retries: int):
    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        params={"marker": "", "sleep": 600},
    )
    def fault():
        @task(retries=retries, retry_delay=datetime.timedelta(seconds=1))
        def long_task() -> str:
            ctx = get_current_context()
            marker = ctx["params"]["marker"]
            try_number = ctx["ti"].try_number
            _record(marker, f"long_task try={try_number} pid={os.getpid()}")
            if try_number == 1:
                time.sleep(int(ctx["params"]["sleep"]))
            return "done"

        @task
        def downstream(result: str) -> None:
            marker = get_current_context()["params"]["marker"]
            _record(marker, f"downstream after {result}")

        downstream(long_task())

    return fault()


coco_harness_smoke()
_fault_dag("coco_harness_fault", retries=0)
_fault_dag("coco_harness_fault_retry", retries=1)
