"""Attestation gate, key release and revocation against a real Trustee stand-in."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG

from coco_ai import policies
from coco_ai.digest import Digest
from coco_ai.guest.initdata import Initdata
from coco_ai.run_keys import Grant
from coco_ai.runs import RunRefs
from coco_ai.workloads.models import model_digest
from coco_ai_airflow.attestation import AttestationGateError, AttestationGateOperator
from coco_ai_airflow.keys import KeyReleaseOperator, KeyRevokeOperator
from tests.code_binding import APPROVED_IMAGE

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


def _key_release(
    inputs,
    *,
    dag_id: str = "unit_pipeline",
    dataset_key_uri: str = "kbs:///coco-ai/dataset-key/support-v1",
    base_model: str | None = None,
    image: str = IMAGE,
) -> KeyReleaseOperator:
    with DAG(dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return KeyReleaseOperator(
            task_id="key_release",
            workload="finetune",
            inputs={
                "dataset": {"uri": inputs.dataset_uri, "key_uri": dataset_key_uri},
                "base_model": {"uri": base_model or inputs.model},
            },
            image=image,
            staging_root="file:///tmp/unit-staging",
        )


def _grant_path(refs: dict) -> str:
    return RunRefs.from_xcom(refs).grant.url_path()


def _revoke() -> KeyRevokeOperator:
    with DAG("unit_pipeline", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return KeyRevokeOperator(task_id="revoke_keys")


def test_key_release_grants_the_run_and_returns_references_only(trustee_conn, inputs):
    refs = _key_release(inputs).execute(_context())
    assert refs["run_id"].startswith("unit_pipeline-manual__2026-11-26T01-02-03")
    # the grant: this run's id and initdata digest, public, at a path fixed by the run id
    grant = Grant.from_bytes(trustee_conn.resource(_grant_path(refs)))
    assert grant == Grant(
        refs["run_id"], Digest.parse(refs["initdata_digest"], algorithms=("sha384",))
    )
    assert refs["grant_uri"] == f"kbs:///coco-ai-run/grant/{refs['run_id']}"
    assert refs["checkpoint_key_uri"] == f"kbs:///coco-ai-run/checkpoint-key/{refs['run_id']}"
    assert trustee_conn.resource(RunRefs.from_xcom(refs).checkpoint_key.url_path()) is None
    # the initdata names this run, its keys and its image; its digest is what was returned
    initdata = Initdata.from_annotation(refs["initdata_annotation"])
    assert refs["initdata_digest"] == f"sha384:{initdata.digest().hex()}"
    assert initdata.claim("io.coco-ai.run-id") == refs["run_id"]
    assert initdata.claim("io.coco-ai.checkpoint-key") == refs["checkpoint_key_uri"]
    assert initdata.claim("io.coco-ai.run-grant") == refs["grant_uri"]
    assert initdata.claim("io.coco-ai.run-key-root") == "kbs:///coco-ai/run-key-root/v1"
    assert initdata.claim("io.coco-ai.dataset-key") == "kbs:///coco-ai/dataset-key/support-v1"
    assert initdata.claim("io.coco-ai.image-digest") == IMAGE.partition("@")[2]
    assert initdata.claim("io.coco-ai.workload") == "finetune"
    assert initdata.kbs_url == trustee_conn.url
    # the inputs are pinned by digest, taken without any key
    assert refs["inputs"]["dataset"]["digest"] == (
        "sha256:" + hashlib.sha256(b"ciphertext of the data set").hexdigest()
    )
    assert refs["inputs"]["base_model"]["digest"] == model_digest(inputs.model)
    assert refs["staging_uri"] == f"file:///tmp/unit-staging/{refs['run_id']}"
    assert RunRefs.from_xcom(refs).expected_claims() == {
        k: v for k, v in initdata.claims().items() if k.startswith("io.coco-ai.")
    }

    result = _revoke().execute(_context())
    assert result["revoked"] == [refs["grant_uri"]]
    assert trustee_conn.resource(_grant_path(refs)) is None


def test_two_runs_get_two_grants_for_two_initdata(trustee_conn, inputs):
    a = _key_release(inputs).execute(_context("manual__a"))
    b = _key_release(inputs).execute(_context("manual__b"))
    assert a["run_id"] != b["run_id"] and a["initdata_digest"] != b["initdata_digest"]
    assert Grant.from_bytes(trustee_conn.resource(_grant_path(a))).run_id == a["run_id"]
    assert Grant.from_bytes(trustee_conn.resource(_grant_path(b))).run_id == b["run_id"]
    for run in ("manual__a", "manual__b"):
        _revoke().execute(_context(run))


def test_key_release_is_idempotent(trustee_conn, inputs):
    first = _key_release(inputs).execute(_context("manual__again"))
    assert _key_release(inputs).execute(_context("manual__again")) == first
    _revoke().execute(_context("manual__again"))


def test_revoke_is_safe_to_repeat_and_after_a_failed_key_release(trustee_conn, inputs):
    # Trustee v0.20/v0.21 answer DELETE of an absent resource with 401 PluginInternalError;
    # revoking writes a tombstone first, so a run never granted (or revoked already) is fine.
    for _ in range(2):
        result = _revoke().execute(_context("manual__never-granted"))
    assert trustee_conn.resource(result["revoked"][0].removeprefix("kbs:///")) is None


def test_base_model_in_an_object_store_is_pinned_by_the_same_digest(
    trustee_conn, inputs, moto_endpoint, s3_admin, monkeypatch
):
    # Airflow workers reach S3 with the standard AWS environment (no credential in the DAG).
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3_admin.create_bucket(Bucket="base-models")
    for f in Path(inputs.model).iterdir():
        s3_admin.put_object(Bucket="base-models", Key=f"smol/{f.name}", Body=f.read_bytes())
    refs = _key_release(inputs, base_model="s3://base-models/smol").execute(_context("s3__m"))
    assert refs["inputs"]["base_model"] == {
        "uri": "s3://base-models/smol",
        "digest": model_digest(inputs.model),  # the same files give the same digest anywhere
        "key_uri": None,
    }
    _revoke().execute(_context("s3__m"))

    with pytest.raises(ValueError, match="holds no files"):
        _key_release(inputs, base_model="s3://base-models/absent").execute(_context("s3__x"))


def test_asset_event_picks_the_new_dataset_version(trustee_conn, inputs, tmp_path):
    v2 = tmp_path / "store" / "support-v2.enc"
    v2.write_bytes(b"version 2")
    event = SimpleNamespace(
        extra={"dataset_uri": f"file://{v2}", "dataset_key_uri": "kbs:///coco-ai/dataset-key/v2"}
    )
    refs = _key_release(inputs).execute(_context("asset__x", events={"data": [event]}))
    assert refs["inputs"]["dataset"]["uri"] == f"file://{v2}"
    assert refs["inputs"]["dataset"]["key_uri"] == "kbs:///coco-ai/dataset-key/v2"
    _revoke().execute(_context("asset__x"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset_key_uri": "kbs:///a/../b"}, r"\.\."),
        ({"dataset_key_uri": ""}, "no key for dataset"),
        ({"image": "registry.example/coco-ai/finetune:latest"}, "pinned by digest"),
        ({"base_model": "/nonexistent/model"}, "does not exist"),
    ],
)
def test_key_release_refuses_bad_inputs_before_any_key_exists(
    trustee_conn, inputs, kwargs, message
):
    op = _key_release(inputs, dag_id="unit_bad", **kwargs)
    with pytest.raises(ValueError, match=message):
        op.execute(_context("manual__bad"))
    assert not list((trustee_conn.state_dir / "resources").glob("coco-ai-run/*/unit_bad-*"))


# ---- attestation gate ---------------------------------------------------------------------


def _gate(**kwargs) -> AttestationGateOperator:
    kwargs.setdefault("approved_images", [APPROVED_IMAGE])
    with DAG("unit_gate", schedule=None, start_date=dt.datetime(2026, 1, 1)):
        return AttestationGateOperator(task_id="attestation_gate", policy_set="dev", **kwargs)


def _deployed_resource_policy(trustee) -> str | None:
    from coco_ai.trustee_dev.state import StateDir

    return StateDir(trustee.state_dir).get_policy(policies.RESOURCE_POLICY_ID)


@pytest.fixture
def owner_conn(trustee, monkeypatch):
    """The development convenience: the connection declares the data owner's credential."""
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(credential="data-owner"))
    return trustee


