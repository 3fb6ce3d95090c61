"""Promotion end to end with real parts: stand-in-issued EAR tokens, encrypted checkpoints
(coco_ai.crypto), regopy, OpenSSF model signing and an MLflow SQLite registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from coco_ai.guest.initdata import build_initdata
from coco_ai.promotion import (
    PromotionExpectations,
    PromotionRefused,
    model_versions,
    promote,
    sqlite_registry_uri,
    verify_for_promotion,
    verify_model_signature,
    version_by_alias,
)
from coco_ai.promotion.promote import default_record_uri
from coco_ai.promotion.signing import default_signature_uri

from .conftest import (
    BASE_MODEL_DIGEST,
    DATASET_DIGEST,
    IMAGE_DIGEST,
    MODEL,
    RECIPE_DIGEST,
    RUN_ID,
    flip_ciphertext,
    other_key_signature,
    recipe_of,
    run_expectations,
    run_initdata,
    training_config,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    return sqlite_registry_uri(tmp_path_factory.mktemp("registry") / "mlflow.db")


@pytest.fixture(scope="module")
def baseline(
    registry, tmp_path_factory, issuer, initdata, tee_key_pem, promotion_keys, owner_policy
):
    """One model version already promoted: refusals must leave it (and the alias) alone. It was
    created a minute ago, so the test checkpoints made now are newer than the champion."""
    from .conftest import CheckpointFactory

    factory = CheckpointFactory(tmp_path_factory.mktemp("baseline"), issuer, initdata, tee_key_pem)
    ckpt = factory.make(created_at=time.time() - 60)
    result = promote(
        str(ckpt),
        owner_policy=owner_policy,
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
    )
    return result


def _registry_state(registry: str):
    versions = sorted(
        (v.version, v.source, tuple(sorted(v.tags.items())))
        for v in model_versions(MODEL, registry_uri=registry)
    )
    serving = version_by_alias(MODEL, registry_uri=registry)
    return versions, serving.version if serving else None


def test_happy_path_promotes_signs_records_and_registers(
    baseline, registry, promotion_keys, tee_key_pem, owner_policy, initdata
):
    result = baseline
    assert (result.model_name, result.version, result.alias) == (MODEL, 1, "serving")
    evidence = result.evidence
    ckpt = Path(evidence.checkpoint_uri)

    # the registry holds the version, the alias and the provenance as tags
    serving = version_by_alias(MODEL, registry_uri=registry)
    assert serving.version == 1 and serving.source == str(ckpt)
    tags = serving.tags
    assert tags["coco-ai.manifest_digest"] == evidence.manifest_digest
    assert tags["coco-ai.token_digest"] == evidence.token_digest
    assert tags["coco-ai.run_id"] == RUN_ID
    assert tags["coco-ai.base_model_digest"] == BASE_MODEL_DIGEST
    assert tags["coco-ai.dataset_digest"] == DATASET_DIGEST
    assert tags["coco-ai.image_digest"] == IMAGE_DIGEST
    assert tags["coco-ai.init_data"] == evidence.init_data
    assert tags["coco-ai.signature_uri"] == default_signature_uri(str(ckpt))
    assert tags["coco-ai.signature_digest"] == result.signature.signature_digest
    assert float(tags["coco-ai.metric.eval_loss"]) == evidence.metrics["eval_loss"]
    assert tags["coco-ai.owner_policy_digest"] == owner_policy.digest
    assert tags["coco-ai.created_at"] == str(evidence.created_at)
    assert tags["coco-ai.record_uri"] == result.record_uri == str(ckpt) + ".promotion.json"
    assert evidence.owner_policy_digest == owner_policy.digest
    assert evidence.training_recipe_digest == RECIPE_DIGEST

    # the promotion record holds what a third party needs to re-check it
    record = json.loads(Path(result.record_uri).read_bytes())
    assert record["format"] == "coco-ai/promotion-record/v1"
    assert record["owner_policy"] == owner_policy.jws
    assert record["owner_policy_digest"] == owner_policy.digest
    assert record["initdata"] == initdata.toml
    assert record["manifest_digest"] == evidence.manifest_digest
    assert record["run_id"] == RUN_ID
    assert record["champion"] is None  # the first version replaced nothing
    assert record["signature_digest"] == result.signature.signature_digest

    # evidence is consistent with what is stored
    manifest_bytes = (ckpt / "manifest.json").read_bytes()
    import hashlib

    assert evidence.manifest_digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert evidence.token == (ckpt / "token.jwt").read_text()
    assert evidence.attestation["submods"] == {"cpu0": "affirming", "gpu0": "affirming"}
    assert evidence.attestation["tee"] == "sample"
    assert evidence.attestation["run_id"] == RUN_ID

    # the signature verifies against the promotion public key and covers the training config
    signed = verify_model_signature(str(ckpt), public_key_path=promotion_keys[1])
    assert "training_config.json" in signed.files

    # references only: no key material anywhere in what leaves promotion
    blob = json.dumps(result.to_dict()) + json.dumps(evidence.to_dict()) + json.dumps(tags)
    assert "PRIVATE KEY" not in blob
    assert tee_key_pem.decode().split("\n")[1] not in blob
    assert promotion_keys[0].read_text().split("\n")[1] not in blob


def test_re_promotion_of_the_served_manifest_is_idempotent(
    baseline, registry, initdata, promotion_keys, owner_policy
):
    before = model_versions(MODEL, registry_uri=registry)
    again = promote(
        baseline.evidence.checkpoint_uri,
        owner_policy=owner_policy,
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
    )
    assert again.version == baseline.version
    after = model_versions(MODEL, registry_uri=registry)
    assert [v.version for v in after] == [v.version for v in before]
    serving = version_by_alias(MODEL, registry_uri=registry)
    assert serving.version == baseline.version
    # the registry records the signature that is stored now (re-signed by this run)
    assert serving.tags["coco-ai.signature_digest"] == again.signature.signature_digest
    verify_model_signature(baseline.evidence.checkpoint_uri, public_key_path=promotion_keys[1])


def _another_run_token(factory):
    other = run_initdata("run-other")
    return factory.token(init_data_hex=other.digest().hex(), init_data_claims=other.claims())


def _other_initdata_digest_token(factory):
    """This run's claims, but the digest of a different initdata document (another KBS)."""
    custom = {k: v for k, v in factory.initdata.data.items() if k.startswith("io.coco-ai.")}
    other = build_initdata("https://kbs.elsewhere.example:8080", None, custom)
    return factory.token(init_data_hex=other.digest().hex())


