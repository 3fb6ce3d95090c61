"""The local execution mode's guards (its full run is covered by tests/e2e)."""

from __future__ import annotations

import logging

import pytest

from coco_ai.guest.initdata import build_initdata
from coco_ai_airflow.execution import local
from coco_ai_airflow.workload import ConfidentialWorkloadOperator


def _op(tee: str) -> ConfidentialWorkloadOperator:
    return ConfidentialWorkloadOperator(
        task_id="confidential_finetune",
        run_refs={"run_id": "r"},
        tee=tee,
        execution_mode="local",
    )


@pytest.mark.parametrize("tee", ["tdx", "snp"])
def test_local_mode_never_pretends_to_be_real_hardware(tee):
    with pytest.raises(local.LocalWorkloadError, match=f"tee='{tee}' needs execution_mode"):
        local.LocalRun(
            module="coco_ai.workloads.finetune",
            config={"run_id": "r"},
            initdata=build_initdata("https://127.0.0.1:1", None),
            tee=tee,
            gpus=1,
            deadline_s=None,
            log=logging.getLogger(__name__),
        )


def test_tee_processes_get_no_airflow_or_cloud_environment(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", '{"extra": {"admin_secret": "x"}}')
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "fernet")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    env = local.tee_environment()
    assert not [k for k in env if k.startswith("AIRFLOW") or k.startswith("AWS")]
    assert env["HF_HUB_OFFLINE"] == "1" and "PATH" in env


def test_guest_command_is_a_json_argv(monkeypatch):
    monkeypatch.setenv("AIRFLOW__COCO_AI__LOCAL_GUEST_COMMAND", '["/opt/guest", "--flag"]')
    assert local.guest_command() == ["/opt/guest", "--flag"]
    monkeypatch.setenv("AIRFLOW__COCO_AI__LOCAL_GUEST_COMMAND", '"/opt/guest --flag"')
    with pytest.raises(local.LocalWorkloadError, match="JSON list"):
        local.guest_command()
    monkeypatch.delenv("AIRFLOW__COCO_AI__LOCAL_GUEST_COMMAND")
    assert local.guest_command()[1:] == ["guest", "serve"]


def test_unknown_execution_mode_is_refused():
    op = _op("sample")
    op.execution_mode = "docker"
    with pytest.raises(ValueError, match="execution mode 'docker'"):
        op.resolved_mode()