def test_gate_with_airflows_credential_reads_no_policy(trustee_conn):
    """Least power: the gate checks reachability and names what the data owner must have
    loaded; it reads nothing Airflow's credential may not read, so an out-of-band edit is not
    its to see (the resource policy is the data owner's), and the edit stays."""
    edited = policies.load("resource_dev") + "\n# edited out of band\n"
    with trustee_conn.admin() as admin:
        admin.set_resource_policy(edited)
    try:
        summary = _gate().execute(_context())
        assert summary["credential"] == "airflow"
        rendered = policies.resource_policy_text("dev", [APPROVED_IMAGE])
        assert summary["resource_policy"] == {
            "file": "resource_dev.rego",
            "sha256": hashlib.sha256(rendered.encode()).hexdigest(),
            "state": "not checked: the data owner's (Airflow's credential cannot read it)",
        }
        assert set(summary["attestation_policies"]) == {"default_cpu", "default_gpu"}
        assert summary["reference_values_state"].startswith("not checked")
        assert _deployed_resource_policy(trustee_conn) == edited
    finally:
        with trustee_conn.admin() as admin:
            admin.set_resource_policy(policies.load("resource_dev"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sync_policies": True}, "policy sync was requested.*Airflow's own credential"),
        ({"required_reference_values": ["svn"]}, "cannot be checked with Airflow's own"),
    ],
)
def test_gate_with_airflows_credential_refuses_what_it_cannot_do(trustee_conn, kwargs, message):
    before = _deployed_resource_policy(trustee_conn)
    with pytest.raises(AttestationGateError, match=message):
        _gate(**kwargs).execute(_context())
    assert _deployed_resource_policy(trustee_conn) == before


