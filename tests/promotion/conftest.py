"""Real attestation material for promotion tests: EAR tokens issued by the Trustee stand-in's
token broker (its own CA, ES256, x5c), TEE keys, initdata, promotion keys, and the data owner's
key and signed policy that every promotion is judged by."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.manifest import CONFIG_FILE, public_jwk_of, sign_manifest
from coco_ai.guest.initdata import (
    CHECKPOINT_KEY_KEY,
    IMAGE_DIGEST_KEY,
    RUN_ID_KEY,
    Initdata,
    build_initdata,
)
from coco_ai.owner_policy import OwnerPolicy, SignedOwnerPolicy, verify_owner_policy
from coco_ai.promotion import PromotionExpectations
from coco_ai.trustee_dev.state import StateDir
from coco_ai.trustee_dev.tokens import TokenBroker
from tests.code_binding import APPROVED_MODULE

RUN_ID = "run-2026-11-26-a"
IMAGE_DIGEST = "sha256:" + "1" * 64
IMAGE_REF = "registry.example/coco-ai/finetune@" + IMAGE_DIGEST
BASE_MODEL_DIGEST = "sha256:" + "b" * 64
DATASET_DIGEST = "sha256:" + "d" * 64
KEY_URI = f"kbs:///coco-ai/checkpoint/{RUN_ID}"
MODEL = "coco-finetuned"


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
        appraisal_policy_id: str = "default",
        cpu_evidence: str = "sample",
        gpu_evidence: str = "sampledevice",
    ) -> str:
        """`cpu_evidence` / `gpu_evidence` name the annotated evidence Trustee's verifier wrote
        (sample and sampledevice are its development verifiers)."""
        submods = {
            "cpu0": {
                "ear.status": cpu_status,
                "ear.trustworthiness-vector": {"executables": 2, "hardware": 2},
                "ear.appraisal-policy-id": appraisal_policy_id,
                "ear.veraison.annotated-evidence": {
                    cpu_evidence: {"svn": "1"},
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
                "ear.appraisal-policy-id": appraisal_policy_id,
                "ear.veraison.annotated-evidence": {gpu_evidence: {"svn": "2"}},
            }
        now = time.time() - 5 if iat is None else iat
        return self.broker.issue(submods, now, lifetime)


@pytest.fixture(scope="session")
def issuer(tmp_path_factory) -> TokenIssuer:
    return TokenIssuer(TokenBroker(StateDir(tmp_path_factory.mktemp("trustee-state"))))


def run_initdata(run_id: str = RUN_ID, **claims: str) -> Initdata:
    """A run's initdata: run id and checkpoint key claims, bound to the approved image (agent
    policy, image policy, image digest) as key release builds it. `claims` replace claims,
    keyed by claim name with '-' written '_'; an image_digest claim builds initdata that names
    that digest but binds no image (as an attacker's would)."""
    values = {RUN_ID_KEY: run_id, CHECKPOINT_KEY_KEY: KEY_URI}
    for name, value in claims.items():
        values[f"io.coco-ai.{name.replace('_', '-')}"] = value
    image = None if IMAGE_DIGEST_KEY in values else IMAGE_REF
    return build_initdata(
        "https://127.0.0.1:8080",
        None,
        values,
        image=image,
        module=None if image is None else APPROVED_MODULE,
    )


@pytest.fixture(scope="session")
def initdata() -> Initdata:
    return run_initdata()


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


def training_config(run_id: str = RUN_ID, **recipe) -> dict:
    """A real, validated fine-tune config of the run (FinetuneConfig.to_dict()); `recipe`
    replaces `training` settings (e.g. learning_rate=...)."""
    from coco_ai.workloads.finetune.config import FinetuneConfig

    return FinetuneConfig.from_dict(
        {
            "run_id": run_id,
            "staging_uri": f"file:///staging/{run_id}",
            "checkpoint_key_uri": KEY_URI,
            "run_key_root_uri": "kbs:///coco-ai/run-key-root/v1",
            "dataset": {"uri": "s3://data/v1.enc", "key_uri": "kbs:///coco-ai/dataset-key/v1"},
            "base_model": {"path": "s3://models/smol", "digest": BASE_MODEL_DIGEST},
            "training": recipe,
        }
    ).to_dict()


def config_file_bytes(config: dict) -> bytes:
    """training_config.json exactly as the workload writes it (workload.config_bytes)."""
    from coco_ai.workloads.finetune.config import FinetuneConfig
    from coco_ai.workloads.finetune.workload import config_bytes

    return config_bytes(FinetuneConfig.from_dict(config))


def recipe_of(config: dict) -> str:
    from coco_ai.workloads.finetune.config import recipe_digest

    return recipe_digest(config)


RECIPE_DIGEST = recipe_of(training_config())


@dataclass
class CheckpointFactory:
    """Real encrypted checkpoints (coco_ai.crypto) with the run's training_config.json beside
    the manifest, signed by the attested TEE key."""

    root: Path
    issuer: TokenIssuer
    initdata: Initdata
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
        config: dict | None = None,
        write_config: bool = True,
    ) -> Path:
        """`config` (default: this run's) is the config the TEE ran: its digest goes into the
        manifest, its canonical JSON beside it (unless `write_config` is False)."""
        import hashlib

        config_json = config_file_bytes(training_config() if config is None else config)
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
                "training_config_digest": "sha256:" + hashlib.sha256(config_json).hexdigest(),
                "metrics": {"eval_loss": 1.2, "eval_loss_before": 3.0}
                if metrics is None
                else metrics,
            },
            segment_size=16384,
            now=created_at,
        )
        if write_config:
            (dst / CONFIG_FILE).write_bytes(config_json)
        if token is None:  # a token valid when the checkpoint was made
            token = self.token() if created_at is None else self.token(iat=created_at - 5)
        sign_manifest(manifest, self.tee_key_pem, token, dst_dir=str(dst))
        return dst


