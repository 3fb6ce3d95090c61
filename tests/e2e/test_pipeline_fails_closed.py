"""Each gate refuses on its own: the run fails at the right task, the registry is untouched and
the run's key is revoked anyway."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from coco_ai import policies
from coco_ai.devstack import DAG_ID
from coco_ai.devstack.stack import local_image_reference
from coco_ai.runs import RunRefs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def _trigger(stack, conf: dict, note: str) -> str:
    client = stack.info.client()
    try:
        return client.trigger(DAG_ID, conf, note=note)["dag_run_id"]
    finally:
        client.close()


def _task_log(stack, run_id: str, task_id: str) -> str:
    logs = (Path(stack.info.root) / "airflow" / "logs").rglob("*.log")
    return "\n".join(
        p.read_text(errors="replace")
        for p in logs
        if f"task_id={task_id}" in str(p) and run_id.replace(":", "") in str(p).replace(":", "")
    )


def _assert_failed_at(run, task_id: str) -> None:
    states = {t: ti["state"] for t, ti in run.tasks.items()}
    assert run.state == "failed", states
    assert states[task_id] == "failed", states
    assert states["revoke_keys"] == "success", states
    order = [
        "attestation_gate",
        "key_release",
        "confidential_finetune",
        "encrypted_checkpoint_upload",
        "attested_promotion",
    ]
    for later in order[order.index(task_id) + 1 :]:
        assert states[later] == "upstream_failed", states
    for earlier in order[: order.index(task_id)]:
        assert states[earlier] == "success", states


def test_the_data_owners_policy_decides_and_airflow_cannot_change_it(e2e_stack, follow):
    """Least power: the gate no longer reads policies (Airflow's credential may not). The data
    owner's resource policy, edited to release nothing, stops the run where a key is asked
    for; Airflow's own credential is refused when it tries to put a permissive one back."""
    from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.kbs.errors import AdminAuthError

    before = e2e_stack.registry_versions()
    original = policies.resource_policy_text("dev", [local_image_reference()])
    deny_all = "package policy\n\nimport rego.v1\n\ndefault allow := false\n"
    ca = (Path(e2e_stack.info.trustee_state_dir) / "tls-ca" / "ca.pem").read_bytes()
    airflow = KbsAdminClient(
        e2e_stack.info.trustee_url,
        auth=SelfSignedAdminAuth((e2e_stack.root / "keys" / "airflow-key.pem").read_bytes()),
        ca_cert=ca,
    )
    with e2e_stack.admin() as admin:
        admin.set_resource_policy(deny_all)
    try:
        with airflow, pytest.raises(AdminAuthError):
            airflow.set_resource_policy(original)
        run = follow(_trigger(e2e_stack, {}, "e2e: data owner's policy denies"), timeout_s=300)
    finally:
        with e2e_stack.admin() as admin:
            admin.set_resource_policy(original)
    _assert_failed_at(run, "confidential_finetune")
    assert "PolicyDeny" in _task_log(e2e_stack, run.run_id, "confidential_finetune")
    assert e2e_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None  # revoked
    assert e2e_stack.registry_versions() == before


def test_broker_refuses_keys_without_gpu_evidence(e2e_stack, follow):
    """gpu_count 0: the emulator presents no GPU; the dev policy requires one affirming GPU."""
    before = e2e_stack.registry_versions()
    run = follow(_trigger(e2e_stack, {"gpu_count": 0}, "e2e: no GPU evidence"), timeout_s=300)
    _assert_failed_at(run, "confidential_finetune")
    assert "PolicyDeny" in _task_log(e2e_stack, run.run_id, "confidential_finetune")
    path = RunRefs.from_xcom(run.refs).grant.url_path()
    assert e2e_stack.resource(path) is None  # revoked
    assert e2e_stack.registry_versions() == before


def test_tampered_checkpoint_is_never_promoted(e2e_stack, follow, quick_run):
    """One ciphertext byte flipped in the checkpoint store after upload, before promotion."""
    before = e2e_stack.registry_versions()
    store = Path(e2e_stack.info.checkpoint_store_uri.removeprefix("file://"))
    tampered: list[Path] = []
    stop = threading.Event()

    def tamper_when_stored(refs: dict) -> None:
        def watch() -> None:
            checkpoint = store / refs["run_id"]
            while not stop.is_set():
                if (checkpoint / "manifest.json").exists():  # written last by the upload
                    victim = max(p for p in (checkpoint / "objects").rglob("*") if p.is_file())
                    data = bytearray(victim.read_bytes())
                    data[len(data) // 2] ^= 0x01
                    victim.write_bytes(bytes(data))
                    tampered.append(victim)
                    return
                time.sleep(0.01)

        threading.Thread(target=watch, daemon=True).start()

    try:
        run = follow(
            _trigger(e2e_stack, quick_run, "e2e: tampered checkpoint"),
            timeout_s=300,
            on_refs=tamper_when_stored,
        )
    finally:
        stop.set()
    assert tampered, "the checkpoint never reached the store"
    _assert_failed_at(run, "attested_promotion")
    log = _task_log(e2e_stack, run.run_id, "attested_promotion")
    assert "ciphertext BLAKE3 differs from the manifest" in log, log[-2000:]
    assert e2e_stack.registry_versions() == before
    assert e2e_stack.resource(RunRefs.from_xcom(run.refs).grant.url_path()) is None
