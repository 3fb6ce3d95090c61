"""Promotion of a checkpoint held in S3 (a real S3 API on loopback: moto's server)."""

from __future__ import annotations

import pytest

from coco_ai.crypto.transfer import upload_checkpoint
from coco_ai.promotion import (
    SignatureInvalid,
    model_versions,
    promote,
    sqlite_registry_uri,
    verify_model_signature,
)
from coco_ai.promotion.audit import audit_promotion
from coco_ai.storage import open_store

from .conftest import RUN_ID


@pytest.fixture(scope="module")
def s3_options(moto_endpoint, s3_admin):
    s3_admin.create_bucket(Bucket="checkpoints")
    return {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}


@pytest.mark.timeout(120)
def test_promotes_and_signs_a_checkpoint_in_s3(
    s3_options, checkpoints, initdata, promotion_keys, owner, tmp_path
):
    local = checkpoints.make()
    uri = f"s3://checkpoints/runs/{RUN_ID}"
    upload_checkpoint(local, uri, **s3_options)
    registry = sqlite_registry_uri(tmp_path / "mlflow.db")

    result = promote(
        uri,
        owner_policy=owner.sign(model_name="s3-model"),
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
        storage_options=s3_options,
    )

    assert result.signature.signature_uri == uri + ".sig"
    runs = open_store("s3://checkpoints/runs", **s3_options)
    assert runs.exists(f"{RUN_ID}.sig")
    assert result.record_uri == uri + ".promotion.json"
    assert runs.exists(f"{RUN_ID}.promotion.json")
    assert [v.source for v in model_versions("s3-model", registry_uri=registry)] == [uri]
    verify_model_signature(uri, public_key_path=promotion_keys[1], storage_options=s3_options)

    # re-checked from its record in the store, with the owner's public key alone
    audit = audit_promotion(
        uri,
        owner_public_key_pem=owner.public_pem,
        registry_uri=registry,
        storage_options=s3_options,
    )
    assert audit.verified and audit.exit_code == 0, audit.to_dict()

    # tampering with the stored ciphertext breaks the signature
    store = open_store(uri, **s3_options)
    victim = store.list("objects")[0]
    data = bytearray(store.read_bytes(victim))
    data[7] ^= 0x80
    store.put_bytes(victim, bytes(data))
    with pytest.raises(SignatureInvalid, match="changed since signing"):
        verify_model_signature(uri, public_key_path=promotion_keys[1], storage_options=s3_options)
    audit = audit_promotion(uri, owner_public_key_pem=owner.public_pem, storage_options=s3_options)
    assert audit.exit_code == 3
    assert audit.check("model signature").status == "failed"
    assert victim in audit.check("model signature").reason