def _other_image_claim_token(factory):
    """This run's initdata digest, but claims naming another image."""
    claims = run_initdata(image_digest="sha256:" + "9" * 64).claims()
    return factory.token(init_data_claims=claims)


OTHER = "sha256:" + "9" * 64

# case -> (checkpoint factory arguments, given the factory and the champion; tampering;
#          owner policy overrides; run narrowing; reason)
REFUSALS = {
    "contraindicated-cpu0": (
        lambda f, champion: {"token": f.token(cpu_status="contraindicated")},
        None,
        {},
        {},
        "attestation: submod cpu0 is 'contraindicated'",
    ),
    "missing-gpu0": (
        lambda f, champion: {"token": f.token(gpus=0)},
        None,
        {},
        {},
        "attestation: token attests 0 GPU(s), policy requires 1",
    ),
    "fewer-gpus-than-the-owner-requires": (
        lambda f, champion: {"token": f.token(gpus=1)},
        None,
        {"attestation__min_gpus": 2},
        {},
        "attestation: token attests 1 GPU(s), policy requires 2",
    ),
    "fewer-gpus-than-the-run-narrowed-to": (
        lambda f, champion: {"token": f.token(gpus=1)},
        None,
        {},
        {"min_gpus": 2},
        "attestation: token attests 1 GPU(s), policy requires 2",
    ),
    "gpu-not-affirming": (
        lambda f, champion: {"token": f.token(gpus=2, gpu_status="warning")},
        None,
        {},
        {},
        "attestation: submod gpu0 is 'warning'",
    ),
    "initdata-of-another-run": (
        lambda f, champion: {"token": _another_run_token(f)},
        None,
        {},
        {},
        "attestation: token was issued to run 'run-other', expected run 'run-2026-11-26-a'",
    ),
    "initdata-digest-differs": (
        lambda f, champion: {"token": _other_initdata_digest_token(f)},
        None,
        {},
        {},
        "attestation: token init_data ",
    ),
    "image-claim-differs-from-the-initdata": (
        lambda f, champion: {"token": _other_image_claim_token(f)},
        None,
        {},
        {},
        "attestation: token init_data_claims['io.coco-ai.image-digest']",
    ),
    "manifest-signed-by-non-attested-key": (
        lambda f, champion: {},
        "other-key",
        {},
        {},
        "manifest signature: manifest signature does not verify with the attested TEE key",
    ),
    "token-expired-before-signing": (
        lambda f, champion: {"token": f.token(iat=time.time() - 1000, lifetime=300)},
        None,
        {},
        {},
        "attestation: attestation token not valid at manifest creation",
    ),
    "token-from-an-unpinned-signer": (
        lambda f, champion: {},
        None,
        {"attestation__token_signer_pem": "stranger-signer"},
        {},
        "attestation: attestation token not valid at manifest creation",
    ),
    "tampered-ciphertext": (
        lambda f, champion: {},
        "flip",
        {},
        {},
        "ciphertext: ",
    ),
    "eval-loss-above-threshold": (
        lambda f, champion: {"metrics": {"eval_loss": 2.6, "eval_loss_before": 3.0}},
        None,
        {},
        {},
        "promotion policy: eval_loss 2.6 is above the maximum 2",
    ),
    "eval-loss-above-the-run-narrowed-threshold": (
        lambda f, champion: {},
        None,
        {},
        {"max_eval_loss": 1.0},
        "promotion policy: eval_loss 1.2 is above the maximum 1",
    ),
    "improvement-too-small": (
        lambda f, champion: {"metrics": {"eval_loss": 1.9, "eval_loss_before": 2.0}},
        None,
        {},
        {},
        "promotion policy: eval_loss improved by",
    ),
    "unapproved-dataset": (
        lambda f, champion: {"dataset_digest": "sha256:" + "e" * 64},
        None,
        {},
        {},
        f"promotion policy: data set sha256:{'e' * 64} is not approved",
    ),
    "unapproved-base-model": (
        lambda f, champion: {},
        None,
        {"approved__base_models": [OTHER]},
        {},
        f"promotion policy: base model {BASE_MODEL_DIGEST} is not approved",
    ),
    "unapproved-image": (
        lambda f, champion: {},
        None,
        {"approved__images": ["registry.example/coco-ai/other@" + OTHER]},
        {},
        f"promotion policy: image {IMAGE_DIGEST} is not approved",
    ),
    "unapproved-recipe": (
        lambda f, champion: {"config": training_config(learning_rate=0.5)},
        None,
        {},
        {},
        f"promotion policy: training recipe {recipe_of(training_config(learning_rate=0.5))} "
        "is not approved",
    ),
    "no-recipe-approved": (
        lambda f, champion: {},
        None,
        {"approved__training_recipes": []},
        {},
        f"promotion policy: training recipe {RECIPE_DIGEST} is not approved",
    ),
    "config-tampered": (
        lambda f, champion: {},
        "config",
        {},
        {},
        "training config: training_config.json is not the config the TEE signed",
    ),
    "config-missing": (
        lambda f, champion: {"write_config": False},
        None,
        {},
        {},
        "training config: training_config.json is missing beside the manifest",
    ),
    "config-of-another-run": (
        lambda f, champion: {"config": training_config("run-other")},
        None,
        {},
        {},
        "training config: names run 'run-other', not the manifest's",
    ),
    "appraisal-policy-not-accepted": (
        lambda f, champion: {"token": f.token(appraisal_policy_id="permissive")},
        None,
        {},
        {},
        "promotion policy: attestation submod cpu0 was appraised by policy permissive",
    ),
    "development-evidence-under-a-production-policy": (
        lambda f, champion: {},
        None,
        {"attestation__allow_development_evidence": False},
        {},
        "promotion policy: attestation rests on development (sample/sampledevice) evidence",
    ),
    "champion-regression": (
        lambda f, champion: {"metrics": {"eval_loss": 1.5, "eval_loss_before": 3.0}},
        None,
        {},
        {},
        "champion: eval_loss 1.5 is worse than version 1's 1.2",
    ),
    "older-than-the-champion": (
        lambda f, champion: {"created_at": champion.evidence.created_at - 1},
        None,
        {},
        {},
        "rollback: checkpoint created at ",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_failure_and_leave_the_registry_untouched(
    case, baseline, registry, checkpoints, issuer, initdata, promotion_keys, other_p256_pem, owner
):
    make_args, tamper, policy_overrides, narrowing, reason = REFUSALS[case]
    ckpt = checkpoints.make(**make_args(checkpoints, baseline))
    if tamper == "other-key":
        other_key_signature(ckpt, other_p256_pem)
    elif tamper == "flip":
        flip_ciphertext(ckpt)
    elif tamper == "config":
        _flip_byte(ckpt / "training_config.json")
    if policy_overrides.get("attestation__token_signer_pem") == "stranger-signer":
        policy_overrides = {"attestation__token_signer_pem": _stranger_signer_pem(ckpt.parent)}
    state_before = _registry_state(registry)

    with pytest.raises(PromotionRefused) as refused:
        promote(
            str(ckpt),
            owner_policy=owner.sign(**policy_overrides),
            initdata=initdata,
            narrowing=narrowing,
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )

    assert any(r.startswith(reason) for r in refused.value.reasons), refused.value.reasons
    assert _registry_state(registry) == state_before
    assert not Path(default_signature_uri(str(ckpt))).exists()
    assert not Path(default_record_uri(str(ckpt))).exists()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _stranger_signer_pem(where: Path) -> str:
    from coco_ai.trustee_dev.state import StateDir
    from coco_ai.trustee_dev.tokens import TokenBroker

    return TokenBroker(StateDir(where / "stranger-trustee")).signer_pem.decode()


def test_production_evidence_passes_a_production_policy(checkpoints, initdata, owner):
    """The development-evidence rule refuses only sample evidence: the same chain with hardware
    evidence names passes a policy that accepts no development evidence."""
    token = checkpoints.token(cpu_evidence="tdx", gpu_evidence="nvidia")
    ckpt = checkpoints.make(token=token)
    production = owner.sign(attestation__allow_development_evidence=False)
    evidence = verify_for_promotion(
        str(ckpt),
        trust_anchor_pem=production.policy.trust_anchor_pem.encode(),
        expectations=run_expectations(production, initdata),
    )
    assert evidence.attestation["development_evidence"] is False
    assert evidence.attestation["tee"] == "tdx"


def test_an_accepted_appraisal_policy_id_passes(checkpoints, initdata, owner):
    ckpt = checkpoints.make(token=checkpoints.token(appraisal_policy_id="coco-ai-prod"))
    signed = owner.sign(attestation__appraisal_policy_ids=["default", "coco-ai-prod"])
    evidence = verify_for_promotion(
        str(ckpt),
        trust_anchor_pem=signed.policy.trust_anchor_pem.encode(),
        expectations=run_expectations(signed, initdata),
    )
    assert set(evidence.attestation["appraisal_policy_ids"].values()) == {"coco-ai-prod"}


def test_a_run_may_not_widen_the_owner_policy(baseline, registry, checkpoints, initdata, owner):
    ckpt = checkpoints.make()
    state_before = _registry_state(registry)
    with pytest.raises(PromotionRefused, match="may only narrow the owner policy"):
        promote(
            str(ckpt),
            owner_policy=owner.sign(),
            initdata=initdata,
            narrowing={"max_eval_loss": 5.0},
            signing_key_path="/nonexistent",
            registry_uri=registry,
        )
    assert _registry_state(registry) == state_before


def test_the_policy_governs_one_model(checkpoints, initdata, owner, promotion_keys, tmp_path):
    with pytest.raises(PromotionRefused, match="owner policy governs model 'coco-finetuned'"):
        promote(
            str(checkpoints.make()),
            owner_policy=owner.sign(),
            initdata=initdata,
            model_name="another-model",
            signing_key_path=promotion_keys[0],
            registry_uri=sqlite_registry_uri(tmp_path / "mlflow.db"),
        )


def test_initdata_without_a_run_id_is_refused(checkpoints, owner, promotion_keys, tmp_path):
    from coco_ai.guest.initdata import build_initdata

    with pytest.raises(PromotionRefused, match=r"initdata carries no io\.coco-ai\.run-id"):
        promote(
            str(checkpoints.make()),
            owner_policy=owner.sign(),
            initdata=build_initdata("https://127.0.0.1:8080", None, {}),
            signing_key_path=promotion_keys[0],
            registry_uri=sqlite_registry_uri(tmp_path / "mlflow.db"),
        )


class TestChampionAndRollback:
    """A fresh registry per test: v1 served, then a challenger."""

    @pytest.fixture
    def served(self, checkpoints, initdata, owner_policy, promotion_keys, tmp_path):
        registry = sqlite_registry_uri(tmp_path / "champion" / "mlflow.db")
        first = promote(
            str(checkpoints.make("v1", created_at=time.time() - 120)),
            owner_policy=owner_policy,
            initdata=initdata,
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )
        return registry, first

    def _promote(self, ckpt, registry, owner_policy, initdata, promotion_keys):
        return promote(
            str(ckpt),
            owner_policy=owner_policy,
            initdata=initdata,
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )

    def test_a_newer_better_challenger_replaces_the_champion_and_records_it(
        self, served, checkpoints, initdata, owner_policy, promotion_keys
    ):
        registry, first = served
        better = checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0})
        second = self._promote(better, registry, owner_policy, initdata, promotion_keys)
        assert second.version == 2
        assert version_by_alias(MODEL, registry_uri=registry).version == 2
        record = json.loads(Path(second.record_uri).read_bytes())
        assert record["champion"] == {
            "version": 1,
            "manifest_digest": first.evidence.manifest_digest,
            "created_at": float(first.evidence.created_at),
            "eval_loss": 1.2,
        }

    def test_a_regression_within_the_owners_allowance_is_accepted(
        self, served, checkpoints, initdata, owner, promotion_keys
    ):
        registry, _ = served
        worse = checkpoints.make("v2", metrics={"eval_loss": 1.3, "eval_loss_before": 3.0})
        lenient = owner.sign(champion__max_regression=0.1)
        assert self._promote(worse, registry, lenient, initdata, promotion_keys).version == 2
        strict = owner.sign()
        worse_again = checkpoints.make("v3", metrics={"eval_loss": 1.31, "eval_loss_before": 3.0})
        with pytest.raises(PromotionRefused, match=r"champion: eval_loss 1\.31 is worse"):
            self._promote(worse_again, registry, strict, initdata, promotion_keys)

    def test_replaying_an_already_registered_checkpoint_is_a_refused_rollback(
        self, served, checkpoints, initdata, owner_policy, promotion_keys
    ):
        registry, first = served
        newer = checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0})
        self._promote(newer, registry, owner_policy, initdata, promotion_keys)
        state_before = _registry_state_of(registry)
        with pytest.raises(PromotionRefused) as refused:
            self._promote(
                first.evidence.checkpoint_uri, registry, owner_policy, initdata, promotion_keys
            )
        assert any(
            r.startswith("rollback: this checkpoint is already version 1")
            for r in refused.value.reasons
        ), refused.value.reasons
        assert _registry_state_of(registry) == state_before

    def test_the_served_manifest_promoted_again_keeps_its_version(
        self, served, initdata, owner_policy, promotion_keys
    ):
        registry, first = served
        again = self._promote(
            first.evidence.checkpoint_uri, registry, owner_policy, initdata, promotion_keys
        )
        assert again.version == 1
        assert [v.version for v in model_versions(MODEL, registry_uri=registry)] == [1]
        record = json.loads(Path(again.record_uri).read_bytes())
        assert record["champion"] is None  # v1 replaced nothing

    def test_a_retry_of_the_served_challenger_keeps_the_champion_it_replaced(
        self, served, checkpoints, initdata, owner_policy, promotion_keys
    ):
        registry, first = served
        better = checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0})
        second = self._promote(better, registry, owner_policy, initdata, promotion_keys)
        replaced = json.loads(Path(second.record_uri).read_bytes())["champion"]
        assert replaced["manifest_digest"] == first.evidence.manifest_digest
        again = self._promote(better, registry, owner_policy, initdata, promotion_keys)
        assert again.version == 2
        assert json.loads(Path(again.record_uri).read_bytes())["champion"] == replaced

    def test_a_promotion_key_the_owner_does_not_name_is_refused_before_signing(
        self, served, checkpoints, initdata, owner_policy, other_p256_pem, tmp_path
    ):
        registry, _ = served
        (tmp_path / "other.key").write_bytes(other_p256_pem)
        ckpt = checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0})
        before = _registry_state_of(registry)
        with pytest.raises(PromotionRefused, match="not one of the owner policy's promotion"):
            self._promote(ckpt, registry, owner_policy, initdata, (tmp_path / "other.key",))
        assert _registry_state_of(registry) == before
        assert not Path(str(ckpt) + ".sig").exists()

    def test_a_champion_without_a_creation_time_blocks_promotion(
        self, served, checkpoints, initdata, owner_policy, promotion_keys
    ):
        from mlflow import MlflowClient

        registry, _ = served
        MlflowClient(tracking_uri=registry, registry_uri=registry).delete_model_version_tag(
            MODEL, "1", "coco-ai.created_at"
        )
        with pytest.raises(PromotionRefused, match="records no creation time"):
            self._promote(checkpoints.make("v2"), registry, owner_policy, initdata, promotion_keys)


