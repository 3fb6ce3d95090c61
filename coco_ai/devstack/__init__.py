"""The embedded default on one machine, for `coco-ai demo`, the e2e tests and the benchmark.

Trustee stand-in (dev policies, loopback TLS), a file:// object store, an MLflow SQLite registry
and a real Airflow (scheduler, dag-processor, triggerer, api-server; SQLite + LocalExecutor by
default) started as subprocesses and driven over REST with httpx. No Airflow import here.
"""

from coco_ai.devstack.airflow import AirflowDeployment, AirflowRestClient, AirflowSettings
from coco_ai.devstack.demo import format_summary, run_pipeline
from coco_ai.devstack.stack import (
    DAG_ID,
    DevStack,
    StackInfo,
    default_state_dir,
    load_state,
    stop_stack,
)

__all__ = [
    "DAG_ID",
    "AirflowDeployment",
    "AirflowRestClient",
    "AirflowSettings",
    "DevStack",
    "StackInfo",
    "default_state_dir",
    "format_summary",
    "load_state",
    "run_pipeline",
    "stop_stack",
]
