"""The deferrable Kubernetes path with the triggerer restarting: ConfidentialWorkloadOperator
(kubernetes mode, ``deferrable=True``) creates the confidential pod and defers to the provider's
KubernetesPodTrigger; the trigger runs in a triggerer process, which is stopped or killed, and
a new triggerer process rebuilds the trigger from its stored row (the same encrypted kwargs,
Airflow's own TriggerRunner: tests/faults/trigger_process.py) and carries on; the task resumes in
a fresh operator instance, as a worker rebuilds it.

Real: the operator and the provider (sync and async Kubernetes clients over HTTP), Airflow's
trigger serialisation and TriggerRunner, the Trustee stand-in granting and revoking the run.
Simulated (tests/fake_kube.py): the Kubernetes API server's state, the scheduler, the kubelet
and the Kata/CoCo runtime — the test moves the pod through Pending → Running → Succeeded/Failed
and sets the container's exit code and log; the workload itself does not run. Not covered: the
triggerer's metadata-DB side (a restarted `airflow triggerer` taking over the rows of a dead
one by heartbeat), which Airflow's own tests cover.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from coco_ai.guest.initdata import INITDATA_ANNOTATION
from coco_ai_airflow.workload import ConfidentialWorkloadOperator
from tests.fake_kube import FakeKubeApi, flag
from tests.faults import test_trustee_faults as trustee_faults
from tests.faults.conftest import Stopwatch
from tests.faults.trigger_process import READY

pytestmark = pytest.mark.timeout(180)

inputs = trustee_faults.inputs  # the fixture: a data set and base model to release keys for
_context, _grant = trustee_faults._context, trustee_faults._grant
_key_release, _revoke = trustee_faults._key_release, trustee_faults._revoke
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "confidential-ai"


class _TaskInstance:
    """The task instance a worker hands the operator: its identity and its XCom pushes."""

    def __init__(self, run: str, start_date: dt.datetime) -> None:
        self.dag_id, self.task_id, self.run_id = "fault_pipeline", "confidential_finetune", run
        self.map_index, self.try_number, self.start_date = -1, 1, start_date
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


class _Triggerer:
    """One triggerer process running the trigger row at ``row``."""

    def __init__(self, row: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.trigger_process", str(row)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line == READY, (line, self.proc.stderr.read() if self.proc.poll() else "")

    def stop(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the triggerer did not stop: {self.proc.communicate()}") from None

    def events(self, timeout_s: float = 60) -> list[dict]:
        """The events it fired, once it has fired and ended."""
        from airflow.sdk.serde import deserialize

        out, err = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == 0, err
        return [deserialize(json.loads(line)) for line in out.splitlines() if line[:1] == "{"]


@pytest.fixture
def kube(tmp_path, monkeypatch, trustee):
    api = FakeKubeApi()
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    extra = {"kube_config_path": str(kubeconfig)}
    monkeypatch.setenv(
        "AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection())
    # trigger rows are stored encrypted, as in a deployment with a Fernet key
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "Yz9pRmVSbDJ0cm1nZXItcmVzdGFydC10ZXN0LWtleT0=")
    yield api
    api.close()


def _workload(refs: dict, **kwargs) -> tuple[ConfidentialWorkloadOperator, DAG]:
    with DAG("fault_pipeline", schedule=None, start_date=dt.datetime(2026, 1, 1)) as dag:
        op = ConfidentialWorkloadOperator(
            task_id="confidential_finetune",
            run_refs=refs,
            tee="tdx",
            gpu_count=1,
            image=trustee_faults.IMAGE,
            namespace=NAMESPACE,
            execution_mode="kubernetes",
            deferrable=True,
            poll_interval=0.2,
            startup_check_interval_seconds=1,
            **kwargs,
        )
    return op, dag


def _task_context(run: str, dag) -> dict:
    ti = _TaskInstance(run, dt.datetime.now(dt.UTC))
    return {**_context(run), "ti": ti, "dag": dag}


def _deferred_run(kube: FakeKubeApi, inputs, tmp_path: Path, run: str, **kwargs):
    """Key release, then the workload task up to its deferral: the pod created, the trigger's
    row written where the triggerer processes read it."""
    from airflow.models.trigger import Trigger

    refs = _key_release(inputs).execute(_context(run))
    op, dag = _workload(refs, **kwargs)
    context = _task_context(run, dag)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    assert deferred.value.method_name == "trigger_reentry"
    classpath, trigger_kwargs = deferred.value.trigger.serialize()
    row = tmp_path / "trigger-row.json"
    row.write_text(
        json.dumps(
            {"classpath": classpath, "encrypted_kwargs": Trigger.encrypt_kwargs(trigger_kwargs)}
        )
    )
    namespace, name = kube.only_pod()
    pod = kube.pods[(namespace, name)]
    assert pod["spec"]["runtimeClassName"] == "kata-qemu-nvidia-gpu-tdx"
    assert pod["metadata"]["annotations"][INITDATA_ANNOTATION]
    return refs, row, name


def _polling_the_running_pod(kube: FakeKubeApi, name: str) -> None:
    """Wait until the trigger is in its completion loop (polling every 0.2 s), past the start
    phase: the provider's start phase awaits its event-watch task inside
    ``suppress(CancelledError)`` on the way out, so a cancellation landing there is swallowed
    and the trigger runs on (a race of the provider's, not what these tests are about)."""
    seen = kube.last_seq()
    kube.wait_for("the trigger polling the running pod", lambda: kube.pod_reads(name, seen) >= 6)


def _running_then_down(kube: FakeKubeApi, row: Path, name: str, sig: signal.Signals) -> None:
    """The pod is scheduled and starts while the first triggerer watches it; then that
    triggerer goes down with ``sig``."""
    kube.schedule(NAMESPACE, name)
    first = _Triggerer(row)
    seen = kube.last_seq()
    kube.wait_for("the trigger polling the pending pod", lambda: kube.pod_reads(name, seen) >= 1)
    kube.start(NAMESPACE, name)
    _polling_the_running_pod(kube, name)
    first.stop(sig)
    assert (NAMESPACE, name) in kube.pods, "the triggerer going down deleted the pod"


def _resume(refs: dict, run: str, event: dict, **kwargs):
    """The task resumed on a worker: a fresh operator, the trigger's event."""
    op, dag = _workload(refs, **kwargs)
    context = _task_context(run, dag)
    return context, lambda: op.trigger_reentry(context, event)


def test_trigger_is_rebuilt_after_a_triggerer_restart_and_the_run_resumes(
    trustee, kube, inputs, tmp_path, matrix
):
    run = "k8s-restart"
    refs, row, name = _deferred_run(kube, inputs, tmp_path, run)
    _running_then_down(kube, row, name, signal.SIGTERM)  # a triggerer shutdown (rolling restart)
    clock = Stopwatch()
    second = _Triggerer(row)  # rebuilt from the stored row
    kube.finish(NAMESPACE, name, exit_code=0, logs=["[finetune] done: checkpoint in staging"])
    (event,) = second.events()
    took = clock.elapsed()
    assert event["status"] == "success" and event["name"] == name

    context, reentry = _resume(refs, run, event)
    assert reentry() == {"run_id": refs["run_id"], "staging_uri": refs["staging_uri"]}
    assert context["ti"].xcom["return_value"]["run_id"] == refs["run_id"]
    assert any(r.path.endswith(f"/pods/{name}/log") for r in kube.requests)
    assert kube.deleted == [(NAMESPACE, name)]  # on_finish_action=delete_pod, once
    _revoke().execute(_context(run))  # the DAG's teardown
    assert _grant(trustee, run) is None
    matrix(
        component="Airflow",
        fault="triggerer restart (SIGTERM) while the confidential pod runs (deferrable "
        "KubernetesPodOperator; Kubernetes API and kubelet simulated)",
        step="fine-tune (kubernetes, deferred)",
        outcome="recovered: the trigger rebuilt from its stored row, the pod kept; the task "
        "resumed with the run's references",
        recover_s=took,
        keys_left="none (grant revoked by revoke_keys)",
        artefacts_left="none (pod deleted when done)",
    )


def test_pod_failed_while_the_triggerer_was_down_fails_closed_and_the_grant_is_revoked(
    trustee, kube, inputs, tmp_path, matrix
):
    run = "k8s-failed"
    refs, row, name = _deferred_run(kube, inputs, tmp_path, run)
    assert _grant(trustee, run) is not None
    _running_then_down(kube, row, name, signal.SIGKILL)  # the triggerer crashes
    reason = "finetune: error: key release denied for the grant kbs:///coco-ai-run/grant/x"
    kube.finish(NAMESPACE, name, exit_code=3, message=reason, logs=[reason])
    clock = Stopwatch()
    (event,) = _Triggerer(row).events()
    assert event["status"] == "failed"

    context, reentry = _resume(refs, run, event)
    with pytest.raises(AirflowException, match="returned a failure") as failure:
        reentry()
    took = clock.elapsed()
    assert reason in str(failure.value)  # the workload's own one-line reason
    assert "return_value" not in context["ti"].xcom  # no staging reference handed on
    assert kube.deleted == [(NAMESPACE, name)]
    _revoke().execute(_context(run))  # the DAG's teardown (trigger rule all_done)
    assert _grant(trustee, run) is None
    matrix(
        component="Airflow",
        fault="confidential pod failed while the triggerer was down (SIGKILL; Kubernetes API "
        "and kubelet simulated)",
        step="fine-tune (kubernetes, deferred)",
        outcome="failed closed: the rebuilt trigger reports the failure, the task fails with "
        "the workload's reason, nothing handed on",
        recover_s=took,
        keys_left="none (grant revoked by revoke_keys)",
        artefacts_left="none (pod deleted)",
    )


@pytest.mark.parametrize("how", ["marked failed", "execution_timeout"])
def test_task_killed_or_timed_out_while_deferred_deletes_the_running_pod(
    trustee, kube, inputs, tmp_path, matrix, how
):
    run = f"k8s-{how.replace(' ', '-').replace('_', '-')}"
    timeout = {"execution_timeout": dt.timedelta(seconds=6)} if how == "execution_timeout" else {}
    refs, row, name = _deferred_run(kube, inputs, tmp_path, run, **timeout)
    kube.schedule(NAMESPACE, name)
    kube.start(NAMESPACE, name)
    triggerer = _Triggerer(row)
    clock = Stopwatch()
    if how == "marked failed":
        _polling_the_running_pod(kube, name)
        # Airflow cancels the trigger of a deferred task a user marks failed; on 3.3 its on_kill
        # deletes the pod (the task never resumes on a worker)
        triggerer.stop(signal.SIGUSR1)
        kube.wait_for("the pod deleted", lambda: (NAMESPACE, name) in kube.deleted)
    else:
        # the deadline passes with the pod still running: the trigger fires "timeout"
        (event,) = triggerer.events()
        assert event["status"] == "timeout"
        context, reentry = _resume(refs, run, event, **timeout)
        with pytest.raises(AirflowException, match=r"execution_timeout deadline.*pod was deleted"):
            reentry()
        # at once: the running pod's log was read, not followed to the workload's end
        logs = [r.query for r in kube.requests if r.path.endswith(f"/pods/{name}/log")]
        assert logs and not any(flag(q, "follow") for q in logs), logs
        assert "return_value" not in context["ti"].xcom
    took = clock.elapsed()
    assert kube.deleted == [(NAMESPACE, name)]
    _revoke().execute(_context(run))
    assert _grant(trustee, run) is None
    matrix(
        component="Airflow",
        fault=(
            "deferred task marked failed"
            if how == "marked failed"
            else "task's execution_timeout passed while deferred"
        )
        + " with the confidential pod running (Kubernetes API and kubelet simulated)",
        step="fine-tune (kubernetes, deferred)",
        outcome="failed closed: the pod deleted "
        + ("by the trigger's on_kill" if how == "marked failed" else "by the resumed task"),
        recover_s=took,
        keys_left="none (grant revoked by revoke_keys)",
        artefacts_left="none",
    )
