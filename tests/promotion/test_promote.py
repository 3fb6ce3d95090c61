"""Promotion end to end with real parts: stand-in-issued EAR tokens, encrypted checkpoints
(coco_ai.crypto), regopy, OpenSSF model signing and an MLflow SQLite registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jwcrypto import jwk, jws

from coco_ai.crypto.manifest import JWS_TYPE
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
from coco_ai.promotion.signing import default_signature_uri

from .conftest import (
    BASE_MODEL_DIGEST,
    DATASET_DIGEST,
    IMAGE_DIGEST,
    KEY_URI,
    RUN_ID,
    run_expectations,
)

MODEL = "coco-finetuned"


def _expect(initdata, **overrides) -> PromotionExpectations:
    defaults = {
        "checkpoint_key_uri": KEY_URI,
        "min_gpus": 1,
        "max_eval_loss": 2.0,
        "min_relative_improvement": 0.2,
    }
    return run_expectations(initdata, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    return sqlite_registry_uri(tmp_path_factory.mktemp("registry") / "mlflow.db")


@pytest.fixture(scope="module")
def baseline(registry, tmp_path_factory, issuer, initdata, tee_key_pem, promotion_keys):
    """One model version already promoted: refusals must leave it (and the alias) alone."""
    from .conftest import CheckpointFactory

    factory = CheckpointFactory(tmp_path_factory.mktemp("baseline"), issuer, initdata, tee_key_pem)
    ckpt = factory.make()
    result = promote(
        str(ckpt),
        trust_anchor_pem=issuer.ca_pem,
        expectations=_expect(initdata),
        model_name=MODEL,
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


def test_happy_path_promotes_signs_and_registers(baseline, registry, promotion_keys, tee_key_pem):
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

    # evidence is consistent with what is stored
    manifest_bytes = (ckpt / "manifest.json").read_bytes()
    import hashlib

    assert evidence.manifest_digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert evidence.token == (ckpt / "token.jwt").read_text()
    assert evidence.attestation["submods"] == {"cpu0": "affirming", "gpu0": "affirming"}
    assert evidence.attestation["tee"] == "sample"
    assert evidence.attestation["run_id"] == RUN_ID

    # the signature verifies against the promotion public key
    verify_model_signature(str(ckpt), public_key_path=promotion_keys[1])

    # references only: no key material anywhere in what leaves promotion
    blob = json.dumps(result.to_dict()) + json.dumps(evidence.to_dict()) + json.dumps(tags)
    assert "PRIVATE KEY" not in blob
    assert tee_key_pem.decode().split("\n")[1] not in blob
    assert promotion_keys[0].read_text().split("\n")[1] not in blob


def test_re_promotion_is_idempotent(baseline, registry, issuer, initdata, promotion_keys):
    before = model_versions(MODEL, registry_uri=registry)
    again = promote(
        baseline.evidence.checkpoint_uri,
        trust_anchor_pem=issuer.ca_pem,
        expectations=_expect(initdata),
        model_name=MODEL,
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


def _other_key_signature(ckpt: Path, pem: bytes) -> None:
    key = jwk.JWK.from_pem(pem)
    sig = jws.JWS((ckpt / "manifest.json").read_bytes())
    sig.add_signature(
        key, alg="ES256", protected={"alg": "ES256", "typ": JWS_TYPE, "kid": key.thumbprint()}
    )
    (ckpt / "manifest.jws").write_text(sig.serialize(compact=True))


def _flip_ciphertext(ckpt: Path) -> None:
    victim = sorted((ckpt / "objects").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))


def _another_run_token(factory):
    other = build_initdata(
        "https://127.0.0.1:8080",
        None,
        {"io.coco-ai.run-id": "run-other", "io.coco-ai.image-digest": IMAGE_DIGEST},
    )
    return factory.token(init_data_hex=other.digest().hex(), init_data_claims=other.claims())


def _other_initdata_digest_token(factory):
    """This run's claims, but the digest of a different initdata document (another KBS)."""
    other = build_initdata(
        "https://kbs.elsewhere.example:8080",
        None,
        {"io.coco-ai.run-id": RUN_ID, "io.coco-ai.image-digest": IMAGE_DIGEST},
    )
    return factory.token(init_data_hex=other.digest().hex())


