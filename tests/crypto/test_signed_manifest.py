"""Signed manifests bound to attestation: keyless verification (a), (b), (c) and replay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jwcrypto import jwk, jws

from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.errors import (
    AttestationError,
    IncompleteCheckpointError,
    IntegrityError,
    ReplayError,
    SignatureError,
)
from coco_ai.crypto.manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    TOKEN_FILE,
    Manifest,
    sign_manifest,
)
from coco_ai.crypto.transfer import copy_checkpoint, is_complete, verify_checkpoint
from coco_ai.crypto.verify import VerificationPolicy
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.kbs.wire import canonical_json

from .helpers import KEY_URI, SEGMENT, TokenIssuer

NOW = int(time.time())


def signed_checkpoint(
    plain: Path,
    dst: Path,
    kek: bytes,
    tee: TeeKeyPair,
    issuer: TokenIssuer,
    *,
    run_id: str = "run-a",
    token_run_id: str | None = None,
    created_at: int = NOW - 60,
    **token_args,
) -> Manifest:
    m = encrypt_checkpoint(
        plain,
        dst,
        kek=kek,
        key_uri=KEY_URI,
        run_id=run_id,
        meta={"metrics": {"eval_loss": 0.5}, "created_at": created_at},
        segment_size=SEGMENT,
    )
    token_args.setdefault("iat", created_at - 30)
    token = issuer.issue(tee.public_jwk(), run_id=token_run_id or run_id, **token_args)
    sign_manifest(m, tee.private_pem(), token, dst_dir=str(dst))
    return m


@pytest.fixture
def ckpt(plain_dir, tmp_path, kek, tee_key, attestation) -> Path:
    signed_checkpoint(plain_dir, tmp_path / "ckpt", kek, tee_key, attestation)
    return tmp_path / "ckpt"


def verify(path, issuer, run_id="run-a", **policy):
    return verify_checkpoint(
        path,
        trust_anchor_pem=issuer.ca_pem,
        policy=VerificationPolicy.for_run(run_id, **policy),
        now=NOW,
    )


def test_a_pinned_token_signer_admits_only_its_own_tokens(ckpt, attestation):
    from cryptography.hazmat.primitives import serialization

    own = attestation.chain[0].public_bytes(serialization.Encoding.PEM)
    assert verify(ckpt, attestation, token_signer_pem=own).manifest.run_id == "run-a"
    other = TokenIssuer.create().chain[0].public_bytes(serialization.Encoding.PEM)
    with pytest.raises(AttestationError, match="not the configured signer"):
        verify(ckpt, attestation, token_signer_pem=other)


def test_verifies_without_key(ckpt, attestation, tee_key):
    v = verify(ckpt, attestation)
    assert v.manifest.run_id == "run-a"
    assert (
        v.manifest_digest
        == "sha256:" + __import__("hashlib").sha256((ckpt / MANIFEST_FILE).read_bytes()).hexdigest()
    )
    assert {k: v.signer_jwk[k] for k in ("x", "y")} == {
        k: tee_key.public_jwk()[k] for k in ("x", "y")
    }
    assert v.claims.status("gpu0") == "affirming"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        MANIFEST_FILE,
        SIGNATURE_FILE,
        "objects",
        TOKEN_FILE,
    ]


def test_jws_is_es256_over_the_manifest_bytes(ckpt):
    sig = jws.JWS()
    sig.deserialize((ckpt / SIGNATURE_FILE).read_text())
    assert sig.jose_header["alg"] == "ES256"
    assert sig.objects["payload"] == (ckpt / MANIFEST_FILE).read_bytes()


def test_manifest_edited_after_signing(ckpt, attestation):
    p = ckpt / MANIFEST_FILE
    d = json.loads(p.read_bytes())
    d["metrics"]["eval_loss"] = 0.01
    p.write_bytes(canonical_json(d))
    with pytest.raises(SignatureError, match="edited after signing"):
        verify(ckpt, attestation)


def test_manifest_signed_by_non_attested_key(ckpt, attestation):
    """An attacker re-signs an edited manifest with their own key, keeping the real token."""
    p = ckpt / MANIFEST_FILE
    d = json.loads(p.read_bytes())
    d["metrics"]["eval_loss"] = 0.01
    payload = canonical_json(d)
    p.write_bytes(payload)
    other = jwk.JWK.generate(kty="EC", crv="P-256")
    sig = jws.JWS(payload)
    sig.add_signature(other, alg="ES256", protected={"alg": "ES256", "typ": "coco-ai-manifest+jws"})
    (ckpt / SIGNATURE_FILE).write_text(sig.serialize(compact=True))
    with pytest.raises(SignatureError, match="attested TEE key"):
        verify(ckpt, attestation)


def test_sign_refuses_key_that_is_not_attested(plain_dir, tmp_path, kek, tee_key, attestation):
    m = encrypt_checkpoint(plain_dir, tmp_path / "c", kek=kek, key_uri=KEY_URI, run_id="r", meta={})
    token = attestation.issue(TeeKeyPair.generate().public_jwk(), run_id="r")
    with pytest.raises(SignatureError, match="not the TEE key attested"):
        sign_manifest(m, tee_key.private_pem(), token, dst_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c" / SIGNATURE_FILE).exists()
    assert not (tmp_path / "c" / TOKEN_FILE).exists()


def test_token_expired_before_signing(plain_dir, tmp_path, kek, tee_key, attestation):
    """Token valid [t-600, t-300]; manifest made at t: the token had expired."""
    signed_checkpoint(
        plain_dir,
        tmp_path / "c",
        kek,
        tee_key,
        attestation,
        created_at=NOW - 10,
        iat=NOW - 610,
        lifetime=300,
    )
    with pytest.raises(AttestationError, match="expired"):
        verify(tmp_path / "c", attestation)


def test_token_issued_after_manifest(plain_dir, tmp_path, kek, tee_key, attestation):
    signed_checkpoint(
        plain_dir,
        tmp_path / "c",
        kek,
        tee_key,
        attestation,
        created_at=NOW - 100,
        iat=NOW - 50,
    )
    with pytest.raises(AttestationError, match="future"):
        verify(tmp_path / "c", attestation)


def test_old_token_still_verifies_later(plain_dir, tmp_path, kek, tee_key, attestation):
    """Promotion may run hours after the run: the token is judged at signing time."""
    signed_checkpoint(plain_dir, tmp_path / "c", kek, tee_key, attestation, created_at=NOW - 7200)
    assert verify(tmp_path / "c", attestation).manifest.created_at == NOW - 7200


def test_manifest_from_the_future(plain_dir, tmp_path, kek, tee_key, attestation):
    signed_checkpoint(plain_dir, tmp_path / "c", kek, tee_key, attestation, created_at=NOW + 900)
    with pytest.raises(SignatureError, match="future"):
        verify(tmp_path / "c", attestation)


def test_token_from_another_ca(ckpt):
    with pytest.raises(AttestationError, match="trust anchor"):
        verify(ckpt, TokenIssuer.create("another CA"))


def test_token_tampered(ckpt, attestation):
    token = (ckpt / TOKEN_FILE).read_text()
    head, payload, sig = token.split(".")
    (ckpt / TOKEN_FILE).write_text(f"{head}.{payload[:-2]}AA.{sig}")
    with pytest.raises(AttestationError):
        verify(ckpt, attestation)


@pytest.mark.parametrize(
    ("token_args", "message"),
    [
        ({"gpu_status": "warning"}, "gpu0 is 'warning'"),
        ({"cpu_status": "contraindicated"}, "cpu0 is 'contraindicated'"),
        ({"gpus": 0}, "0 GPU"),
    ],
)
def test_policy_refuses_token(plain_dir, tmp_path, kek, tee_key, attestation, token_args, message):
    signed_checkpoint(plain_dir, tmp_path / "c", kek, tee_key, attestation, **token_args)
    with pytest.raises(AttestationError, match=message):
        verify(tmp_path / "c", attestation)


def test_policy_min_gpus(plain_dir, tmp_path, kek, tee_key, attestation):
    signed_checkpoint(plain_dir, tmp_path / "c", kek, tee_key, attestation, gpus=2)
    assert verify(tmp_path / "c", attestation, min_gpus=2)
    with pytest.raises(AttestationError, match=r"2 GPU.*requires 4"):
        verify(tmp_path / "c", attestation, min_gpus=4)


def test_old_manifest_replayed_for_new_run(ckpt, attestation):
    """A genuine checkpoint of run-a presented as the result of run-b."""
    with pytest.raises(ReplayError, match="run-a"):
        verify(ckpt, attestation, run_id="run-b")


def test_replay_checked_without_initdata_claim(ckpt, attestation):
    """Even a policy that pins no initdata claims refuses another run's manifest."""
    with pytest.raises(ReplayError, match="belongs to run 'run-a'"):
        verify_checkpoint(
            ckpt,
            trust_anchor_pem=attestation.ca_pem,
            policy=VerificationPolicy(run_id="run-b"),
            now=NOW,
        )


