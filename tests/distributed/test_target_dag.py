"""The project's pipeline DAG on the CeleryExecutor configuration, triggered over REST.

The embedded default (`coco_ai.devstack.DevStack`: Trustee stand-in, encrypted data set, base
model, signing key, the `trustee_default` connection) started on PostgreSQL and Redis from the
harness, with the api-server, scheduler, dag-processor, triggerer and one Celery worker as
separate processes: the run crosses the same process boundaries as the compose deployment.

Parameters (environment):
  COCO_DISTRIBUTED_DAG_CONF    JSON conf of the runs killed mid fine-tune (default {"epochs": 1,
                               "lora_r": 4}; the others: tests/quick_runs.py)
  COCO_DISTRIBUTED_TIMEOUT     seconds to wait for a run (default 600)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coco_ai.devstack import DAG_ID
from coco_ai.devstack.processes import descendants
from coco_ai.runs import RunRefs
from tests.quick_runs import approve_quick_runs

from .celery_pipeline import (
    DAG_CONF,
    CeleryStack,
    celery_pipeline_stack,
    cross_run_problems,
    publish_dataset_version,
)
from .harness import (
    CeleryWorkers,
    PostgresServer,
    RedisServer,
    assert_dead,
    kill_tree,
    wait_task,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

FINETUNE = "confidential_finetune"  # the fine-tune task of the DAG of the same name
DOWNSTREAM_OF_FINETUNE = ("encrypted_checkpoint_upload", "attested_promotion")
WORKLOAD_MODULE = "coco_ai.workloads.finetune"


@pytest.fixture(scope="module")
def celery_stack(postgres: PostgresServer, redis_server: RedisServer) -> Iterator[CeleryStack]:
    with celery_pipeline_stack(postgres, redis_server) as stack:
        yield stack


def test_target_dag_succeeds_on_celery_over_rest(celery_stack: CeleryStack) -> None:
    before = len(celery_stack.registry_versions())
    run_id = celery_stack.trigger(approve_quick_runs(celery_stack.info))
    state, tis = celery_stack.finish(run_id)

    summary = {task_id: ti["state"] for task_id, ti in tis.items()}
    assert state == "success", f"{summary}\n{celery_stack.log_tail()}"
    assert set(summary.values()) == {"success"}, summary
    assert {ti["executor"] for ti in tis.values()} <= {None, "CeleryExecutor"}
    # Every task ran on the Celery worker (its log names each task it received).
    worker_log = celery_stack.workers.log_path.read_text(errors="replace")
    assert [t for t in tis if t not in worker_log] == [], "a task did not run on the worker"

    client = celery_stack.client
    promoted = client.xcom(DAG_ID, run_id, "attested_promotion")
    assert len(celery_stack.registry_versions()) == before + 1
    served = celery_stack.serving_version()
    assert served is not None and served.version == promoted["version"]
    assert served.tags["coco-ai.manifest_digest"] == promoted["manifest_digest"]
    refs = client.xcom(DAG_ID, run_id, "key_release")
    key_path = RunRefs.from_xcom(refs).grant.url_path()
    assert refs["grant_uri"] in client.xcom(DAG_ID, run_id, "revoke_keys")["revoked"]
    assert celery_stack.resource(key_path) is None


def test_worker_killed_during_finetune_never_promotes_and_revokes_key(
    celery_stack: CeleryStack,
) -> None:
    client = celery_stack.client
    retries = client.request("GET", f"/api/v2/dags/{DAG_ID}/tasks/{FINETUNE}")["retries"]
    # Retrying the fine-tune re-runs the workload under the same run key and initdata: the
    # DAG allows it nowhere (key_release and the fine-tune have no retries).
    assert retries == 0, f"{FINETUNE} now retries {retries} times: revisit this fault test"
    versions_before = [v.version for v in celery_stack.registry_versions()]
    serving_before = celery_stack.serving_version()

    run_id = celery_stack.trigger(DAG_CONF)
    wait_task(client, DAG_ID, run_id, FINETUNE, {"running"}, 300, celery_stack.log_tail)
    refs = client.xcom(DAG_ID, run_id, "key_release")
    key_path = RunRefs.from_xcom(refs).grant.url_path()
    assert celery_stack.resource(key_path) is not None  # granted for this run
    workload_pid = _wait_for_workload(celery_stack.workers)

    tree = celery_stack.workers.kill()
    assert workload_pid in tree
    assert_dead(workload_pid)
    # The replacement container: revoke_keys (a teardown, trigger rule all_done) needs a worker.
    celery_stack.workers.start()
    celery_stack.workers.wait_ready()

    state, tis = celery_stack.finish(run_id)
    summary = {task_id: ti["state"] for task_id, ti in tis.items()}
    # No retry: the scheduler notices the missing heartbeats and fails the attempt.
    assert state == "failed", summary
    assert summary[FINETUNE] == "failed", summary
    assert tis[FINETUNE]["try_number"] == 1, tis[FINETUNE]
    for task_id in DOWNSTREAM_OF_FINETUNE:
        assert summary[task_id] == "upstream_failed", summary
    assert summary["revoke_keys"] == "success", summary

    # Nothing of the killed attempt's half work was uploaded, registered or served.
    checkpoints = Path(celery_stack.info.checkpoint_store_uri.removeprefix("file://"))
    assert not (checkpoints / refs["run_id"]).exists()
    assert [v.version for v in celery_stack.registry_versions()] == versions_before
    serving_after = celery_stack.serving_version()
    assert (serving_after and serving_after.version) == (serving_before and serving_before.version)
    # The run's key is revoked all the same.
    assert celery_stack.resource(key_path) is None
    assert refs["grant_uri"] in client.xcom(DAG_ID, run_id, "revoke_keys")["revoked"]


def _wait_for_workload(workers: CeleryWorkers, timeout: float = 120.0) -> int:
    """The pid of the fine-tune workload among the worker's descendants, once it runs."""
    assert workers.current is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(workers.current.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if WORKLOAD_MODULE.encode() in argv:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no {WORKLOAD_MODULE} process under the Celery worker in {timeout}s")


def test_concurrent_runs_never_share_keys_or_checkpoints(celery_stack: CeleryStack) -> None:
    """COCO_CONCURRENT_RUNS runs (default 4; benchmarks/bench_concurrent_runs.py runs 20) at
    once, mixed: fine-tunes on two data-set versions and a RAG indexing: each TEE receives only
    its own run's grant and its own input's key (Trustee's release audit), each promotion is its
    own run's output under its kind's registered name, every grant is revoked, and each serving
    alias only ever moves to newer versions."""
    from coco_ai.devstack.stack import RAG_DAG_ID
    from coco_ai.trustee_dev.state import StateDir

    count = int(os.environ.get("COCO_CONCURRENT_RUNS", "4"))
    second = publish_dataset_version(celery_stack, "concurrent-v2", seed=11)
    first = {
        "dataset_uri": celery_stack.info.dataset_uri,
        "dataset_key_uri": celery_stack.info.dataset_key_uri,
    }
    versions_before = celery_stack.versions_by_name()
    releases_before = len(StateDir(celery_stack.info.trustee_state_dir).releases())

    quick = approve_quick_runs(celery_stack.info)

    def start(i: int) -> str:
        if i % 3 == 2:  # every third run indexes the stack's document repository
            return celery_stack.trigger({}, RAG_DAG_ID)
        return celery_stack.trigger({**quick, **(first, second)[i % 3]})

    runs = [start(i) for i in range(count)]
    outcomes = {run_id: celery_stack.finish(run_id) for run_id in runs}

    releases = StateDir(celery_stack.info.trustee_state_dir).releases()[releases_before:]
    problems = cross_run_problems(celery_stack, outcomes, releases, versions_before)
    assert problems == [], "\n".join(problems)


def test_scheduler_restart_mid_finetune_adopts_the_running_task(celery_stack: CeleryStack) -> None:
    """The scheduler killed (SIGKILL, as a crashed container) while the fine-tune runs on the
    Celery worker, then started again: the worker keeps the task, the new scheduler adopts it,
    the run completes and promotes its own checkpoint and the grant is revoked — one attempt, no
    re-run of the workload under the same run key."""
    client = celery_stack.client
    run_id = celery_stack.trigger(DAG_CONF)
    wait_task(client, DAG_ID, run_id, FINETUNE, {"running"}, 300, celery_stack.log_tail)
    refs = RunRefs.from_xcom(client.xcom(DAG_ID, run_id, "key_release"))

    (scheduler,) = [
        s for s in celery_stack.info.services if s.name == "airflow-scheduler" and s.alive()
    ]
    kill_tree(scheduler)
    down_at = time.monotonic()
    celery_stack.devstack.start_component("scheduler")
    _wait_api(client)

    state, tis = celery_stack.finish(run_id)
    summary = {task_id: ti["state"] for task_id, ti in tis.items()}
    print(f"scheduler restarted; run {state} {time.monotonic() - down_at:.1f}s after the kill")
    assert state == "success", f"{summary}\n{celery_stack.log_tail()}"
    assert tis[FINETUNE]["try_number"] == 1, tis[FINETUNE]
    promoted = client.xcom(DAG_ID, run_id, "attested_promotion")
    assert promoted["run_id"] == refs.run_id
    assert celery_stack.resource(refs.grant.url_path()) is None


def _wait_api(client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.request("GET", "/api/v2/version")
            return
        except Exception:
            assert time.monotonic() < deadline, "the api-server did not come back"
            time.sleep(1)
