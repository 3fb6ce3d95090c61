"""Real attestation material for promotion tests: EAR tokens issued by the Trustee stand-in's
token broker (its own CA, ES256, x5c), TEE keys, initdata and promotion keys."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.manifest import public_jwk_of, sign_manifest
from coco_ai.guest.initdata import build_initdata
from coco_ai.promotion import PromotionExpectations
from coco_ai.trustee_dev.state import StateDir
from coco_ai.trustee_dev.tokens import TokenBroker

RUN_ID = "run-2026-11-26-a"
IMAGE_DIGEST = "sha256:" + "1" * 64


@dataclass
class TokenIssuer:
    """Builds Trustee-shaped submods (sample CPU, sampledevice GPUs) and has the stand-in's
    token broker sign them."""

    broker: TokenBroker

    @property
    def ca_pem(self) -> bytes:
        return self.broker.ca_pem

    def issue(
        self,
        *,
        tee_pubkey: dict,
        init_data_hex: str | None,
        init_data_claims: dict | None,
        gpus: int = 1,
        cpu_status: str = "affirming",
        gpu_status: str = "affirming",
        iat: float | None = None,
        lifetime: int = 300,
    ) -> str:
        submods = {
            "cpu0": {
                "ear.status": cpu_status,
                "ear.trustworthiness-vector": {"executables": 2, "hardware": 2},
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": {
                    "sample": {"svn": "1"},
                    "init_data": init_data_hex,
                    "init_data_claims": init_data_claims,
                    "report_data": "00" * 48,
                    "runtime_data_claims": {
                        "nonce": "bm9uY2U",
                        "tee-pubkey": tee_pubkey,
                        "additional-evidence": "",
                    },
                },
            }
        }
        for i in range(gpus):
            submods[f"gpu{i}"] = {
                "ear.status": gpu_status,
                "ear.trustworthiness-vector": {"hardware": 2},
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": {"sampledevice": {"svn": "2"}},
            }
        now = time.time() - 5 if iat is None else iat
        return self.broker.issue(submods, now, lifetime)


@pytest.fixture(scope="session")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(TokenBroker(StateDir(tmp_path_factory.mktemp("trustee-state"))))


@pytest.fixture(scope="session")
def initdata():
    return build_initdata(
        "https://127.0.0.1:8080",
        None,
        {"io.coco-ai.run-id": RUN_ID, "io.coco-ai.image-digest": IMAGE_DIGEST},
    )


def _p256_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="session")
def tee_key_pem() -> bytes:
    return _p256_pem()


@pytest.fixture(scope="session")
def promotion_keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) PEM files of an EC P-256 promotion key."""
    d = tmp_path_factory.mktemp("promotion-key")
    pem = _p256_pem()
    key = serialization.load_pem_private_key(pem, password=None)
    (d / "promotion.key").write_bytes(pem)
    (d / "promotion.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return d / "promotion.key", d / "promotion.pub"


@pytest.fixture(scope="session")
def other_p256_pem() -> bytes:
    return _p256_pem()


BASE_MODEL_DIGEST = "sha256:" + "b" * 64
DATASET_DIGEST = "sha256:" + "d" * 64
KEY_URI = f"kbs:///coco-ai/checkpoint/{RUN_ID}"


@dataclass
class CheckpointFactory:
    """Real encrypted checkpoints (coco_ai.crypto), signed by the attested TEE key."""

    root: Path
    issuer: TokenIssuer
    initdata: object
    tee_key_pem: bytes

    def token(self, **overrides) -> str:
        args = {
            "tee_pubkey": public_jwk_of(self.tee_key_pem),
            "init_data_hex": self.initdata.digest().hex(),
            "init_data_claims": self.initdata.claims(),
        }
        args.update(overrides)
        return self.issuer.issue(**args)

    def make(
        self,
        name: str = "ckpt",
        *,
        token: str | None = None,
        metrics: dict | None = None,
        dataset_digest: str = DATASET_DIGEST,
        base_model_digest: str = BASE_MODEL_DIGEST,
        created_at: float | None = None,
    ) -> Path:
        src = self.root / f"{name}-plain"
        src.mkdir()
        (src / "adapter_model.safetensors").write_bytes(os.urandom(50_000))
        (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
        dst = self.root / name
        manifest = encrypt_checkpoint(
            src,
            dst,
            kek=os.urandom(32),
            key_uri=KEY_URI,
            run_id=RUN_ID,
            meta={
                "base_model_digest": base_model_digest,
                "dataset_digest": dataset_digest,
                "training_config_digest": "sha256:" + "c" * 64,
                "metrics": {"eval_loss": 1.2, "eval_loss_before": 3.0}
                if metrics is None
                else metrics,
            },
            segment_size=16384,
            now=created_at,
        )
        sign_manifest(manifest, self.tee_key_pem, token or self.token(), dst_dir=str(dst))
        return dst


@pytest.fixture
def checkpoints(tmp_path, issuer, initdata, tee_key_pem) -> CheckpointFactory:
    return CheckpointFactory(tmp_path, issuer, initdata, tee_key_pem)


def run_expectations(initdata, **overrides) -> PromotionExpectations:
    """What the test run's checkpoints must prove: this run, its approved inputs, its initdata
    and image; `overrides` add or replace fields (thresholds, key URI, …)."""
    return PromotionExpectations(
        **{
            "run_id": RUN_ID,
            "approved_base_models": {BASE_MODEL_DIGEST},
            "approved_datasets": {DATASET_DIGEST},
            "init_data_digest": initdata.digest().hex(),
            "image_digest": IMAGE_DIGEST,
            **overrides,
        }
    )
