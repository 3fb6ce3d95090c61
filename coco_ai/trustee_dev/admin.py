"""Admin authentication, both Trustee generations, against one Ed25519 public key.

- v0.20 `Simple` (`simple=True`): the client signs its own `{iat, exp}` JWT (EdDSA); any valid
  signature with a live `exp` passes (jsonwebtoken's `Validation::new(EdDSA)`: `exp` required,
  60 s leeway; a non-empty `aud` is refused because no audience is configured,
  jsonwebtoken 10.3 `validation.rs`); other claims, `role` included, are not looked at.
- v0.21+ `bearer_jwt` (`simple=False`): a pre-issued JWT with a `role` claim; the stand-in's
  ACL admits `role == "admin"` only. A token carrying any other role, or none, is refused.

There is no insecure default: without a public key the stand-in does not start.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ADMIN_ROLE = "admin"
LEEWAY_S = 60
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class AdminAuthDenied(Exception):
    """Why an admin request was refused (never includes the token)."""


def load_admin_public_key(pem: bytes | str) -> ed25519.Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise ValueError("admin public key is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("admin public key must be Ed25519 (Trustee admin tokens are EdDSA)")
    return key


def _b64url(part: str) -> bytes:
    if not _B64URL.fullmatch(part):
        raise AdminAuthDenied("admin token is not base64url JWS compact serialization")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AdminAuthDenied("admin token is not base64url") from None


def check_admin(
    authorization: str | None,
    key: ed25519.Ed25519PublicKey,
    now: float,
    *,
    simple: bool,
) -> dict:
    """Return the verified claims or raise AdminAuthDenied."""
    if not authorization:
        raise AdminAuthDenied("no Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AdminAuthDenied("Authorization is not a Bearer token")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise AdminAuthDenied("admin token is not a JWS compact string")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AdminAuthDenied("admin token header/payload is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise AdminAuthDenied("admin token alg must be EdDSA")
    try:
        key.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        # bearer_jwt.rs words it so when no configured issuer key verifies the token.
        raise AdminAuthDenied("Cannot verify token with any of the issuers") from None
    if not isinstance(claims, dict):
        raise AdminAuthDenied("admin token payload is not an object")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AdminAuthDenied("admin token has no exp claim")
    if exp < now - LEEWAY_S:
        raise AdminAuthDenied("admin token has expired")
    if simple:
        if claims.get("aud") not in (None, []):
            raise AdminAuthDenied("InvalidAudience")
        return claims
    if "role" not in claims:
        raise AdminAuthDenied("Missing required `role` claim in JWT")
    if claims["role"] != ADMIN_ROLE:
        raise AdminAuthDenied("admin token role is not admin")
    return claims