@pytest.fixture
def checkpoints(tmp_path, issuer, initdata, tee_key_pem) -> CheckpointFactory:
    return CheckpointFactory(tmp_path, issuer, initdata, tee_key_pem)


# ---- the data owner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataOwner:
    """The data owner's P-256 key and the policy document the tests' runs are judged by."""

    private_pem: bytes
    public_pem: bytes
    issuer: TokenIssuer
    promotion_public_pem: bytes

    def policy_doc(self, **overrides) -> dict:
        """The test policy as a document: the stand-in's token CA as trust anchor and its EAR
        signer pinned, sample evidence allowed (the tests attest with sample/sampledevice),
        the factory's inputs, recipe and image approved. `overrides` replace top-level fields
        or, as `section__field`, fields of a section."""
        doc = {
            "format": "coco-ai/owner-policy/v1",
            "policy_id": "coco-ai-tests",
            "version": 1,
            "model_name": MODEL,
            "approved": {
                "base_models": [BASE_MODEL_DIGEST],
                "datasets": [DATASET_DIGEST],
                "training_recipes": [RECIPE_DIGEST],
                "images": [IMAGE_REF],
            },
            "attestation": {
                "trust_anchor_pem": self.issuer.ca_pem.decode(),
                "token_signer_pem": self.issuer.broker.signer_pem.decode(),
                "appraisal_policy_ids": ["default"],
                "allow_development_evidence": True,
                "min_gpus": 1,
            },
            "thresholds": {"max_eval_loss": 2.0, "min_relative_improvement": 0.2},
            "champion": {"max_regression": 0.0},
            "promotion_signers": [self.promotion_public_pem.decode()],
        }
        for key, value in overrides.items():
            section, sep, name = key.partition("__")
            if sep:
                doc[section] = {**doc[section], name: value}
            else:
                doc[key] = value
        return doc

    def sign(self, key_pem: bytes | None = None, **overrides) -> SignedOwnerPolicy:
        """The policy signed (by the owner's key unless `key_pem`) and verified back."""
        jws = OwnerPolicy.from_dict(self.policy_doc(**overrides)).sign(key_pem or self.private_pem)
        public = self.public_pem if key_pem is None else public_pem_of(key_pem)
        return verify_owner_policy(jws, public)


def public_pem_of(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def owner(issuer, promotion_keys) -> DataOwner:
    from coco_ai.owner_policy import generate_owner_key

    private, public = generate_owner_key()
    return DataOwner(private, public, issuer, promotion_keys[1].read_bytes())


@pytest.fixture(scope="session")
def owner_policy(owner) -> SignedOwnerPolicy:
    return owner.sign()


def run_expectations(owner_policy: SignedOwnerPolicy, initdata: Initdata) -> PromotionExpectations:
    """What the test run's checkpoints must prove under the owner's policy."""
    return PromotionExpectations.from_owner_policy(owner_policy, initdata=initdata)


def other_key_signature(ckpt: Path, pem: bytes) -> None:
    """Re-sign the checkpoint's manifest with `pem`, a key no token attests."""
    from jwcrypto import jwk, jws

    from coco_ai.crypto.manifest import JWS_TYPE

    key = jwk.JWK.from_pem(pem)
    sig = jws.JWS((ckpt / "manifest.json").read_bytes())
    sig.add_signature(
        key, alg="ES256", protected={"alg": "ES256", "typ": JWS_TYPE, "kid": key.thumbprint()}
    )
    (ckpt / "manifest.jws").write_text(sig.serialize(compact=True))


def flip_ciphertext(ckpt: Path) -> None:
    """Flip one bit in the middle of the checkpoint's first ciphertext object."""
    victim = sorted((ckpt / "objects").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
