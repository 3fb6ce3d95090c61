"""Attestation gate, key release and revocation against a real Trustee stand-in."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG

from coco_ai import policies
from coco_ai.guest.initdata import Initdata
from operators.attestation import AttestationGateError, AttestationGateOperator
from operators.keys import KeyReleaseOperator, KeyRevokeOperator

IMAGE = "registry.example/coco-ai/finetune@sha256:" + "ab" * 32


def _context(run_id: str = "manual__2026-11-26T01:02:03+00:00", events=None) -> dict:
    return {"run_id": run_id, "triggering_asset_events": events or {}}


@pytest.fixture
def inputs(tmp_path):
    dataset = tmp_path / "store" / "support-v1.enc"
    dataset.parent.mkdir()
    dataset.write_bytes(b"ciphertext of the data set")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return SimpleNamespace(dataset_uri=f"file://{dataset}", model=str(model))


def _key_release(inputs, **kwargs) -> KeyReleaseOperator:
    with DAG("unit_pipeline", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return KeyReleaseOperator(
            task_id="key_release",
            dataset_uri=inputs.dataset_uri,
            dataset_key_uri="kbs:///coco-ai/dataset-key/support-v1",
            base_model=inputs.model,
            image=IMAGE,
            **kwargs,
        )


def _revoke(refs) -> KeyRevokeOperator:
    with DAG("unit_pipeline", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return KeyRevokeOperator(task_id="revoke_keys", run_refs=refs)


def test_key_release_provisions_a_bound_key_and_returns_references_only(trustee_conn, inputs):
    refs = _key_release(inputs).execute(_context())
    path = refs["checkpoint_key_uri"].removeprefix("kbs:///")
    assert path.startswith("coco-ai-run/checkpoint-key/unit_pipeline-manual__2026-11-26T01-02-03")
    key = trustee_conn.resource(path)
    assert key is not None and len(key) == 32
    blob = json.dumps(refs).encode()
    assert key not in blob and key.hex().encode() not in blob
    # the initdata names this run, its keys and its image; its digest is what was returned
    initdata = Initdata.from_annotation(refs["initdata_annotation"])
    assert refs["initdata_digest"] == f"sha384:{initdata.digest().hex()}"
    assert initdata.claim("io.coco-ai.run-id") == refs["run_id"]
    assert initdata.claim("io.coco-ai.checkpoint-key") == refs["checkpoint_key_uri"]
    assert initdata.claim("io.coco-ai.dataset-key") == "kbs:///coco-ai/dataset-key/support-v1"
    assert initdata.claim("io.coco-ai.image-digest") == IMAGE.partition("@")[2]
    assert initdata.kbs_url == trustee_conn.url
    assert refs["dataset_digest"].startswith("sha256:")
    assert refs["base_model_digest"].startswith("sha256:")

    result = _revoke(refs).execute(_context())
    assert refs["checkpoint_key_uri"] in result["revoked"]
    assert trustee_conn.resource(path) is None


def test_two_runs_get_two_different_keys(trustee_conn, inputs):
    a = _key_release(inputs).execute(_context("manual__a"))
    b = _key_release(inputs).execute(_context("manual__b"))
    assert a["run_id"] != b["run_id"]
    assert trustee_conn.resource(a["checkpoint_key_uri"][7:]) != trustee_conn.resource(
        b["checkpoint_key_uri"][7:]
    )


def test_revoke_without_refs_still_removes_the_runs_key(trustee_conn, inputs):
    refs = _key_release(inputs).execute(_context("manual__half"))
    _revoke(None).execute(_context("manual__half"))
    assert trustee_conn.resource(refs["checkpoint_key_uri"][7:]) is None


def test_asset_event_picks_the_new_dataset_version(trustee_conn, inputs, tmp_path):
    v2 = tmp_path / "store" / "support-v2.enc"
    v2.write_bytes(b"version 2")
    event = SimpleNamespace(
        extra={"dataset_uri": f"file://{v2}", "dataset_key_uri": "kbs:///coco-ai/dataset-key/v2"}
    )
    refs = _key_release(inputs).execute(_context("asset__x", events={"data": [event]}))
    assert refs["dataset_uri"] == f"file://{v2}"
    assert refs["dataset_key_uri"] == "kbs:///coco-ai/dataset-key/v2"
    _revoke(refs).execute(_context("asset__x"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_key_uri": "kbs:///a/../b"}, r"\.\."),
        ({"image": "registry.example/coco-ai/finetune:latest"}, "pinned by digest"),
    ],
)
def test_key_release_refuses_bad_inputs_before_any_key_exists(
    trustee_conn, inputs, kwargs, message
):
    with DAG("unit_bad", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        op = KeyReleaseOperator(
            task_id="key_release",
            dataset_uri=inputs.dataset_uri,
            dataset_key_uri=kwargs.get("dataset_key_uri", "kbs:///coco-ai/dataset-key/x"),
            base_model=inputs.model,
            image=kwargs.get("image", IMAGE),
        )
    with pytest.raises(ValueError, match=message):
        op.execute(_context("manual__bad"))
    assert not list((trustee_conn.state_dir / "resources").glob("coco-ai-run/*/unit_bad-*"))


# ---- attestation gate ---------------------------------------------------------------------


def _gate(**kwargs) -> AttestationGateOperator:
    with DAG("unit_gate", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return AttestationGateOperator(task_id="attestation_gate", policy_set="dev", **kwargs)


def _deployed_resource_policy(trustee) -> str | None:
    from coco_ai.trustee_dev.state import StateDir

    return StateDir(trustee.state_dir).get_policy(policies.RESOURCE_POLICY_ID)


def test_gate_refuses_a_policy_it_cannot_verify(trustee_conn):
    # The stand-in, like Trustee v0.20+, lists policy ids instead of returning the policy text.
    with pytest.raises(AttestationGateError, match=r"cannot verify the resource policy"):
        _gate(sync_policies=False).execute(_context())


def test_gate_syncs_the_repository_policies_when_allowed(trustee_conn):
    original = policies.load("resource_dev")
    with trustee_conn.admin() as admin:
        admin.set_resource_policy(original + "\n# edited out of band\n")
    assert _deployed_resource_policy(trustee_conn) != original
    summary = _gate(sync_policies=True).execute(_context())
    assert summary["resource_policy"] == {
        "file": "resource_dev.rego",
        "sha256": policies.digest("resource_dev"),
        "state": "synced",
    }
    assert _deployed_resource_policy(trustee_conn) == original
    assert summary["attestation_policies"]["default_cpu"] == {
        "file": "attestation_cpu_sample.rego",
        "sha256": policies.digest("attestation_cpu_sample"),
        "state": "synced",
    }
    assert set(summary["reference_values"]) == set(policies.DEV_SAMPLE_REFERENCE_VALUES)


def test_gate_requires_reference_values(trustee_conn):
    gate = _gate(sync_policies=True, required_reference_values=["svn", "tdx_mr_td"])
    with pytest.raises(AttestationGateError, match=r"reference values missing.*tdx_mr_td"):
        gate.execute(_context())


def test_gate_refuses_plain_http(trustee, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(kbs_url="http://127.0.0.1:1")
    )
    with pytest.raises(AttestationGateError, match="not served over TLS"):
        _gate().execute(_context())
