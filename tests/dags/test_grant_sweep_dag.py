"""The grant sweep DAG: covers every pipeline DAG of the repository, hourly, one run at a time."""

from __future__ import annotations

from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


def test_sweep_covers_every_dag_that_releases_keys():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    sweep = bag.dags["coco_ai_grant_sweep"]
    (task,) = sweep.tasks
    releasing = {
        dag_id
        for dag_id, dag in bag.dags.items()
        if any(t.task_type == "KeyReleaseOperator" for t in dag.tasks)
    }
    assert releasing and set(task.dag_ids) == releasing
    for dag_id in releasing:
        ids = set(bag.dags[dag_id].task_dict)
        assert {task.key_release_task_id, task.revoke_task_id} <= ids, dag_id
    assert sweep.max_active_runs == 1
    assert task.retries >= 1  # revoking is idempotent
