"""Typed KBS errors, mirroring Trustee's `kbs/src/error.rs`.

Trustee answers every failure with `{"type": ERROR_TYPE_PREFIX + <Variant>, "detail": <Display>}`
where <Variant> is the Rust enum variant name. Status codes: 404 for `InvalidRequestPath` and
`PluginNotFound`, 401 for everything else (some Trustee revisions answer `PolicyDeny` with 403;
the client treats the body's type, not the status, as authoritative). Error responses carry no
Content-Type header (`kbs/src/error.rs` `error_response`: `res.body(BoxBody::new(body))`).

Admin refusals have three wire names: `AdminAuth` (v0.20.0), `AdminAuthAccess` (v0.21.0+ on the
built-in endpoints) and `AdminAuthInitialization` (v0.21.0+ on plugin paths such as
`resource`, where `check_admin_access(&request)?` converts through `From<admin::Error>`); all
three become AdminAuthError, keeping the wire name in `variant`.
"""

from __future__ import annotations

import json

ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"

_MAX_DETAIL = 500


class KbsError(Exception):
    """A failure reported by (or while talking to) a KBS.

    `variant` is Trustee's error variant name, `detail` its human-readable text, `status` the
    HTTP status it came with (None when it did not come from an HTTP response).
    """

    variant: str = "KbsError"
    default_detail: str = "KBS request failed"
    default_status: int = 401

    def __init__(
        self, detail: str | None = None, *, status: int | None = None, variant: str | None = None
    ) -> None:
        self.detail = detail if detail is not None else self.default_detail
        self.status = status
        if variant is not None:
            self.variant = variant
        super().__init__(self.detail)

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.variant}: {self.detail}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, status={self.status!r})"


class PolicyDenied(KbsError):
    """The resource policy refused the request (Trustee `PolicyDeny`)."""

    variant = "PolicyDeny"
    default_detail = "Access denied by policy"


class TokenNotFound(KbsError):
    variant = "TokenNotFound"
    default_detail = "Attestation Token not found"


class AttestationError(KbsError):
    """RCAR auth/attest failed (bad evidence, nonce mismatch, unknown TEE, expired session…)."""

    variant = "AttestationError"
    default_detail = "Attestation error"


class ProtocolVersionError(AttestationError):
    """The KBS refused our protocol version.

    Trustee has no variant of its own for this: it is an `AttestationError` whose detail says
    "KBS Client Protocol Version Mismatch"; error_from_response recognises it by that text.
    """

    marker = "Protocol Version Mismatch"
    default_detail = (
        "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch"
    )


class AdminAuthError(KbsError):
    """An admin call was not authenticated/authorised (Trustee `AdminAuthAccess` and kin)."""

    variant = "AdminAuthAccess"
    default_detail = "admin access denied"
    wire_variants = ("AdminAuth", "AdminAuthAccess", "AdminAuthInitialization")


class PluginNotFound(KbsError):
    variant = "PluginNotFound"
    default_detail = "Plugin not found"
    default_status = 404


class InvalidRequestPath(KbsError):
    variant = "InvalidRequestPath"
    default_detail = "Request path is invalid"
    default_status = 404


class PluginInternalError(KbsError):
    """A plugin failed; Trustee also reports a missing resource this way.

    The detail is always just "Plugin internal error": Trustee's Display for the variant does
    not include its source (`kbs/src/error.rs`), so the wire cannot say which failure it was.
    """

    variant = "PluginInternalError"
    default_detail = "Plugin internal error"


class ResourceDeleteUnconfirmed(PluginInternalError):
    """Client-side refinement: a resource DELETE answered 401 `PluginInternalError`.

    Trustee's LocalFs/kv backend answers exactly this when the resource is absent
    (`kv_storage.rs` `delete_secret_resource`: "resource not found" → PluginInternalError) and
    also when storage fails, with the same body, so the client cannot tell them apart. The
    caller decides with what it knows: a revoke that may run before the key was ever created,
    or again after it was deleted, can take it as "nothing to delete"; any other caller must
    treat it as a failure. `path` is the resource path that was to be deleted.
    """

    def __init__(
        self, detail: str | None = None, *, status: int | None = None, path: str = ""
    ) -> None:
        super().__init__(detail, status=status)
        self.path = path


