"""Promotion end to end: verify -> sign -> register, in that order and only in that order.

Nothing reaches the registry unless every check passed and the model signature was written; a
refusal at any step leaves the registry exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.promotion.errors import PromotionRefused, SignatureInvalid
from coco_ai.promotion.registry import DEFAULT_ALIAS, register_model_version
from coco_ai.promotion.signing import ModelSignature, sign_model
from coco_ai.promotion.verify import PromotionEvidence, PromotionExpectations, verify_for_promotion


@dataclass(frozen=True)
class PromotionResult:
    evidence: PromotionEvidence
    signature: ModelSignature
    model_name: str
    version: int
    alias: str

    def to_dict(self) -> dict[str, Any]:
        """References only, JSON-serialisable (what the Airflow operator returns / emits)."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "checkpoint_uri": self.evidence.checkpoint_uri,
            "manifest_digest": self.evidence.manifest_digest,
            "token_digest": self.evidence.token_digest,
            "run_id": self.evidence.run_id,
            "signature_uri": self.signature.signature_uri,
            "signature_digest": self.signature.signature_digest,
            "metrics": dict(self.evidence.metrics),
            "attestation": dict(self.evidence.attestation),
        }


def promote(
    checkpoint_uri: str,
    *,
    trust_anchor_pem: bytes,
    expectations: PromotionExpectations,
    model_name: str,
    signing_key_path: str | Path,
    registry_uri: str | None = None,
    alias: str = DEFAULT_ALIAS,
    signature_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> PromotionResult:
    """Verify the checkpoint's whole chain, sign it (OpenSSF model signing), register it.

    Raises PromotionRefused (reasons listed) when verification, the policy or signing fails;
    the registry is untouched then. Re-promoting the same manifest returns the same version.
    """
    evidence = verify_for_promotion(
        checkpoint_uri,
        trust_anchor_pem=trust_anchor_pem,
        expectations=expectations,
        now=now,
        storage_options=storage_options,
    )
    try:
        signature = sign_model(
            checkpoint_uri,
            private_key_path=signing_key_path,
            signature_uri=signature_uri,
            expected_files=evidence.files,
            storage_options=storage_options,
        )
    except SignatureInvalid as exc:
        raise PromotionRefused([f"model signing: {exc}"]) from None
    provenance = {
        **evidence.provenance(),
        "signature_uri": signature.signature_uri,
        "signature_digest": signature.signature_digest,
    }
    name, version = register_model_version(
        model_name, checkpoint_uri, provenance, alias, registry_uri=registry_uri
    )
    return PromotionResult(evidence, signature, name, version, alias)
