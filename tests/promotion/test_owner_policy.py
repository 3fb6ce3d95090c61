"""The data owner's signed policy (coco_ai.owner_policy): every field validated with a named
reason, ES256 JWS under the owner's key only, and run parameters that may only narrow it."""

from __future__ import annotations

import base64
import json
import re

import pytest

from coco_ai.owner_policy import (
    FORMAT,
    JWS_TYPE,
    OwnerPolicy,
    OwnerPolicyError,
    generate_owner_key,
    verify_owner_policy,
)

DIGEST = "sha256:" + "a" * 64


def test_a_signed_policy_round_trips(owner):
    doc = owner.policy_doc()
    signed = owner.sign()
    assert signed.policy.to_dict() == OwnerPolicy.from_dict(doc).to_dict()
    assert signed.policy == OwnerPolicy.from_dict(signed.policy.to_dict())
    assert signed.digest.startswith("sha256:") and len(signed.digest) == 71
    header = json.loads(base64.urlsafe_b64decode(signed.jws.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["typ"] == JWS_TYPE
    assert verify_owner_policy(signed.jws.encode() + b"\n", owner.public_pem) == signed


def test_defaults_are_the_strict_ones(owner):
    doc = owner.policy_doc()
    for name in ("appraisal_policy_ids", "allow_development_evidence", "min_gpus"):
        del doc["attestation"][name]
    for name in ("thresholds", "champion"):
        del doc[name]
    policy = OwnerPolicy.from_dict(doc)
    assert policy.appraisal_policy_ids == {"default"}
    assert policy.allow_development_evidence is False
    assert policy.min_gpus == 1
    assert policy.max_eval_loss is None and policy.champion_max_regression is None


PEM_KEY = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"

# (overrides as in DataOwner.policy_doc, the reason the refusal must name)
MALFORMED = {
    "format": ({"format": "coco-ai/owner-policy/v0"}, "format must be 'coco-ai/owner-policy/v1'"),
    "unknown-field": ({"extra": 1}, "unknown field(s) ['extra']"),
    "policy-id-empty": ({"policy_id": ""}, "policy_id must be 1-128"),
    "policy-id-slash": ({"policy_id": "a/b"}, "policy_id must be 1-128"),
    "version-zero": ({"version": 0}, "version must be an integer >= 1"),
    "version-bool": ({"version": True}, "version must be an integer >= 1"),
    "version-string": ({"version": "2"}, "version must be an integer >= 1"),
    "model-name-blank": ({"model_name": " "}, "model_name must be a non-empty string"),
    "approved-not-object": ({"approved": []}, "approved must be an object"),
    "approved-unknown": ({"approved__models": []}, "approved: unknown field(s) ['models']"),
    "base-models-not-list": ({"approved__base_models": DIGEST}, "approved.base_models must be"),
    "datasets-bad-digest": ({"approved__datasets": ["v1"]}, "approved.datasets: 'v1' is not"),
    "recipes-bad-digest": (
        {"approved__training_recipes": ["sha256:abc"]},
        "approved.training_recipes: 'sha256:abc'",
    ),
    "images-bad-digest": (
        {"approved__images": ["registry/x:latest"]},
        "approved.images: image 'registry/x:latest' must be a fully qualified reference",
    ),
    "attestation-not-object": ({"attestation": "x"}, "attestation must be an object"),
    "attestation-unknown": ({"attestation__skip": True}, "attestation: unknown field(s)"),
    "trust-anchor-not-pem": (
        {"attestation__trust_anchor_pem": "x"},
        "attestation.trust_anchor_pem must be a PEM certificate",
    ),
    "trust-anchor-a-key": (
        {"attestation__trust_anchor_pem": PEM_KEY},
        "attestation.trust_anchor_pem must be a PEM certificate",
    ),
    "token-signer-missing": (
        {"attestation__token_signer_pem": None},
        "attestation.token_signer_pem must be a PEM certificate or public key",
    ),
    "appraisal-ids-empty": (
        {"attestation__appraisal_policy_ids": []},
        "attestation.appraisal_policy_ids must be a non-empty list of strings",
    ),
    "appraisal-ids-not-strings": (
        {"attestation__appraisal_policy_ids": [1]},
        "attestation.appraisal_policy_ids must be a non-empty list of strings",
    ),
    "development-not-bool": (
        {"attestation__allow_development_evidence": "yes"},
        "attestation.allow_development_evidence must be true or false",
    ),
    "min-gpus-negative": ({"attestation__min_gpus": -1}, "attestation.min_gpus must be"),
    "min-gpus-float": ({"attestation__min_gpus": 1.5}, "attestation.min_gpus must be"),
    "thresholds-unknown": ({"thresholds__max_loss": 1}, "thresholds: unknown field(s)"),
    "max-eval-loss-string": (
        {"thresholds__max_eval_loss": "2"},
        "thresholds.max_eval_loss must be a finite number",
    ),
    "min-improvement-bool": (
        {"thresholds__min_relative_improvement": True},
        "thresholds.min_relative_improvement must be a finite number",
    ),
    "champion-unknown": ({"champion__rule": "x"}, "champion: unknown field(s)"),
    "champion-negative": (
        {"champion__max_regression": -0.1},
        "champion.max_regression must not be negative",
    ),
    "champion-not-number": (
        {"champion__max_regression": "0"},
        "champion.max_regression must be a finite number",
    ),
    "signers-empty": (
        {"promotion_signers": []},
        "promotion_signers must be a non-empty list of PEM public keys",
    ),
    "signer-a-certificate": (
        {"promotion_signers": ["-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----"]},
        "promotion_signers[0] must be a PEM public key",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_field_is_refused_with_a_named_reason(owner, case):
    overrides, reason = MALFORMED[case]
    with pytest.raises(OwnerPolicyError) as refused:
        OwnerPolicy.from_dict(owner.policy_doc(**overrides))
    assert reason in str(refused.value)


def test_non_finite_numbers_are_refused(owner):
    doc = owner.policy_doc(thresholds__max_eval_loss=float("nan"))
    with pytest.raises(OwnerPolicyError, match="max_eval_loss must be a finite number"):
        OwnerPolicy.from_dict(doc)


def test_all_problems_are_named_at_once(owner):
    doc = owner.policy_doc(version=0, model_name="", approved__images=["x"])
    with pytest.raises(OwnerPolicyError) as refused:
        OwnerPolicy.from_dict(doc)
    text = str(refused.value)
    assert "version" in text and "model_name" in text and "approved.images" in text


def test_not_an_object_is_refused():
    with pytest.raises(OwnerPolicyError, match="must be a JSON object"):
        OwnerPolicy.from_dict([FORMAT])


def test_a_policy_signed_by_another_key_is_refused(owner):
    other_private, _ = generate_owner_key()
    jws = OwnerPolicy.from_dict(owner.policy_doc()).sign(other_private)
    with pytest.raises(OwnerPolicyError, match="does not verify with the data owner's key"):
        verify_owner_policy(jws, owner.public_pem)


def _parts(jws: str) -> list[str]:
    return jws.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_an_altered_payload_is_refused(owner, owner_policy):
    header, payload, signature = _parts(owner_policy.jws)
    doc = json.loads(base64.urlsafe_b64decode(payload + "=="))
    doc["attestation"]["min_gpus"] = 0  # what a compromised Airflow would like
    altered = ".".join([header, _b64(json.dumps(doc).encode()), signature])
    with pytest.raises(OwnerPolicyError, match="signed by another key, or the document was"):
        verify_owner_policy(altered, owner.public_pem)


@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_single_changed_character_in_any_part_is_refused(owner, owner_policy, part):
    parts = _parts(owner_policy.jws)
    text = parts[part]
    i = len(text) // 2
    parts[part] = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    with pytest.raises(OwnerPolicyError):
        verify_owner_policy(".".join(parts), owner.public_pem)


def test_a_jws_of_another_type_is_refused(owner):
    from jwcrypto import jwk, jws

    key = jwk.JWK.from_pem(owner.private_pem)
    sig = jws.JWS(OwnerPolicy.from_dict(owner.policy_doc()).payload())
    sig.add_signature(key, alg="ES256", protected={"alg": "ES256", "typ": "coco-ai-manifest+jws"})
    with pytest.raises(OwnerPolicyError, match=re.escape(f"typ is not {JWS_TYPE}")):
        verify_owner_policy(sig.serialize(compact=True), owner.public_pem)


def test_a_signed_but_malformed_document_is_refused(owner):
    from jwcrypto import jwk, jws

    key = jwk.JWK.from_pem(owner.private_pem)
    sig = jws.JWS(json.dumps(owner.policy_doc(version=-3)).encode())
    sig.add_signature(key, alg="ES256", protected={"alg": "ES256", "typ": JWS_TYPE})
    with pytest.raises(OwnerPolicyError, match="version must be an integer >= 1"):
        verify_owner_policy(sig.serialize(compact=True), owner.public_pem)


def test_unusable_owner_keys_are_named(owner, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    policy = OwnerPolicy.from_dict(owner.policy_doc())
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_private = p384.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p384_public = p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(OwnerPolicyError, match="must be EC P-256"):
        policy.sign(p384_private)
    with pytest.raises(OwnerPolicyError, match="not a readable unencrypted PEM key"):
        policy.sign(b"not a key")
    with pytest.raises(OwnerPolicyError, match="must be EC P-256"):
        verify_owner_policy(policy.sign(owner.private_pem), p384_public)
    with pytest.raises(OwnerPolicyError, match="not a PEM public key or certificate"):
        verify_owner_policy(policy.sign(owner.private_pem), b"garbage")


# ---- narrowing ----------------------------------------------------------------------------------


def test_narrowing_tightens_each_parameter(owner_policy):
    policy = owner_policy.policy
    narrowed = policy.narrowed(min_gpus=2, max_eval_loss=1.5, min_relative_improvement=0.5)
    assert (narrowed.min_gpus, narrowed.max_eval_loss, narrowed.min_relative_improvement) == (
        2,
        1.5,
        0.5,
    )
    assert policy.narrowed() == policy
    assert narrowed.approved_images == policy.approved_images


WIDENINGS = {
    "min_gpus": (0, "min_gpus=0 is below the data owner's minimum 1"),
    "max_eval_loss": (2.5, "max_eval_loss=2.5 is looser than the data owner's 2.0"),
    "min_relative_improvement": (
        0.1,
        "min_relative_improvement=0.1 is looser than the data owner's 0.2",
    ),
}


@pytest.mark.parametrize("name", sorted(WIDENINGS))
def test_narrowing_refuses_to_widen_each_parameter(owner_policy, name):
    value, reason = WIDENINGS[name]
    with pytest.raises(OwnerPolicyError, match="may only narrow the owner policy") as refused:
        owner_policy.policy.narrowed(**{name: value})
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"min_gpus": True}, "min_gpus must be an integer"),
        ({"min_gpus": "3"}, "min_gpus must be an integer"),
        ({"max_eval_loss": float("nan")}, "max_eval_loss must be a finite number"),
        ({"min_relative_improvement": float("inf")}, "min_relative_improvement must be"),
    ],
)
def test_narrowing_refuses_malformed_values(owner_policy, args, reason):
    with pytest.raises(OwnerPolicyError) as refused:
        owner_policy.policy.narrowed(**args)
    assert reason in str(refused.value)


def test_a_threshold_the_owner_left_open_may_be_set(owner):
    open_policy = owner.sign(thresholds={}).policy
    assert open_policy.narrowed(max_eval_loss=3.0).max_eval_loss == 3.0


# ---- per-kind sections ---------------------------------------------------------------------------

RAG_SECTION = {
    "registry_name": "northwind-index",
    "approved": {
        "documents": ["sha256:" + "a" * 64],
        "embedder": ["sha256:" + "c" * 64],
        "recipes": ["sha256:" + "f" * 64],
    },
    "thresholds": {"min_hit_rate_at_k": 0.8},
    "champion": {"max_regression": 0.05},
}


def test_a_rag_index_section_round_trips_and_fills_the_recall_default(owner):
    policy = owner.sign(workloads={"rag_index": RAG_SECTION}).policy
    assert OwnerPolicy.from_dict(policy.to_dict()) == policy
    section = policy.for_workload("rag_index")
    assert section.registry_name == "northwind-index"
    assert section.approved_inputs["documents"] == {"sha256:" + "a" * 64}
    assert section.limits() == {"min_hit_rate_at_k": 0.8, "min_ann_recall_at_10": 0.95}
    assert policy.registry_names == {policy.model_name, "northwind-index"}
    # the fine-tune's view is the top-level fields
    finetune = policy.for_workload("finetune")
    assert finetune.registry_name == policy.model_name
    assert finetune.approved_recipes == policy.approved_training_recipes


def test_a_fine_tune_only_policy_payload_is_unchanged_by_the_workloads_field(owner):
    policy = owner.sign().policy
    assert "workloads" not in policy.to_dict()
    with pytest.raises(OwnerPolicyError, match="approves no rag_index outputs"):
        policy.for_workload("rag_index")


@pytest.mark.parametrize(
    ("workloads", "reason"),
    [
        ({"finetune": RAG_SECTION}, "workloads.finetune: the fine-tune's approvals are the top"),
        ({"ocr": RAG_SECTION}, "workloads.ocr: unknown workload kind"),
        ({"rag_index": {**RAG_SECTION, "registry_name": ""}}, "registry_name must be a non-empty"),
        (
            {"rag_index": {**RAG_SECTION, "thresholds": {"max_eval_loss": 1.0}}},
            "workloads.rag_index.thresholds: unknown field(s) ['max_eval_loss']",
        ),
        (
            {"rag_index": {**RAG_SECTION, "approved": {"datasets": []}}},
            "workloads.rag_index.approved: unknown field(s) ['datasets']",
        ),
        (
            {"rag_index": {**RAG_SECTION, "thresholds": {"min_hit_rate_at_k": "0.9"}}},
            "workloads.rag_index.thresholds.min_hit_rate_at_k must be a finite number",
        ),
    ],
)
def test_a_malformed_workloads_section_is_refused(owner, workloads, reason):
    with pytest.raises(OwnerPolicyError) as refused:
        OwnerPolicy.from_dict(owner.policy_doc(workloads=workloads))
    assert reason in str(refused.value)


def test_narrowing_a_rag_index_threshold_touches_only_its_section(owner):
    policy = owner.sign(workloads={"rag_index": RAG_SECTION}).policy
    tighter = policy.narrowed(workload="rag_index", min_hit_rate_at_k=0.9)
    assert tighter.for_workload("rag_index").limits()["min_hit_rate_at_k"] == 0.9
    assert tighter.max_eval_loss == policy.max_eval_loss
    with pytest.raises(OwnerPolicyError, match=r"min_ann_recall_at_10=0\.9 is looser than"):
        policy.narrowed(workload="rag_index", min_ann_recall_at_10=0.9)
    with pytest.raises(OwnerPolicyError, match="max_eval_loss is not a threshold of rag_index"):
        policy.narrowed(workload="rag_index", max_eval_loss=1.0)