def test_token_of_another_run(plain_dir, tmp_path, kek, tee_key, attestation):
    """Manifest says run-b, but the TEE that signed it was attested for run-a."""
    signed_checkpoint(
        plain_dir, tmp_path / "c", kek, tee_key, attestation, run_id="run-b", token_run_id="run-a"
    )
    with pytest.raises(ReplayError, match="issued to run 'run-a'"):
        verify(tmp_path / "c", attestation, run_id="run-b")


def test_missing_signature(ckpt, attestation):
    (ckpt / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match="no manifest signature"):
        verify(ckpt, attestation)


def test_missing_token(ckpt, attestation):
    (ckpt / TOKEN_FILE).unlink()
    with pytest.raises(AttestationError, match="no attestation token"):
        verify(ckpt, attestation)


def test_ciphertext_changed_after_signing(ckpt, attestation):
    obj = sorted((ckpt / "objects").iterdir())[0]
    data = bytearray(obj.read_bytes())
    data[100] ^= 1
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="ciphertext BLAKE3 differs"):
        verify(ckpt, attestation)


def test_missing_and_extra_object_after_signing(ckpt, attestation):
    objs = sorted((ckpt / "objects").iterdir())
    (ckpt / "objects" / ("e" * 64)).write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra file"):
        verify(ckpt, attestation)
    (ckpt / "objects" / ("e" * 64)).unlink()
    objs[0].unlink()
    with pytest.raises(IntegrityError, match="missing file"):
        verify(ckpt, attestation)


def test_incomplete_checkpoint(ckpt, attestation):
    (ckpt / MANIFEST_FILE).unlink()
    assert not is_complete(str(ckpt))
    with pytest.raises(IncompleteCheckpointError):
        verify(ckpt, attestation)


def test_copy_with_verification(ckpt, tmp_path, attestation):
    policy = VerificationPolicy.for_run("run-a")
    copy_checkpoint(
        ckpt, tmp_path / "durable", trust_anchor_pem=attestation.ca_pem, policy=policy, now=NOW
    )
    assert verify(tmp_path / "durable", attestation).manifest.run_id == "run-a"


def test_copy_refuses_unattested_checkpoint(ckpt, tmp_path, attestation):
    policy = VerificationPolicy.for_run("run-b")
    with pytest.raises(ReplayError):
        copy_checkpoint(
            ckpt, tmp_path / "durable", trust_anchor_pem=attestation.ca_pem, policy=policy, now=NOW
        )
    assert not (tmp_path / "durable").exists()
