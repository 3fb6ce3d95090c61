"""Trustee error bodies → typed exceptions, and back."""

from __future__ import annotations

import json

import pytest

from coco_ai.kbs import errors as E

PREFIX = "https://github.com/confidential-containers/kbs/errors/"

VARIANTS = [
    ("PolicyDeny", "Access denied by policy", 401, E.PolicyDenied),
    ("PolicyDeny", "Access denied by policy", 403, E.PolicyDenied),
    ("TokenNotFound", "Attestation Token not found", 401, E.TokenNotFound),
    (
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed",
        401,
        E.AttestationError,
    ),
    ("AdminAuthAccess", "admin access denied for endpoint /kbs/v0/x: bad", 401, E.AdminAuthError),
    ("PluginNotFound", "Plugin nebula-ca not found", 404, E.PluginNotFound),
    ("InvalidRequestPath", "Request path /x is invalid", 404, E.InvalidRequestPath),
    ("PluginInternalError", "Plugin internal error", 401, E.PluginInternalError),
    ("JweError", "JWE failed", 401, E.JweError),
    ("TokenVerifierError", "Token Verifier error", 401, E.TokenVerifierError),
    ("SerdeError", "Serialize/Deserialize failed", 401, E.SerdeError),
    ("ParsePolicyError", "Failed to parse policy: x", 401, E.ParsePolicyError),
    ("PolicyEngineError", "Policy engine error: x", 401, E.PolicyEngineError),
    ("RvpsError", "RVPS configuration failed: x", 401, E.RvpsError),
]


@pytest.mark.parametrize(("variant", "detail", "status", "cls"), VARIANTS)
def test_error_from_response_per_variant(variant, detail, status, cls):
    body = json.dumps({"type": PREFIX + variant, "detail": detail}).encode()
    err = E.error_from_response(status, body)
    assert type(err) is cls
    assert err.variant == variant
    assert err.detail == detail
    assert err.status == status
    assert E.error_body(err) == {"type": PREFIX + variant, "detail": detail}


def test_only_policy_deny_is_policy_denied():
    kinds = [
        E.error_from_response(s, json.dumps({"type": PREFIX + v, "detail": d}).encode())
        for v, d, s, _ in VARIANTS
    ]
    assert [isinstance(k, E.PolicyDenied) for k in kinds].count(True) == 2


def test_protocol_version_mismatch_is_recognised():
    detail = (
        "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: "
        "expect =0.4.0 while the request is 0.1.0"
    )
    err = E.error_from_response(
        401, json.dumps({"type": PREFIX + "AttestationError", "detail": detail}).encode()
    )
    assert isinstance(err, E.ProtocolVersionError)
    assert isinstance(err, E.AttestationError)
    # On the wire it stays Trustee's AttestationError.
    assert E.error_body(err)["type"] == PREFIX + "AttestationError"


def test_unknown_variant_keeps_its_name():
    err = E.error_from_response(
        401, json.dumps({"type": PREFIX + "NewThing", "detail": "d"}).encode()
    )
    assert type(err) is E.KbsError
    assert err.variant == "NewThing"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>bad gateway</html>",
        b"",
        b"[]",
        b'{"type":"https://example.com/x","detail":"d"}',
        b'{"detail":"no type"}',
        b"\xff\xfe",
    ],
)
def test_non_trustee_bodies_are_unexpected(body):
    err = E.error_from_response(502, body)
    assert isinstance(err, E.UnexpectedResponse)
    assert err.status == 502
    assert "502" in str(err)


def test_long_details_are_clipped():
    err = E.error_from_response(
        401, json.dumps({"type": PREFIX + "PolicyDeny", "detail": "x" * 5000}).encode()
    )
    assert len(err.detail) < 600


def test_default_status_mirrors_trustee():
    assert E.error_status(E.PolicyDenied()) == 401
    assert E.error_status(E.InvalidRequestPath()) == 404
    assert E.error_status(E.PluginNotFound()) == 404
    assert E.error_status(E.PolicyDenied(status=403)) == 403
    assert E.PolicyDenied().detail == "Access denied by policy"