def _registry_state_of(registry: str):
    return _registry_state(registry)


def test_a_token_from_another_authority_is_refused(checkpoints, initdata, owner_policy, tmp_path):
    from coco_ai.trustee_dev.state import StateDir
    from coco_ai.trustee_dev.tokens import TokenBroker

    ckpt = checkpoints.make()
    stranger = TokenBroker(StateDir(tmp_path / "other-trustee")).ca_pem
    with pytest.raises(PromotionRefused, match="attestation: attestation token not valid"):
        verify_for_promotion(
            str(ckpt),
            trust_anchor_pem=stranger,
            expectations=run_expectations(owner_policy, initdata),
        )


def test_all_policy_reasons_are_reported_together(checkpoints, issuer, initdata, owner_policy):
    ckpt = checkpoints.make(
        metrics={"eval_loss": 2.9, "eval_loss_before": 3.0},
        dataset_digest="sha256:" + "e" * 64,
    )
    flip_ciphertext(ckpt)
    with pytest.raises(PromotionRefused) as refused:
        verify_for_promotion(
            str(ckpt),
            trust_anchor_pem=issuer.ca_pem,
            expectations=run_expectations(owner_policy, initdata),
        )
    kinds = sorted(r.split(":")[0] for r in refused.value.reasons)
    assert kinds.count("promotion policy") == 3  # loss, improvement, data set
    assert "ciphertext" in kinds


