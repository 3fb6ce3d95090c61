"""Promotion of a checkpoint whose token came through the KBS protocol from the Trustee stand-in
(sample CPU + two sampledevice GPUs, initdata bound), exactly as the workload would get it."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.manifest import CONFIG_FILE, sign_manifest
from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.client import KbsClient
from coco_ai.promotion import (
    PromotionRefused,
    promote,
    sqlite_registry_uri,
    verify_model_signature,
)
from coco_ai.trustee_dev.server import serve_in_thread

from .conftest import (
    APPROVED_MODULE,
    BASE_MODEL_DIGEST,
    DATASET_DIGEST,
    IMAGE_REF,
    KEY_URI,
    RUN_ID,
    config_file_bytes,
    training_config,
)


@pytest.mark.timeout(120)
def test_stand_in_token_promotes_end_to_end(tmp_path, promotion_keys, owner):
    admin = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # Two sample GPUs: a stand-in extension (real Trustee attests one sampledevice).
    with serve_in_thread(
        tmp_path / "trustee", admin, extensions={"multi-gpu-sampledevice"}
    ) as trustee:
        tls_ca = trustee.tls_ca_path.read_bytes()
        ca_pem = trustee.token_anchor_path.read_bytes()
        signer_pem = trustee.token_signer_path.read_bytes()
        initdata = build_initdata(
            trustee.url,
            tls_ca,
            {"io.coco-ai.run-id": RUN_ID, "io.coco-ai.checkpoint-key": KEY_URI},
            image=IMAGE_REF,
            module=APPROVED_MODULE,
        )
        client = KbsClient(
            trustee.url,
            SampleAttester(init_data_digest=initdata.digest()),
            [SampleDeviceAttester(count=2)],
            initdata_toml=initdata.toml,
            ca_cert=tls_ca,
        )
        token = client.attest()
        tee_private_pem = client.tee_key.private_pem()

    # the data owner's policy names this Trustee's token CA and pins its EAR signer
    owner_policy = owner.sign(
        model_name="standin-model",
        attestation__trust_anchor_pem=ca_pem.decode(),
        attestation__token_signer_pem=signer_pem.decode(),
        attestation__min_gpus=2,
        thresholds__max_eval_loss=1.5,
    )
    config_json = config_file_bytes(training_config())
    plain = tmp_path / "adapter"
    plain.mkdir()
    (plain / "adapter_model.safetensors").write_bytes(os.urandom(20_000))
    ckpt = tmp_path / "ckpt"
    manifest = encrypt_checkpoint(
        plain,
        ckpt,
        kek=os.urandom(32),
        key_uri=KEY_URI,
        run_id=RUN_ID,
        meta={
            "base_model_digest": BASE_MODEL_DIGEST,
            "dataset_digest": DATASET_DIGEST,
            "training_config_digest": "sha256:" + hashlib.sha256(config_json).hexdigest(),
            "metrics": {"eval_loss": 1.1, "eval_loss_before": 2.5},
        },
    )
    (ckpt / CONFIG_FILE).write_bytes(config_json)
    sign_manifest(manifest, tee_private_pem, token, dst_dir=str(ckpt))
    registry = sqlite_registry_uri(tmp_path / "mlflow.db")

    with pytest.raises(PromotionRefused, match="token attests 2 GPU"):
        promote(
            str(ckpt),
            owner_policy=owner_policy,
            initdata=initdata,
            narrowing={"min_gpus": 3},
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )

    result = promote(
        str(ckpt),
        owner_policy=owner_policy,
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
    )
    assert result.version == 1
    assert result.evidence.attestation["submods"] == {
        "cpu0": "affirming",
        "gpu0": "affirming",
        "gpu1": "affirming",
    }
    assert result.evidence.attestation["tee"] == "sample"
    verify_model_signature(str(ckpt), public_key_path=promotion_keys[1])
