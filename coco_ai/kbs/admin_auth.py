"""Admin authentication for Trustee's admin API, both generations.

- Trustee v0.20 (`[admin] type = "Simple"`): the client signs its own short JWT, header
  `{"alg":"EdDSA","typ":"JWT"}`, payload `{"iat","exp"}`, with its Ed25519 private key; the KBS
  holds the matching public key (`personas`).
- Trustee v0.21+ (`AuthenticatedAuthorization` + `bearer_jwt`): a pre-issued JWT carrying a
  `role` claim (plus `iss`/`aud` when configured) is sent as is.

Both travel as `Authorization: Bearer <JWT>`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwcrypto import jwk as _jwk
from jwcrypto import jwt as _jwt

ADMIN_JWT_ALG = "EdDSA"
V020_TOKEN_LIFETIME = 300  # seconds; kbs-client uses 7200, a fresh token per call needs far less


class AdminAuth(Protocol):
    def authorization(self) -> str:
        """The `Authorization` header value for one admin request."""
        ...


def _load_ed25519(private_pem: bytes | str) -> _jwk.JWK:
    data = private_pem.encode() if isinstance(private_pem, str) else private_pem
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("admin key is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("admin key must be an Ed25519 private key")
    return _jwk.JWK.from_pyca(key)


def _sign(key: _jwk.JWK, claims: dict) -> str:
    token = _jwt.JWT(header={"alg": ADMIN_JWT_ALG, "typ": "JWT"}, claims=claims)
    token.make_signed_token(key)
    return token.serialize()


class SelfSignedAdminAuth:
    """Trustee v0.20 admin auth: a fresh EdDSA JWT `{iat, exp}` per request."""

    def __init__(
        self,
        ed25519_private_pem: bytes | str,
        lifetime: int = V020_TOKEN_LIFETIME,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime <= 0:
            raise ValueError("admin token lifetime must be positive")
        self._key = _load_ed25519(ed25519_private_pem)
        self._lifetime = lifetime
        self._clock = clock

    def token(self) -> str:
        iat = int(self._clock())
        return _sign(self._key, {"iat": iat, "exp": iat + self._lifetime})

    def authorization(self) -> str:
        return f"Bearer {self.token()}"

    def __repr__(self) -> str:
        return f"SelfSignedAdminAuth(lifetime={self._lifetime})"


class BearerTokenAdminAuth:
    """Trustee v0.21+ admin auth: a pre-issued JWT with a `role` claim, sent as is."""

    def __init__(self, token: str) -> None:
        token = token.strip() if isinstance(token, str) else token
        if not isinstance(token, str) or token.count(".") != 2 or " " in token:
            raise ValueError("admin token must be a JWS compact string (header.payload.sig)")
        self._token = token

    def authorization(self) -> str:
        return f"Bearer {self._token}"

    def __repr__(self) -> str:
        return "BearerTokenAdminAuth(<token hidden>)"


def admin_auth_for(trustee_version: str, ed25519_private_pem: bytes | str) -> AdminAuth:
    """The admin auth generation `trustee_version` expects, from one Ed25519 private key.

    v0.20.0: SelfSignedAdminAuth (its `Simple` persona backend). v0.21.0/main: a bearer token
    minted as Trustee's docker-compose setup does (role "admin").
    """
    from coco_ai.kbs import versions

    if versions.self_signed_admin_auth(trustee_version):
        return SelfSignedAdminAuth(ed25519_private_pem)
    return BearerTokenAdminAuth(mint_admin_token(ed25519_private_pem))


def mint_admin_token(
    ed25519_private_pem: bytes | str,
    *,
    role: str = "admin",
    issuer: str = "coco-ai",
    subject: str = "admin",
    audience: str | None = "KBS",
    lifetime: int = 3600,
    now: float | None = None,
) -> str:
    """Mint a v0.21-style admin token as Trustee's docker-compose setup does.

    Header `{"alg":"EdDSA","typ":"JWT"}`; payload `{"iss","sub","aud":[aud],"role","iat","exp"}`.
    The KBS is configured with the matching public key for `issuer` and an ACL for `role`.
    """
    if not role:
        raise ValueError("an admin token needs a role")
    if lifetime <= 0:
        raise ValueError("admin token lifetime must be positive")
    iat = int(time.time() if now is None else now)
    claims: dict = {"iss": issuer, "sub": subject, "role": role, "iat": iat, "exp": iat + lifetime}
    if audience is not None:
        claims["aud"] = [audience]
    return _sign(_load_ed25519(ed25519_private_pem), claims)