def test_invalid_expectations_are_rejected_up_front(initdata, owner_policy):
    from dataclasses import replace

    expectations = run_expectations(owner_policy, initdata)
    with pytest.raises(ValueError, match="approved_datasets: 'v1'"):
        replace(expectations, approved_datasets={"v1"})
    with pytest.raises(ValueError, match="max_eval_loss must be a finite number"):
        replace(expectations, thresholds={"max_eval_loss": float("nan")})
    with pytest.raises(ValueError, match="the initdata is run 'run-2026-11-26-a'"):
        PromotionExpectations.from_owner_policy(owner_policy, initdata=initdata, run_id="other")


def test_init_data_matches_each_verifier_encoding_and_field_size():
    import base64
    import hashlib

    from coco_ai.kbs.ear import init_data_matches

    d384 = hashlib.sha384(b"initdata").digest()
    d256 = hashlib.sha256(b"initdata").digest()
    assert init_data_matches(d384.hex(), d384)  # TDX MRCONFIGID, hex
    assert init_data_matches(base64.b64encode(d384).decode(), d384)  # sample verifier, base64
    assert init_data_matches(d384[:32].hex(), d384)  # SNP HOST_DATA truncates
    assert init_data_matches((d256 + bytes(16)).hex(), d256)  # sha256 zero-padded in 48 bytes
    assert not init_data_matches(hashlib.sha384(b"other").digest().hex(), d384)
    assert not init_data_matches(d384[:16].hex(), d384)  # too short to bind anything
    assert not init_data_matches((d256 + b"\x01" + bytes(15)).hex(), d256)
    assert not init_data_matches(None, d384)
    assert not init_data_matches("", d384)
