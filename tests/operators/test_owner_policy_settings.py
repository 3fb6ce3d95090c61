"""Where the promotion and upload operators take trust from: the deployment's [coco_ai]
owner_public_key + owner_policy (verified on every read), never Connections, Variables or Params;
and run parameters may only narrow the owner's policy."""

from __future__ import annotations

import pytest
from pki import pem, self_signed_ca

from coco_ai.owner_policy import FORMAT, OwnerPolicy, OwnerPolicyError, generate_owner_key
from coco_ai_airflow._settings import owner_policy
from coco_ai_airflow.promotion import narrowing


@pytest.fixture
def owner_files(tmp_path, monkeypatch):
    """A signed owner policy and the owner's public key, configured as the deployment does."""
    private, public = generate_owner_key()
    _, anchor = self_signed_ca("token CA")
    _, promotion_public = generate_owner_key()
    policy = OwnerPolicy.from_dict(
        {
            "format": FORMAT,
            "policy_id": "settings-test",
            "version": 3,
            "model_name": "m",
            "approved": {"images": ["registry.example/app@sha256:" + "1" * 64]},
            "attestation": {
                "trust_anchor_pem": pem(anchor).decode(),
                "token_signer_pem": pem(anchor).decode(),
                "min_gpus": 2,
            },
            "thresholds": {"max_eval_loss": 2.0, "min_relative_improvement": 0.1},
            "promotion_signers": [promotion_public.decode()],
        }
    )
    (tmp_path / "owner.pub").write_bytes(public)
    (tmp_path / "policy.jws").write_text(policy.sign(private))
    monkeypatch.setenv("AIRFLOW__COCO_AI__OWNER_PUBLIC_KEY", str(tmp_path / "owner.pub"))
    monkeypatch.setenv("AIRFLOW__COCO_AI__OWNER_POLICY", str(tmp_path / "policy.jws"))
    return policy, private, tmp_path


def test_the_configured_policy_is_verified_with_the_owner_key(owner_files):
    policy, _, _ = owner_files
    loaded = owner_policy()
    assert loaded.policy == policy
    assert loaded.digest.startswith("sha256:")


def test_a_policy_signed_by_anyone_else_is_refused(owner_files):
    policy, _, tmp_path = owner_files
    intruder, _ = generate_owner_key()
    widened = OwnerPolicy.from_dict(
        {
            **policy.to_dict(),
            "attestation": {
                **policy.to_dict()["attestation"],
                "min_gpus": 0,
                "allow_development_evidence": True,
            },
        }
    )
    (tmp_path / "policy.jws").write_text(widened.sign(intruder))
    with pytest.raises(OwnerPolicyError, match="does not verify with the data owner's key"):
        owner_policy()


def test_an_edited_policy_is_refused(owner_files):
    _, _, tmp_path = owner_files
    header, payload, signature = (tmp_path / "policy.jws").read_text().split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    (tmp_path / "policy.jws").write_text(".".join((header, flipped, signature)))
    with pytest.raises(OwnerPolicyError):
        owner_policy()


@pytest.mark.parametrize("option", ["OWNER_PUBLIC_KEY", "OWNER_POLICY"])
def test_without_deployment_configuration_nothing_is_trusted(owner_files, monkeypatch, option):
    monkeypatch.setenv(f"AIRFLOW__COCO_AI__{option}", "")
    with pytest.raises(ValueError, match=option.lower()):
        owner_policy()


@pytest.mark.parametrize(
    ("min_gpus", "thresholds", "widened"),
    [
        (0, {}, "min_gpus=0 is below the data owner's minimum 2"),  # the gpu_count=0 attack
        ("1", {}, "min_gpus=1 is below"),
        (None, {"min_relative_improvement": -1}, "min_relative_improvement=-1.0 is looser"),
        (None, {"max_eval_loss": "9"}, "max_eval_loss=9.0 is looser"),
    ],
)
def test_run_parameters_cannot_widen_the_policy(owner_files, min_gpus, thresholds, widened):
    policy, _, _ = owner_files
    with pytest.raises(OwnerPolicyError, match=widened):
        policy.narrowed(**narrowing(min_gpus, thresholds))


def test_run_parameters_may_narrow_and_empty_ones_keep_the_owners(owner_files):
    policy, _, _ = owner_files
    assert (
        policy.narrowed(**narrowing("", {"max_eval_loss": "", "min_relative_improvement": None}))
        == policy
    )
    tighter = policy.narrowed(**narrowing("4", {"max_eval_loss": 1.5}))
    assert (tighter.min_gpus, tighter.max_eval_loss) == (4, 1.5)
    assert tighter.min_relative_improvement == policy.min_relative_improvement


def test_unknown_threshold_names_are_refused():
    with pytest.raises(ValueError, match="unknown threshold"):
        narrowing(None, {"max_eval_los": 1.0})


def test_narrowing_takes_the_thresholds_of_the_runs_kind():
    assert narrowing("", {"min_hit_rate_at_k": "0.9", "min_mrr_at_k": ""}, "rag_index") == {
        "min_hit_rate_at_k": 0.9
    }
    with pytest.raises(ValueError, match="unknown threshold"):
        narrowing(None, {"max_eval_loss": 1.0}, "rag_index")
