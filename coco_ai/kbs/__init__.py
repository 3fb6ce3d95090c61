"""Trustee KBS protocol 0.4.0: wire primitives, JWE, EAR verification, RCAR and admin clients.

No Airflow imports here: this package also runs inside the TEE. Names are resolved lazily so
that importing a submodule (e.g. `coco_ai.kbs.wire`) stays cheap.
"""

from __future__ import annotations

from coco_ai._lazy import lazy_exports

_EXPORTS = {
    # wire
    "PROTOCOL_VERSION": "wire",
    "ResourcePath": "wire",
    "canonical_json": "wire",
    "cpu_runtime_data_digest": "wire",
    "device_runtime_data_digest": "wire",
    "parse_resource_uri": "wire",
    "parse_resource_path": "wire",
    "to_resource_path": "wire",
    "validate_segment": "wire",
    # errors
    "KbsError": "errors",
    "PolicyDenied": "errors",
    "TokenNotFound": "errors",
    "AttestationError": "errors",
    "ProtocolVersionError": "errors",
    "AdminAuthError": "errors",
    "PluginNotFound": "errors",
    "InvalidRequestPath": "errors",
    "PluginInternalError": "errors",
    "JweError": "errors",
    "TokenVerifierError": "errors",
    "SerdeError": "errors",
    "ParsePolicyError": "errors",
    "PolicyEngineError": "errors",
    "RvpsError": "errors",
    "UnexpectedResponse": "errors",
    "KbsUnavailable": "errors",
    "KbsTlsError": "errors",
    "ResourceDeleteUnconfirmed": "errors",
    "error_from_response": "errors",
    "error_body": "errors",
    "error_status": "errors",
    # jwe / evidence / ear
    "TeeKeyPair": "jwe",
    "encrypt_for_tee": "jwe",
    "Attester": "evidence",
    "tee_evidence": "evidence",
    "EarClaims": "ear",
    "verify_ear_token": "ear",
    "parse_ear_claims": "ear",
    "sign_ear_token": "ear",
    # clients
    "KbsClient": "client",
    "KbsAdminClient": "client",
    "get_resource_with_token": "client",
    "AdminAuth": "admin_auth",
    "SelfSignedAdminAuth": "admin_auth",
    "BearerTokenAdminAuth": "admin_auth",
    "mint_admin_token": "admin_auth",
    "admin_auth_for": "admin_auth",
    "ProvisionedResource": "client",
    # versions
    "TRUSTEE_VERSIONS": "versions",
    "DEFAULT_TRUSTEE_VERSION": "versions",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