REFUSALS = {
    "contraindicated-cpu0": (
        lambda f: {"token": f.token(cpu_status="contraindicated")},
        None,
        {},
        "attestation: submod cpu0 is 'contraindicated'",
    ),
    "missing-gpu0": (
        lambda f: {"token": f.token(gpus=0)},
        None,
        {},
        "attestation: token attests 0 GPU(s), policy requires 1",
    ),
    "fewer-gpus-than-required": (
        lambda f: {"token": f.token(gpus=1)},
        None,
        {"min_gpus": 2},
        "attestation: token attests 1 GPU(s), policy requires 2",
    ),
    "gpu-not-affirming": (
        lambda f: {"token": f.token(gpus=2, gpu_status="warning")},
        None,
        {},
        "attestation: submod gpu0 is 'warning'",
    ),
    "initdata-of-another-run": (
        lambda f: {"token": _another_run_token(f)},
        None,
        {},
        "attestation: token was issued to run 'run-other', expected run 'run-2026-11-26-a'",
    ),
    "initdata-digest-differs": (
        lambda f: {"token": _other_initdata_digest_token(f)},
        None,
        {},
        "attestation: token init_data ",
    ),
    "image-digest-differs": (
        lambda f: {},
        None,
        {"image_digest": "sha256:" + "9" * 64},
        "attestation: token init_data_claims['io.coco-ai.image-digest']",
    ),
    "manifest-signed-by-non-attested-key": (
        lambda f: {},
        "other-key",
        {},
        "manifest signature: manifest signature does not verify with the attested TEE key",
    ),
    "token-expired-before-signing": (
        lambda f: {"token": f.token(iat=time.time() - 1000, lifetime=300)},
        None,
        {},
        "attestation: attestation token not valid at manifest creation",
    ),
    "tampered-ciphertext": (
        lambda f: {},
        "flip",
        {},
        "ciphertext: ",
    ),
    "eval-loss-above-threshold": (
        lambda f: {"metrics": {"eval_loss": 2.6, "eval_loss_before": 3.0}},
        None,
        {},
        "promotion policy: eval_loss 2.6 is above the maximum 2",
    ),
    "improvement-too-small": (
        lambda f: {"metrics": {"eval_loss": 1.9, "eval_loss_before": 2.0}},
        None,
        {},
        "promotion policy: eval_loss improved by",
    ),
    "unapproved-dataset": (
        lambda f: {"dataset_digest": "sha256:" + "e" * 64},
        None,
        {},
        f"promotion policy: data set sha256:{'e' * 64} is not approved",
    ),
    "unapproved-base-model": (
        lambda f: {},
        None,
        {"approved_base_models": {"sha256:" + "f" * 64}},
        f"promotion policy: base model {BASE_MODEL_DIGEST} is not approved",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_failure_and_leave_the_registry_untouched(
    case, baseline, registry, checkpoints, issuer, initdata, promotion_keys, other_p256_pem
):
    make_args, tamper, expect_overrides, reason = REFUSALS[case]
    ckpt = checkpoints.make(**make_args(checkpoints))
    if tamper == "other-key":
        _other_key_signature(ckpt, other_p256_pem)
    elif tamper == "flip":
        _flip_ciphertext(ckpt)
    state_before = _registry_state(registry)

    with pytest.raises(PromotionRefused) as refused:
        promote(
            str(ckpt),
            trust_anchor_pem=issuer.ca_pem,
            expectations=_expect(initdata, **expect_overrides),
            model_name=MODEL,
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )

    assert any(r.startswith(reason) for r in refused.value.reasons), refused.value.reasons
    assert _registry_state(registry) == state_before
    assert not Path(default_signature_uri(str(ckpt))).exists()


def test_a_token_from_another_authority_is_refused(checkpoints, initdata, tmp_path):
    from coco_ai.trustee_dev.state import StateDir
    from coco_ai.trustee_dev.tokens import TokenBroker

    ckpt = checkpoints.make()
    stranger = TokenBroker(StateDir(tmp_path / "other-trustee")).ca_pem
    with pytest.raises(PromotionRefused, match="attestation: attestation token not valid"):
        verify_for_promotion(str(ckpt), trust_anchor_pem=stranger, expectations=_expect(initdata))


def test_all_policy_reasons_are_reported_together(checkpoints, issuer, initdata):
    ckpt = checkpoints.make(
        metrics={"eval_loss": 2.9, "eval_loss_before": 3.0},
        dataset_digest="sha256:" + "e" * 64,
    )
    _flip_ciphertext(ckpt)
    with pytest.raises(PromotionRefused) as refused:
        verify_for_promotion(
            str(ckpt), trust_anchor_pem=issuer.ca_pem, expectations=_expect(initdata)
        )
    kinds = sorted(r.split(":")[0] for r in refused.value.reasons)
    assert kinds.count("promotion policy") == 3  # loss, improvement, data set
    assert "ciphertext" in kinds


def test_invalid_expectations_are_rejected_up_front(initdata):
    with pytest.raises(ValueError, match="approved_datasets: 'v1'"):
        _expect(initdata, approved_datasets={"v1"})
    with pytest.raises(ValueError, match="max_eval_loss must be a finite number"):
        _expect(initdata, max_eval_loss=float("nan"))


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