def test_airflows_credential_cannot_write_the_policy_even_when_asked_directly(trustee_conn):
    """What the gate no longer tries: the credential itself is refused by Trustee."""
    from coco_ai.kbs.errors import AdminAuthError
    from coco_ai_airflow.hooks.trustee import TrusteeHook

    before = _deployed_resource_policy(trustee_conn)
    with TrusteeHook().get_conn() as client:
        with pytest.raises(AdminAuthError):
            client.set_resource_policy("package policy\ndefault allow := true\n")
        with pytest.raises(AdminAuthError):
            client.get_resource_policy()
    assert _deployed_resource_policy(trustee_conn) == before


def test_gate_refuses_a_policy_it_cannot_verify(owner_conn):
    # The stand-in, like Trustee v0.20+, lists policy ids instead of returning the policy text.
    with pytest.raises(AttestationGateError, match=r"cannot verify the resource policy"):
        _gate(sync_policies=False).execute(_context())


def test_gate_syncs_the_repository_policies_when_allowed(owner_conn):
    original = policies.resource_policy_text("dev", [APPROVED_IMAGE])
    with owner_conn.admin() as admin:
        admin.set_resource_policy(original + "\n# edited out of band\n")
    assert _deployed_resource_policy(owner_conn) != original
    summary = _gate(sync_policies=True).execute(_context())
    assert summary["credential"] == "data-owner"
    assert summary["resource_policy"] == {
        "file": "resource_dev.rego",
        "sha256": hashlib.sha256(original.encode()).hexdigest(),
        "state": "synced",
    }
    assert _deployed_resource_policy(owner_conn) == original
    assert summary["attestation_policies"]["default_cpu"] == {
        "file": "attestation_cpu_sample.rego",
        "sha256": policies.digest("attestation_cpu_sample"),
        "state": "synced",
    }
    assert set(summary["reference_values"]) == set(policies.DEV_SAMPLE_REFERENCE_VALUES)


def test_gate_requires_an_approved_image(owner_conn):
    """Without an approved image there is no policy to check or upload: the gate fails before
    touching Trustee's policy."""
    before = _deployed_resource_policy(owner_conn)
    for approved in ([], ["registry.example/coco-ai/finetune:latest"]):
        with pytest.raises(AttestationGateError, match="approved workload images"):
            _gate(sync_policies=True, approved_images=approved).execute(_context())
    assert _deployed_resource_policy(owner_conn) == before


def test_gate_requires_reference_values(owner_conn):
    gate = _gate(sync_policies=True, required_reference_values=["svn", "tdx_mr_td"])
    with pytest.raises(AttestationGateError, match=r"reference values missing.*tdx_mr_td"):
        gate.execute(_context())


def test_gate_refuses_plain_http(trustee, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(kbs_url="http://127.0.0.1:1")
    )
    with pytest.raises(AttestationGateError, match="not served over TLS"):
        _gate().execute(_context())