class JweError(KbsError):
    variant = "JweError"
    default_detail = "JWE failed"


class TokenVerifierError(KbsError):
    """An attestation token failed verification (signature, chain, expiry, claims)."""

    variant = "TokenVerifierError"
    default_detail = "Token Verifier error"


class SerdeError(KbsError):
    variant = "SerdeError"
    default_detail = "Serialize/Deserialize failed"


class ParsePolicyError(KbsError):
    variant = "ParsePolicyError"
    default_detail = "Failed to parse policy"


class PolicyEngineError(KbsError):
    variant = "PolicyEngineError"
    default_detail = "Policy engine error"


class RvpsError(KbsError):
    variant = "RvpsError"
    default_detail = "RVPS configuration failed"


class UnexpectedResponse(KbsError):
    """Client-side: the KBS answered with something that is not a Trustee error or result.

    Never sent on the wire by Trustee; used for malformed bodies and unexpected statuses.
    """

    variant = "UnexpectedResponse"
    default_detail = "unexpected response from KBS"


class KbsUnavailable(KbsError):
    """Client-side: the KBS could not be reached (connection, TLS, timeout)."""

    variant = "KbsUnavailable"
    default_detail = "KBS unreachable"


class KbsTlsError(KbsUnavailable):
    """Client-side: the KBS's TLS certificate did not verify against the pinned CA.

    Not retried: a wrong certificate does not fix itself within a handshake's backoff.
    """

    variant = "KbsTlsError"
    default_detail = "KBS TLS certificate verification failed"


_BY_VARIANT: dict[str, type[KbsError]] = {
    name: cls
    for cls in (
        PolicyDenied,
        TokenNotFound,
        AttestationError,
        AdminAuthError,
        PluginNotFound,
        InvalidRequestPath,
        PluginInternalError,
        JweError,
        TokenVerifierError,
        SerdeError,
        ParsePolicyError,
        PolicyEngineError,
        RvpsError,
    )
    for name in getattr(cls, "wire_variants", (cls.variant,))
}


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def error_from_response(status: int, body: bytes) -> KbsError:
    """Turn a non-2xx KBS response into the matching typed KbsError.

    A body that is not Trustee's `{"type","detail"}` shape gives UnexpectedResponse (with the
    status and a clipped body text), so callers can always tell a policy denial apart.
    """
    try:
        info = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = body.decode("utf-8", "replace").strip()
        return UnexpectedResponse(
            f"HTTP {status} with a non-JSON body: {_clip(text)!r}", status=status
        )
    etype = info.get("type") if isinstance(info, dict) else None
    detail = info.get("detail") if isinstance(info, dict) else None
    if not isinstance(etype, str) or not etype.startswith(ERROR_TYPE_PREFIX):
        return UnexpectedResponse(
            f"HTTP {status} with a body that is not a KBS error: {_clip(json.dumps(info))}",
            status=status,
        )
    variant = etype[len(ERROR_TYPE_PREFIX) :]
    detail = _clip(detail) if isinstance(detail, str) else None
    cls = _BY_VARIANT.get(variant)
    if cls is AttestationError and detail and ProtocolVersionError.marker in detail:
        cls = ProtocolVersionError
    if cls is None:
        return KbsError(detail, status=status, variant=variant)
    return cls(detail, status=status, variant=variant if variant != cls.variant else None)


def error_body(err: KbsError) -> dict:
    """The JSON body Trustee would send for `err`: {"type": PREFIX+variant, "detail": ...}."""
    return {"type": ERROR_TYPE_PREFIX + err.variant, "detail": err.detail}


def error_status(err: KbsError) -> int:
    """The HTTP status Trustee uses for `err` (404 for path/plugin errors, else 401)."""
    return err.status if err.status is not None else err.default_status
