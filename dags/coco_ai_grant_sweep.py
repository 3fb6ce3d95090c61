"""Sweep: revoke the grants that pipeline runs left behind when their own revocation failed.

Each pipeline run revokes its grant in its `revoke_keys` teardown. When that task fails for good
(Trustee down longer than its retries) or never runs (a worker lost, an operator's
intervention), the grant outlives the run; this DAG finds such runs from their task states and
revokes their grants with the same Trustee connection (grants-only credential). Idempotent.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from coco_ai_airflow.keys import GrantSweepOperator

#: the DAGs whose runs hold grants
PIPELINE_DAGS = [
    "confidential_finetune",
    "confidential_rag_index",
    "confidential_federated_finetune",
]

with DAG(
    dag_id="coco_ai_grant_sweep",
    description="Revoke grants left by pipeline runs whose own revocation failed",
    doc_md=__doc__,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=timedelta(hours=1),
    catchup=False,
    max_active_runs=1,
    tags=["confidential-computing", "coco", "maintenance"],
) as dag:
    GrantSweepOperator(
        task_id="sweep_grants",
        dag_ids=PIPELINE_DAGS,
        retries=3,  # revoking is idempotent
        retry_delay=timedelta(minutes=5),
        doc_md="""Lists every run of the pipeline DAGs whose key release started and whose
`revoke_keys` ended failed/skipped/removed (never a run still in progress), and revokes each
run's grant (tombstone, then delete). Fails naming every grant it could not revoke.""",
    )
