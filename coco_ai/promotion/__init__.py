"""Attested model promotion: verify the whole evidence chain, sign the model, register it.

No Airflow here: the `AttestedModelPromotionOperator` wraps `promote`.
"""

from __future__ import annotations

from coco_ai.promotion.errors import PromotionRefused, RegistryError, SignatureInvalid
from coco_ai.promotion.promote import PromotionResult, promote
from coco_ai.promotion.registry import (
    default_registry_uri,
    find_model_version,
    model_versions,
    register_model_version,
    sqlite_registry_uri,
    version_by_alias,
)
from coco_ai.promotion.signing import (
    ModelSignature,
    default_signature_uri,
    sign_model,
    verify_model_signature,
)
from coco_ai.promotion.verify import (
    PromotionEvidence,
    PromotionExpectations,
    verify_for_promotion,
)

__all__ = [
    "ModelSignature",
    "PromotionEvidence",
    "PromotionExpectations",
    "PromotionRefused",
    "PromotionResult",
    "RegistryError",
    "SignatureInvalid",
    "default_registry_uri",
    "default_signature_uri",
    "find_model_version",
    "model_versions",
    "promote",
    "register_model_version",
    "sign_model",
    "sqlite_registry_uri",
    "verify_for_promotion",
    "verify_model_signature",
    "version_by_alias",
]
