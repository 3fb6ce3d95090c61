"""The pipeline DAGs on a CeleryExecutor deployment: the stack, and the checks that concurrent
runs (fine-tunes and RAG indexings, mixed) stayed apart. Shared by
tests/distributed/test_target_dag.py and benchmarks/bench_concurrent_runs.py."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coco_ai.devstack import DAG_ID, DevStack, StackInfo, stop_stack
from coco_ai.devstack.airflow import CELERY_WORKER, LOCAL_COMPONENTS, AirflowRestClient
from coco_ai.runs import RunRefs

from .harness import (
    CeleryWorkers,
    PostgresServer,
    RedisServer,
    cluster_tuning_env,
    components_log_tail,
    index_task_instances,
    keep_or_remove,
    wait_run,
    wait_task,
)

DAG_CONF = json.loads(os.environ.get("COCO_DISTRIBUTED_DAG_CONF", '{"epochs": 1, "lora_r": 4}'))
TIMEOUT = float(os.environ.get("COCO_DISTRIBUTED_TIMEOUT", "600"))


@dataclass
class CeleryStack:
    devstack: DevStack
    info: StackInfo
    client: AirflowRestClient
    workers: CeleryWorkers
    dag_of: dict[str, str] = field(default_factory=dict)  # dag run id -> its DAG

    def log_tail(self) -> str:
        assert self.devstack.deployment is not None
        return components_log_tail(self.devstack.deployment)

    def task_logs_tail(self, dag_id: str, run_id: str, task_ids: list[str], chars=3000) -> str:
        """The end of each attempt's log of `task_ids` in that run (why a task failed)."""
        logs = Path(self.info.root) / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        return "\n".join(
            f"--- {path.relative_to(logs)} ---\n{path.read_text(errors='replace')[-chars:]}"
            for task_id in task_ids
            for path in sorted((logs / f"task_id={task_id}").glob("attempt=*.log"))
        )

    def trigger(self, conf: dict, dag_id: str = DAG_ID) -> str:
        run_id = self.client.trigger(dag_id, conf)["dag_run_id"]
        self.dag_of[run_id] = dag_id
        return run_id

    def finish(self, run_id: str, timeout: float = TIMEOUT) -> tuple[str, dict[str, dict]]:
        """Wait for the run and for its teardown (the key revocation) to be final."""
        dag_id = self.dag_of.get(run_id, DAG_ID)
        state = wait_run(self.client, dag_id, run_id, timeout, diagnostics=self.log_tail)
        final = ("success", "failed", "upstream_failed", "skipped")
        wait_task(self.client, dag_id, run_id, "revoke_keys", final, 120, self.log_tail)
        tis = index_task_instances(self.client.task_instances(dag_id, run_id))
        return state, tis

    def resource(self, path: str) -> bytes | None:
        """What the stand-in Trustee holds at `path` (None when absent)."""
        from coco_ai.trustee_dev.state import StateDir

        record = StateDir(self.info.trustee_state_dir).get_resource(path)
        return record.data if record else None

    @property
    def registered_names(self) -> dict[str, str]:
        """The registered name of each workload kind's promoted outputs."""
        return {
            "finetune": self.info.registered_model_name,
            "rag_index": self.info.registered_index_name,
        }

    def registry_versions(self, name: str | None = None) -> list:
        from coco_ai.promotion import model_versions

        name = name or self.info.registered_model_name
        return model_versions(name, registry_uri=self.info.registry_uri)

    def versions_by_name(self) -> dict[str, set[int]]:
        """Every registered name's versions now (what a test compares the runs' promotions to)."""
        return {
            name: {v.version for v in self.registry_versions(name)}
            for name in self.registered_names.values()
        }

    def serving_version(self, name: str | None = None):
        from coco_ai.promotion import version_by_alias

        name = name or self.info.registered_model_name
        return version_by_alias(name, "serving", registry_uri=self.info.registry_uri)


