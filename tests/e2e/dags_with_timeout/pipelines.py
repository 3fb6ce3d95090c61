"""The repository's DAGs as they are, plus ``confidential_finetune_timeout``: the fine-tune DAG
with an ``execution_timeout`` on its workload (``COCO_TEST_WORKLOAD_TIMEOUT_S`` seconds), as a
DAG author may set one. Only the test stack of tests/e2e/test_airflow_faults.py parses this
folder."""

from __future__ import annotations

import copy
import os
import runpy
from datetime import timedelta
from pathlib import Path

from airflow.timetables.simple import NullTimetable

_REPO_DAGS = Path(__file__).resolve().parents[3] / "dags"

finetune = runpy.run_path(str(_REPO_DAGS / "confidential_finetune.py"))["dag"]
rag_index = runpy.run_path(str(_REPO_DAGS / "confidential_rag_index.py"))["dag"]
federated = runpy.run_path(str(_REPO_DAGS / "confidential_federated_finetune.py"))["dag"]
grant_sweep = runpy.run_path(str(_REPO_DAGS / "coco_ai_grant_sweep.py"))["dag"]

finetune_timeout = copy.deepcopy(finetune)
finetune_timeout.dag_id = "confidential_finetune_timeout"
# runs only when a test triggers it: never on the fine-tune's data-set events or its cron
finetune_timeout.timetable = NullTimetable()
finetune_timeout.get_task("confidential_finetune").execution_timeout = timedelta(
    seconds=float(os.environ.get("COCO_TEST_WORKLOAD_TIMEOUT_S", "20"))
)
