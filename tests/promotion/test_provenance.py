"""The provenance record the Airflow view shows: real checkpoints, real tokens, real registry.

The verifier re-runs the keyless chain on stored bytes, so a tampered artefact shows up as a
failed check with its reason; the record holds public references only.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from coco_ai.promotion import promote, sqlite_registry_uri
from coco_ai.promotion.registry import find_model_version
from coco_ai.provenance import (
    FAILED,
    NOT_RUN,
    PASSED,
    WITHHELD,
    KeylessChainVerifier,
    Subject,
    attestation_summary,
    provenance_record,
    public_reference,
)

from .conftest import (
    BASE_MODEL_DIGEST,
    DATASET_DIGEST,
    IMAGE_DIGEST,
    KEY_URI,
    RUN_ID,
)

MODEL = "coco-provenance"


@pytest.fixture
def promoted(checkpoints, initdata, promotion_keys, owner, tmp_path):
    """A checkpoint promoted for real: (checkpoint dir, registry tags, registry uri)."""
    registry = sqlite_registry_uri(tmp_path / "registry" / "mlflow.db")
    ckpt = checkpoints.make()
    result = promote(
        str(ckpt),
        owner_policy=owner.sign(model_name=MODEL),
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
    )
    found = find_model_version(MODEL, result.evidence.manifest_digest, registry_uri=registry)
    return ckpt, dict(found.tags), registry


def _subject(ckpt, tags, initdata, **overrides) -> Subject:
    args = {
        "checkpoint_uri": str(ckpt),
        "run_id": RUN_ID,
        "initdata_digest": initdata.digest().hex(),
        "image_digest": IMAGE_DIGEST,
        "min_gpus": 1,
        "signature_uri": tags.get("coco-ai.signature_uri"),
        "registry_tags": tags,
    }
    args.update(overrides)
    return Subject(**args)


def _statuses(verification) -> dict[str, str]:
    return {c.name: c.status for c in verification.checks}


def test_promoted_checkpoint_verifies_with_every_check_named(
    promoted, issuer, initdata, promotion_keys
):
    ckpt, tags, _ = promoted
    verifier = KeylessChainVerifier(
        trust_anchor_pem=issuer.ca_pem, signing_public_key_path=str(promotion_keys[1])
    )
    result = verifier.verify(_subject(ckpt, tags, initdata))
    assert _statuses(result) == {
        "attestation token": PASSED,
        "attestation policy": PASSED,
        "manifest signature": PASSED,
        "ciphertext": PASSED,
        "model signature": PASSED,
        "registry": PASSED,
    }
    assert result.verdict == "verified"
    reasons = {c.name: c.reason for c in result.checks}
    assert "1 GPU(s) affirming" in reasons["attestation policy"]
    assert initdata.digest().hex() in reasons["attestation policy"]


def test_tampered_ciphertext_fails_ciphertext_and_model_signature(
    promoted, issuer, initdata, promotion_keys
):
    ckpt, tags, _ = promoted
    victim = next(p for p in (ckpt / "objects").iterdir() if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    verifier = KeylessChainVerifier(
        trust_anchor_pem=issuer.ca_pem, signing_public_key_path=str(promotion_keys[1])
    )
    result = verifier.verify(_subject(ckpt, tags, initdata))
    statuses = _statuses(result)
    assert statuses["ciphertext"] == FAILED
    assert statuses["model signature"] == FAILED
    assert statuses["attestation token"] == statuses["manifest signature"] == PASSED
    assert result.verdict == "failed"
    reason = next(c.reason for c in result.checks if c.name == "ciphertext")
    assert "ciphertext BLAKE3 differs from the manifest" in reason, reason


def test_foreign_trust_anchor_fails_the_token_and_skips_the_policy(
    promoted, initdata, promotion_keys, tmp_path_factory
):
    from coco_ai.trustee_dev.state import StateDir
    from coco_ai.trustee_dev.tokens import TokenBroker

    other_ca = TokenBroker(StateDir(tmp_path_factory.mktemp("other-trustee"))).ca_pem
    ckpt, tags, _ = promoted
    result = KeylessChainVerifier(
        trust_anchor_pem=other_ca, signing_public_key_path=str(promotion_keys[1])
    ).verify(_subject(ckpt, tags, initdata))
    statuses = _statuses(result)
    assert statuses["attestation token"] == FAILED
    assert statuses["attestation policy"] == NOT_RUN
    assert statuses["manifest signature"] == FAILED
    assert result.verdict == "failed"


def test_contraindicated_gpu_fails_the_policy_check(checkpoints, issuer, initdata):
    ckpt = checkpoints.make(token=checkpoints.token(gpu_status="contraindicated"))
    result = KeylessChainVerifier(trust_anchor_pem=issuer.ca_pem).verify(
        _subject(ckpt, {}, initdata, signature_uri=None)
    )
    statuses = _statuses(result)
    assert statuses["attestation token"] == PASSED
    assert statuses["attestation policy"] == FAILED
    reason = next(c.reason for c in result.checks if c.name == "attestation policy")
    assert "gpu0" in reason and "contraindicated" in reason
    assert statuses["model signature"] == FAILED  # never promoted
    assert statuses["registry"] == FAILED


def test_other_runs_expectations_fail_the_policy(promoted, issuer, initdata, promotion_keys):
    ckpt, tags, _ = promoted
    result = KeylessChainVerifier(trust_anchor_pem=issuer.ca_pem).verify(
        _subject(ckpt, tags, initdata, run_id="another-run")
    )
    statuses = _statuses(result)
    assert statuses["attestation policy"] == FAILED
    assert statuses["manifest signature"] == FAILED
    assert statuses["model signature"] == NOT_RUN  # no public key configured


def test_attestation_summary_lists_submods_policies_and_initdata(checkpoints, initdata):
    token = checkpoints.token(gpus=2)
    summary = attestation_summary(token)
    assert summary["tee"] == "sample"
    assert [s["name"] for s in summary["submods"]] == ["cpu0", "gpu0", "gpu1"]
    assert {s["status"] for s in summary["submods"]} == {"affirming"}
    assert summary["submods"][0]["trust_vector"] == {"executables": 2, "hardware": 2}
    assert summary["submods"][1]["policy_id"] == "default"
    assert summary["initdata_digest"] == initdata.digest().hex()
    assert summary["initdata_binds"]["io.coco-ai.run-id"] == RUN_ID
    assert summary["initdata_binds"]["io.coco-ai.image-digest"] == IMAGE_DIGEST


def test_record_withholds_values_that_are_not_public_references(promoted, issuer, initdata):
    ckpt, tags, _ = promoted
    key = os.urandom(32)
    planted = {
        "run_id": RUN_ID,
        "checkpoint_key_uri": base64.b64encode(key).decode(),  # a key where a URI belongs
        "inputs": {"dataset": {"uri": "s3://data/v1.enc", "key_uri": key.hex()}},
        "initdata_digest": "sha384:" + initdata.digest().hex(),
    }
    record = provenance_record(
        _subject(ckpt, tags, initdata),
        KeylessChainVerifier(trust_anchor_pem=issuer.ca_pem),
        run_refs=planted,
    )
    text = json.dumps(record)
    assert base64.b64encode(key).decode() not in text
    assert key.hex() not in text
    assert record["run_refs"]["checkpoint_key_uri"] == WITHHELD
    assert record["released_keys"]["dataset key"] == WITHHELD
    assert record["run_refs"]["initdata_digest"] == planted["initdata_digest"]
    assert record["manifest"]["key_uri"] == KEY_URI
    assert record["verification"]["verdict"] == "failed"  # model signature: no public key


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("kbs:///coco-ai/checkpoint/run-1", True),
        ("sha256:" + "a" * 64, True),
        ("file:///tmp/store/checkpoints/run-1", True),
        ("registry.example/coco-ai/finetune@sha256:" + "0" * 64, True),
        ("affirming", True),
        ("confidential_finetune-manual__2026-12-02T02-30-00-abc123def456", True),
        (base64.b64encode(bytes(range(32))).decode(), False),
        (bytes(range(32)).hex(), False),
        ("-----BEGIN PRIVATE KEY-----", False),
        ({"k": "v"}, False),
    ],
)
def test_public_reference_shapes(value, shown):
    assert (public_reference(value) == value) is shown


def _run_refs(run_id: str = RUN_ID):
    from coco_ai.digest import Digest
    from coco_ai.kbs.resource_path import parse_resource_uri
    from coco_ai.run_keys import DEFAULT_ROOT
    from coco_ai.runs import RunInput, RunRefs

    return RunRefs.plan(
        workload="finetune",
        module="coco_ai.workloads.finetune",
        run_id=run_id,
        image="registry.example/coco-ai/finetune@" + IMAGE_DIGEST,
        run_key_root=DEFAULT_ROOT,
        inputs={
            "dataset": RunInput(
                "s3://data/v1.enc",
                Digest.parse(DATASET_DIGEST),
                parse_resource_uri("kbs:///coco-ai/dataset-key/v1"),
            ),
            "base_model": RunInput("s3://models/smol", Digest.parse(BASE_MODEL_DIGEST)),
        },
        staging_root="s3://staging/",
        kbs_url="https://127.0.0.1:8080",
        kbs_ca_pem=None,
    )


def test_run_refs_pin_the_runs_whole_initdata(checkpoints, issuer):
    refs = _run_refs()
    initdata = refs.initdata()
    token = checkpoints.token(
        init_data_hex=initdata.digest().hex(), init_data_claims=initdata.claims()
    )
    ckpt = checkpoints.make(token=token)
    verifier = KeylessChainVerifier(trust_anchor_pem=issuer.ca_pem)
    subject = Subject(checkpoint_uri=str(ckpt), run_id=RUN_ID, min_gpus=1, run_refs=refs)
    assert _statuses(verifier.verify(subject))["attestation policy"] == PASSED
    # another run's references (other initdata, other key) do not match this token
    other = Subject(
        checkpoint_uri=str(ckpt), run_id=RUN_ID, min_gpus=1, run_refs=_run_refs("run-other")
    )
    assert _statuses(verifier.verify(other))["attestation policy"] == FAILED

    record = provenance_record(subject, verifier, run_refs=refs.to_xcom())
    assert record["released_keys"] == {
        "run grant": refs.grant.uri(),
        "run-key root": "kbs:///coco-ai/run-key-root/v1",
        "dataset key": "kbs:///coco-ai/dataset-key/v1",
        "checkpoint key (derived in the TEE)": refs.checkpoint_key.uri(),
    }
    assert record["run_refs"]["dataset digest"] == DATASET_DIGEST
    assert record["run_refs"]["initdata_digest"] == str(refs.initdata_digest)
    assert "initdata_annotation" not in record["run_refs"]