@contextmanager
def celery_pipeline_stack(
    postgres: PostgresServer,
    redis_server: RedisServer,
    *,
    database: str = "airflow_coco",
    redis_db: int = 1,
    parallelism: int = 4,
    worker_concurrency: int | None = None,
) -> Iterator[CeleryStack]:
    """The embedded default on PostgreSQL + Redis with the api-server, scheduler,
    dag-processor, triggerer and one Celery worker as separate processes."""
    root = Path(tempfile.mkdtemp(prefix="coco-distributed-dag-"))
    devstack = DevStack(
        root,
        executor="CeleryExecutor",
        sql_alchemy_conn=postgres.create_database(database),
        components=(*LOCAL_COMPONENTS, CELERY_WORKER),
        celery_broker_url=redis_server.url_for(redis_db),
        celery_result_backend=postgres.celery_result_backend_for(database),
        parallelism=parallelism,
        extra_env={
            **cluster_tuning_env(heartbeat_timeout=30),
            **(
                {"AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency)}
                if worker_concurrency
                else {}
            ),
        },
    )
    try:
        info = devstack.start()
        assert devstack.deployment is not None
        workers = CeleryWorkers(
            devstack.start_component, devstack.deployment.log_path(CELERY_WORKER)
        )
        (worker,) = [s for s in info.services if s.name == "airflow-celery-worker"]
        workers.adopt(worker)
        workers.wait_ready()
        client = info.client()
        try:
            yield CeleryStack(devstack, info, client, workers)
        finally:
            client.close()
    finally:
        stop_stack(root)
    keep_or_remove(root)


def publish_dataset_version(stack: CeleryStack, name: str, *, seed: int) -> dict[str, str]:
    """The data owner encrypts a data-set version under its own key, gives the key to Trustee
    (admin API) and approves the version in the signed owner policy."""
    import secrets

    from coco_ai.crypto import encrypt_blob
    from coco_ai.workloads.dataset import DATASET_AAD, generate_examples, to_jsonl

    key_path = f"coco-ai/dataset-key/{name}"
    key = secrets.token_bytes(32)
    blob = encrypt_blob(
        to_jsonl(generate_examples(seed=seed)),
        kek=key,
        key_uri=f"kbs:///{key_path}",
        aad_context=DATASET_AAD,
    )
    with stack.info.data_owner_admin() as admin:
        admin.set_resource(key_path, key)
    del key
    target = Path(stack.info.dataset_uri.removeprefix("file://")).parent / f"{name}.enc"
    target.write_bytes(blob)
    uri = f"file://{target}"
    stack.info.approve_datasets(uri)
    return {"dataset_uri": uri, "dataset_key_uri": f"kbs:///{key_path}"}


def cross_run_problems(
    stack: CeleryStack,
    outcomes: dict[str, tuple[str, dict[str, dict]]],
    releases: list[dict],
    versions_before: dict[str, set[int]],
) -> list[str]:
    """Every way concurrent runs — of either pipeline DAG — could have leaked into each other,
    as readable findings. ``versions_before``: :meth:`CeleryStack.versions_by_name` before."""
    client = stack.client
    problems: list[str] = []
    refs_of = {}  # coco run id -> its references
    promoted: dict[str, list[int]] = {name: [] for name in versions_before}
    for dag_run_id, (state, tis) in outcomes.items():
        dag_id = stack.dag_of.get(dag_run_id, DAG_ID)
        summary = {task_id: ti["state"] for task_id, ti in tis.items()}
        refs = RunRefs.from_xcom(client.xcom(dag_id, dag_run_id, "key_release"))
        refs_of[refs.run_id] = refs
        if summary.get("revoke_keys") != "success" or stack.resource(refs.grant.url_path()):
            problems.append(f"{dag_run_id}: grant not revoked ({summary})")
        if summary.get("attested_promotion") != "success":
            # The champion rule may refuse a run whose output is older than one already
            # served (a rollback): that is the only acceptable failure.
            log = stack.log_tail()
            workload_task = f"confidential_{refs.workload}"
            if state != "failed" or summary.get(workload_task) != "success":
                failed = [t for t, ti in tis.items() if ti["state"] == "failed"]
                problems.append(
                    f"{dag_run_id}: failed before promotion: {summary}\n{log}\n"
                    + stack.task_logs_tail(dag_id, dag_run_id, failed)
                )
            continue
        result = client.xcom(dag_id, dag_run_id, "attested_promotion")
        if result["run_id"] != refs.run_id:
            problems.append(f"{dag_run_id}: promoted run {result['run_id']}, not {refs.run_id}")
        if f"/{refs.run_id}" not in result["checkpoint_uri"]:
            problems.append(f"{dag_run_id}: promoted {result['checkpoint_uri']}")
        name = stack.registered_names[refs.workload]
        if result["model_name"] != name:
            problems.append(f"{dag_run_id}: a {refs.workload} output registered as {name}")
        promoted.setdefault(name, []).append(result["version"])

    run_claim = "io.coco-ai.run-id"
    for entry in releases:
        claims = entry.get("init_data_claims") or {}
        receiver = refs_of.get(claims.get(run_claim))
        if receiver is None:
            problems.append(f"{entry['path']} released to a TEE of no run of this test: {claims}")
            continue
        wanted = {
            receiver.grant.url_path(),
            receiver.run_key_root.url_path(),
            *(i.key.url_path() for i in receiver.inputs.values() if i.key is not None),
        }
        if entry["path"] not in wanted:
            problems.append(f"run {receiver.run_id}'s TEE received {entry['path']}")
    for run_id, refs in refs_of.items():
        if not any(e["path"] == refs.grant.url_path() for e in releases):
            problems.append(f"run {run_id}'s own grant was never released to it")

    if not any(promoted.values()):
        problems.append("no run promoted")
    for name, versions in promoted.items():
        created = {
            v.version: float(v.tags["coco-ai.created_at"])
            for v in stack.registry_versions(name)
            if v.version not in versions_before.get(name, set())
        }
        if sorted(versions) != sorted(created):
            problems.append(f"{name} gained versions {sorted(created)}, runs promoted {versions}")
        # Monotonic: a higher version always holds a newer output, and the alias ends on the
        # highest.
        in_version_order = [created[v] for v in sorted(created)]
        if in_version_order != sorted(in_version_order):
            problems.append(f"{name}: a newer version holds an older output: {created}")
        served = stack.serving_version(name)
        if versions and (served is None or served.version != max(versions)):
            on = served and served.version
            problems.append(f"{name}: serving alias on {on}, not {max(versions)}")
    return problems
