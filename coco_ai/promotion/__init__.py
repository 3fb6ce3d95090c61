"""Attested model promotion: verify the whole evidence chain, sign the model, register it.

No Airflow here: the `AttestedModelPromotionOperator` wraps `promote`. Exports resolve lazily
(PEP 562), so that `coco-ai --help` (which imports `coco_ai.promotion.cli`) does not load the
JOSE, storage, registry and signing stacks.
"""

from __future__ import annotations

from coco_ai._lazy import lazy_exports

_EXPORTS = {
    "PromotionRefused": "errors",
    "RegistryError": "errors",
    "SignatureInvalid": "errors",
    "PromotionResult": "promote",
    "promote": "promote",
    "default_registry_uri": "registry",
    "find_model_version": "registry",
    "model_versions": "registry",
    "register_model_version": "registry",
    "sqlite_registry_uri": "registry",
    "version_by_alias": "registry",
    "ModelSignature": "signing",
    "default_signature_uri": "signing",
    "sign_model": "signing",
    "verify_model_signature": "signing",
    "PromotionEvidence": "verify",
    "PromotionExpectations": "verify",
    "verify_for_promotion": "verify",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
