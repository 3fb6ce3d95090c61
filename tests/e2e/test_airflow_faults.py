"""Airflow's own components failing mid-run (issue 16): the api-server restarted while a run is
followed, the running fine-tune cleared from the UI, task processes killed (key release,
fine-tune, revoke, gate), the workload past its execution_timeout. Each ends recovered or
failed closed: the workload stopped, the grant revoked, nothing promoted twice or from a partial
step.

One stack for the module (its own: the api-server is restarted, and its DAG folder adds
``confidential_finetune_timeout``, the fine-tune DAG with an execution_timeout on the workload;
tests/e2e/dags_with_timeout). Runs of different faults go side by side where their outcomes stay
separable. The fault matrix names these tests (scripts/fault_matrix.py OTHER_TIERS).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_operator_interventions import _wait, _workload_pids

from coco_ai.devstack import DAG_ID, DevStack, stop_stack
from coco_ai.devstack.airflow import _RETRY_DELAYS_S
from coco_ai.devstack.demo import run_pipeline
from coco_ai.devstack.processes import stop_service
from coco_ai.runs import RunRefs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
TIMEOUT_DAG_ID = "confidential_finetune_timeout"
WORKLOAD_TIMEOUT_S = 25
FINETUNE = "confidential_finetune"
# Neither run may finish: one is killed mid-training, the other must outlast the workload
# timeout. Far more epochs than either needs, so that fast training (bf16) cannot finish first.
LONG_RUN = {"epochs": 60, "lora_r": 4}
SHORT_RUN = {"epochs": 1, "lora_r": 4}
FINAL = ("success", "failed", "upstream_failed", "skipped")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco-airflow-faults")
    devstack = DevStack(
        root,
        extra_env={
            "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags_with_timeout"),
            "COCO_TEST_WORKLOAD_TIMEOUT_S": str(WORKLOAD_TIMEOUT_S),
        },
    )
    info = devstack.start()
    client = info.client()
    try:
        client.wait_for_dag(TIMEOUT_DAG_ID)
        client.unpause(TIMEOUT_DAG_ID)
        yield devstack, info, client
    finally:
        client.close()
        stop_stack(root)


def _states(client, dag_id: str, run_id: str) -> dict[str, dict]:
    return {t["task_id"]: t for t in client.task_instances(dag_id, run_id)}


def _wait_workload(client, dag_id: str, run_id: str) -> tuple[RunRefs, list[int]]:
    """Once the run's workload runs: its references and the pids of its TEE processes."""
    _wait(
        f"{dag_id} {run_id}: the fine-tune running",
        lambda: (_states(client, dag_id, run_id).get(FINETUNE) or {}).get("state") == "running",
        240,
    )
    refs = RunRefs.from_xcom(client.xcom(dag_id, run_id, "key_release"))
    _wait("the workload processes", lambda: len(_workload_pids(refs.run_id)) >= 2, 90)
    return refs, _workload_pids(refs.run_id)


def _wait_final(client, dag_id: str, run_id: str, timeout_s: float = 300) -> dict[str, dict]:
    def final() -> bool:
        run = client.dag_run(dag_id, run_id)
        revoke = (_states(client, dag_id, run_id).get("revoke_keys") or {}).get("state")
        return run["state"] in ("success", "failed") and revoke in FINAL

    _wait(f"{dag_id} {run_id} final", final, timeout_s)
    return _states(client, dag_id, run_id)


def _grant(info, refs: RunRefs) -> bytes | None:
    from coco_ai.trustee_dev.state import StateDir

    record = StateDir(info.trustee_state_dir).get_resource(refs.grant.url_path())
    return record.data if record else None


def _registry(info) -> list[int]:
    from coco_ai.promotion import model_versions

    return sorted(
        v.version
        for v in model_versions(info.registered_model_name, registry_uri=info.registry_uri)
    )


def _stored_checkpoint(info, refs: RunRefs) -> bool:
    return (Path(info.checkpoint_store_uri.removeprefix("file://")) / refs.run_id).exists()


def _assert_failed_closed(info, client, dag_id, run_id, refs, tis, registry_before) -> None:
    summary = {task_id: ti["state"] for task_id, ti in tis.items()}
    assert summary[FINETUNE] == "failed", summary
    assert tis[FINETUNE]["try_number"] == 1, tis[FINETUNE]
    for task_id in ("encrypted_checkpoint_upload", "attested_promotion"):
        assert summary[task_id] == "upstream_failed", summary
    assert summary["revoke_keys"] == "success", summary
    assert _grant(info, refs) is None
    assert refs.grant.uri() in client.xcom(dag_id, run_id, "revoke_keys")["revoked"]
    assert not _stored_checkpoint(info, refs)
    assert _registry(info) == registry_before


def test_api_server_restart_and_a_cleared_finetune_each_end_in_one_promotion(stack):
    """Two runs, one after the other (both promote into one registry, where a checkpoint older
    than the latest version is a refused rollback: the order they finish in must be the order
    they were created in, which side by side the outage would decide).

    Run B: its running fine-tune is cleared over the REST API the UI uses (with its downstream
    tasks). Airflow terminates the running try (on_kill stops its workload) and runs the
    workload again under the run's grant, which the teardown has not revoked yet; the run
    promotes exactly once and the grant is revoked at the end.

    Run A, followed by the demo's REST follower (coco_ai.devstack.demo.run_pipeline): the
    api-server is killed (SIGKILL, a crashed container) and started again while its fine-tune
    runs; the task's Execution API calls and the follower ride out the outage, the run promotes.
    """
    devstack, info, client = stack
    registry_before = _registry(info)

    # B: clear the running fine-tune
    cleared_run = client.trigger(DAG_ID, SHORT_RUN, note="cleared mid fine-tune")["dag_run_id"]
    cleared_refs, first_try = _wait_workload(client, DAG_ID, cleared_run)
    client.request(
        "POST",
        f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": cleared_run,
            "task_ids": [FINETUNE],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    stopped_s = _wait(
        "the first try's workload gone",
        lambda: not set(first_try) & set(_workload_pids(cleared_refs.run_id)),
        90,
    )
    cleared_tis = _wait_final(client, DAG_ID, cleared_run, timeout_s=600)
    states = {task_id: ti["state"] for task_id, ti in cleared_tis.items()}
    assert client.dag_run(DAG_ID, cleared_run)["state"] == "success", states
    assert set(states.values()) == {"success"}, states
    assert cleared_tis[FINETUNE]["try_number"] == 2, cleared_tis[FINETUNE]
    promoted = client.xcom(DAG_ID, cleared_run, "attested_promotion")
    assert promoted["run_id"] == cleared_refs.run_id
    assert _grant(info, cleared_refs) is None

    # A: kill and restart the api-server while its fine-tune runs
    messages: list[str] = []
    outcome: dict = {}

    def follow() -> None:
        try:
            outcome["summary"] = run_pipeline(info, SHORT_RUN, progress=messages.append)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    _wait(
        "the demo's run", lambda: "error" in outcome or any("triggered" in m for m in messages), 60
    )
    assert "error" not in outcome, repr(outcome["error"])
    followed_run = next(m for m in messages if "triggered" in m).split(" run ")[1].split()[0]
    followed_refs, _ = _wait_workload(client, DAG_ID, followed_run)
    (api_server,) = [s for s in info.services if s.name == "airflow-api-server" and s.alive()]
    down_at = time.monotonic()
    stop_service(api_server, grace_s=0, term_signal=signal.SIGKILL)
    # down longer than the REST client's own retries of one call (~16 s), so that the demo's
    # follower itself has to ride out the outage (and says so), as the task's heartbeat does
    time.sleep(sum(_RETRY_DELAYS_S) + 5)
    devstack.start_component("api-server")
    _wait("the api-server back", lambda: _api_up(info.api_url), 120)
    back_s = time.monotonic() - down_at

    follower.join(600)
    assert not follower.is_alive(), "the follower did not return"
    assert "error" not in outcome, f"{outcome.get('error')!r}\n" + "\n".join(messages)
    summary = outcome["summary"]
    tries = {t["task_id"]: (t["state"], t["tries"]) for t in summary["tasks"]}
    assert summary["state"] == "success", tries
    assert tries[FINETUNE] == ("success", 1), tries
    assert any("does not answer" in m for m in messages), messages
    assert any("answers again" in m for m in messages), messages
    assert summary["verify"]["verdict"] == "verified", summary["verify"]
    followed_tis = _wait_final(client, DAG_ID, followed_run)
    assert followed_tis["revoke_keys"]["state"] == "success"
    assert _grant(info, followed_refs) is None

    # exactly one promotion per run
    assert _registry(info) == sorted(
        [*registry_before, promoted["version"], summary["registry"]["version"]]
    )
    print(
        f"api-server back {back_s:.1f}s after the kill, followed run {summary['wall_seconds']}s; "
        f"cleared try's workload stopped {stopped_s:.1f}s after the clear"
    )


def _api_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v2/version", timeout=5, trust_env=False).status_code < 500
    except httpx.TransportError:
        return False


def test_killed_task_processes_and_workload_timeout_each_end_closed(stack):
    """Two runs side by side.

    Run K: the task process of each of key_release, the fine-tune and revoke_keys is killed
    outright (SIGKILL to it alone, as the OOM killer or a lost worker would; no on_kill runs).
    The idempotent steps are retried and recover (the grant written, then revoked); the
    fine-tune (no retries) fails closed, and its TEE processes, in sessions of their own, die
    with its task process.

    Run T (``execution_timeout`` on the workload): its gate's task process is killed too (the
    retry recovers); then Airflow times the workload out, and on_kill stops it.

    Both: nothing is uploaded or promoted, the teardown revokes the grant."""
    _, info, client = stack
    registry_before = _registry(info)
    killed_run = client.trigger(DAG_ID, LONG_RUN, note="task processes killed")["dag_run_id"]
    timed_run = client.trigger(TIMEOUT_DAG_ID, LONG_RUN, note="workload timeout")["dag_run_id"]
    _kill_attempt(client, TIMEOUT_DAG_ID, timed_run, "attestation_gate")
    _kill_attempt(client, DAG_ID, killed_run, "key_release")

    # the timed run first: its workload is stopped WORKLOAD_TIMEOUT_S after its task started
    timed_refs, _ = _wait_workload(client, TIMEOUT_DAG_ID, timed_run)
    timed_seen_at = time.monotonic()
    killed_refs, killed_pids = _wait_workload(client, DAG_ID, killed_run)
    assert _grant(info, killed_refs) is not None and _grant(info, timed_refs) is not None
    # the task runner: the parent of the workload and of its emulator
    (task_process,) = {_parent(pid) for pid in killed_pids} - set(killed_pids)
    assert b"coco-ai-local" not in Path(f"/proc/{task_process}/cmdline").read_bytes()
    killed_at = time.monotonic()
    os.kill(task_process, signal.SIGKILL)
    killed_stop_s = _wait(
        "the killed task's workload gone", lambda: not _workload_pids(killed_refs.run_id), 30
    )
    _kill_attempt(client, DAG_ID, killed_run, "revoke_keys")
    _wait(
        "the timed-out workload gone",
        lambda: not _workload_pids(timed_refs.run_id),
        WORKLOAD_TIMEOUT_S + 90,
    )
    timed_stop_s = time.monotonic() - timed_seen_at

    killed_tis = _wait_final(client, DAG_ID, killed_run)
    timed_tis = _wait_final(client, TIMEOUT_DAG_ID, timed_run)
    _assert_failed_closed(
        info, client, DAG_ID, killed_run, killed_refs, killed_tis, registry_before
    )
    _assert_failed_closed(
        info, client, TIMEOUT_DAG_ID, timed_run, timed_refs, timed_tis, registry_before
    )
    # the killed attempts of the idempotent steps were retried and succeeded
    for tis, task_id in (
        (killed_tis, "key_release"),
        (killed_tis, "revoke_keys"),
        (timed_tis, "attestation_gate"),
    ):
        assert (tis[task_id]["state"], tis[task_id]["try_number"]) == ("success", 2), tis[task_id]
    log = client.task_log(TIMEOUT_DAG_ID, timed_run, FINETUNE, 1)
    assert "timed out" in log, log[-3000:]
    print(
        f"killed fine-tune: workload gone {killed_stop_s:.1f}s after the kill, grant revoked by "
        f"{time.monotonic() - killed_at:.1f}s; timed-out workload gone by {timed_stop_s:.1f}s "
        f"after it was seen running (timeout {WORKLOAD_TIMEOUT_S}s from the task's start)"
    )


def _kill_attempt(client, dag_id: str, run_id: str, task_id: str, timeout_s: float = 240) -> None:
    """SIGKILL the task process of `task_id`'s first attempt as soon as it exists (the Task SDK
    names it ``airflow worker -- <task instance id>``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ti = _states(client, dag_id, run_id).get(task_id) or {}
        assert ti.get("state") not in FINAL, f"{task_id} ended before it could be killed: {ti}"
        if ti.get("state") == "running":
            title = f"airflow worker -- {ti['id']}".encode()
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(title):
                        os.kill(int(proc.name), signal.SIGKILL)
                        return
                except OSError:
                    continue
        time.sleep(0.1)
    raise AssertionError(f"{dag_id} {run_id}: no task process of {task_id} in {timeout_s:.0f}s")


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])
