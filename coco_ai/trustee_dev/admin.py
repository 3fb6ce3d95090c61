"""Admin authentication and authorization, as each Trustee generation does it.

`AdminConfig` holds several admin identities and the rules that say which endpoints each role
may call; `AdminConfig.from_toml` reads the `[admin]` table of a kbs-config.toml in the emulated
version's own syntax, and `AdminConfig.single` is the one-key shorthand.

- v0.20.0 `Simple` (kbs/src/admin/mod.rs, simple.rs): `personas = [{id, public_key_path}]`; the
  client signs its own `{iat, exp}` JWT (EdDSA). The first persona whose key verifies it (with
  jsonwebtoken's `Validation::new(EdDSA)`: `exp` required, 60 s leeway, a non-empty `aud`
  refused because none is configured) gives the role: its id. Other claims, `role` included,
  are not looked at. `roles = [{id, allowed_endpoints}]`: none at all → every persona may call
  everything; otherwise the persona's role must exist (exact, case-sensitive `HashMap` lookup,
  whatever the doc comment says) and its regex match the request URI. Duplicate role ids are a
  configuration error.
- v0.21.0 and main `AuthenticatedAuthorization` (bearer_jwt.rs, authorization/regex_acl.rs):
  `identity_providers = [{issuer?, audience?, public_key_uri}]`; for each provider in turn the
  signature and `exp` are checked (no audience validation there), then a missing `role` claim
  refuses at once, and an `iss`/`aud` mismatch moves on to the next provider. The role is the
  token's claim. `acls = [{role, allowed_endpoints}]`, several per role allowed: any rule of the
  role whose regex matches allows; no rule → refused ("Role … not allowed for path …").

Both match `allowed_endpoints` (which must start with `^/kbs` and end with `$`) against
`request.uri().to_string()`: the undecoded path plus `?query`, whatever the HTTP method.
Python's `re` stands in for Rust's `regex`: a pattern with lookaround or a backreference, which
Rust refuses, is refused here too. Only Ed25519 PEM keys are read (Trustee v0.21 also takes EC,
RSA and JWKS). There is no insecure mode: without an identity the stand-in does not start.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from coco_ai.kbs import versions

LEEWAY_S = 60
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# Rust's regex crate has no lookaround and no backreferences.
_NOT_RUST_REGEX = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")
# The single-key shorthand on v0.21.0+: Trustee's docker-compose ACL for its `admin` role.
SINGLE_ADMIN_ROLE = "admin"
SINGLE_ADMIN_ENDPOINTS = r"^/kbs/.+$"


class AdminAuthDenied(Exception):
    """Why an admin request was refused (never includes the token)."""


class AdminConfigError(ValueError):
    """The admin configuration is invalid (the message names the field)."""


def load_admin_public_key(pem: bytes | str) -> ed25519.Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise ValueError("admin public key is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("admin public key must be Ed25519 (Trustee admin tokens are EdDSA)")
    return key


@dataclass(frozen=True)
class AdminIdentity:
    """v0.20.0: a persona (`id` is its role). v0.21.0+: an identity provider; `issuer` and
    `audience`, when set, must match the token's `iss` and one of its `aud`."""

    id: str
    public_key: ed25519.Ed25519PublicKey = field(repr=False)
    issuer: str | None = None
    audience: str | None = None


@dataclass(frozen=True)
class AdminRule:
    """`role` may call the endpoints whose URI `allowed_endpoints` matches."""

    role: str
    allowed_endpoints: str
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"admin rule for role {self.role!r}"
        if not isinstance(self.role, str) or not isinstance(self.allowed_endpoints, str):
            raise AdminConfigError(f"{where}: role and allowed_endpoints must be strings")
        if not self.allowed_endpoints.startswith("^/kbs") or not self.allowed_endpoints.endswith(
            "$"
        ):
            # Trustee: UnanchoredRegex, "Admin Role regex must be anchored."
            raise AdminConfigError(f"{where}: regex must start with ^/kbs and end with $")
        if _NOT_RUST_REGEX.search(self.allowed_endpoints):
            raise AdminConfigError(f"{where}: lookaround and backreferences are not Rust regex")
        try:
            object.__setattr__(self, "pattern", re.compile(self.allowed_endpoints))
        except re.error as exc:
            raise AdminConfigError(f"{where}: invalid regex: {exc}") from None

    def allows(self, uri: str) -> bool:
        # Python's `$` also matches before a final newline, Rust's does not; an HTTP request
        # target never holds one anyway.
        return "\n" not in uri and self.pattern.search(uri) is not None


def _b64url(part: str) -> bytes:
    if not _B64URL.fullmatch(part):
        raise AdminAuthDenied("admin token is not base64url JWS compact serialization")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AdminAuthDenied("admin token is not base64url") from None


@dataclass(frozen=True)
class _Token:
    signing_input: bytes
    signature: bytes
    claims: dict[str, Any]


def _parse_token(authorization: str | None) -> _Token:
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
    if not isinstance(claims, dict):
        raise AdminAuthDenied("admin token payload is not an object")
    return _Token(f"{parts[0]}.{parts[1]}".encode("ascii"), _b64url(parts[2]), claims)


def _signed_and_live(token: _Token, key: ed25519.Ed25519PublicKey, now: float) -> bool:
    try:
        key.verify(token.signature, token.signing_input)
    except InvalidSignature:
        return False
    exp = token.claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return False
    return exp >= now - LEEWAY_S


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


@dataclass(frozen=True)
class AdminConfig:
    """Who may call which admin endpoint, as `trustee_version` decides it (module docstring)."""

    trustee_version: str
    identities: tuple[AdminIdentity, ...]
    rules: tuple[AdminRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "trustee_version", versions.check_version(self.trustee_version))
        if not self.identities:
            raise AdminConfigError("no admin identity configured: the admin API would be closed")
        if self.simple:
            roles = [rule.role for rule in self.rules]
            duplicate = next((r for r in roles if roles.count(r) > 1), None)
            if duplicate is not None:
                raise AdminConfigError(f"Duplicate Admin Role {duplicate!r}")

    @property
    def simple(self) -> bool:
        """True for v0.20.0's `Simple` personas."""
        return versions.self_signed_admin_auth(self.trustee_version)

    @classmethod
    def single(cls, public_key_pem: bytes | str, trustee_version: str) -> AdminConfig:
        """One key with every right: on v0.20.0 one persona and no roles (Trustee then allows
        all); on v0.21.0+ one identity provider and an ACL for role ``admin`` (no ACL there
        means no access)."""
        key = load_admin_public_key(public_key_pem)
        if versions.self_signed_admin_auth(trustee_version):
            return cls(trustee_version, (AdminIdentity(SINGLE_ADMIN_ROLE, key),))
        return cls(
            trustee_version,
            (AdminIdentity(SINGLE_ADMIN_ROLE, key),),
            (AdminRule(SINGLE_ADMIN_ROLE, SINGLE_ADMIN_ENDPOINTS),),
        )

    @classmethod
    def from_toml(
        cls,
        text: str,
        trustee_version: str,
        *,
        read_key: Callable[[str], bytes] | None = None,
        base_dir: Path | None = None,
    ) -> AdminConfig:
        """The `[admin]` table of a kbs-config.toml (the whole file, or the table alone).

        Key paths are read with ``read_key(path)``, by default as files, relative ones under
        ``base_dir``. Unknown keys are refused (Trustee v0.21 refuses them too; v0.20 would
        ignore a misspelt `roles`, which would silently allow everything).
        """
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AdminConfigError(f"admin config is not TOML: {exc}") from None
        table = doc.get("admin")
        if not isinstance(table, dict):
            raise AdminConfigError("admin config has no [admin] table")

        def read(path: Any, where: str) -> ed25519.Ed25519PublicKey:
            if not isinstance(path, str) or not path:
                raise AdminConfigError(f"{where}: a key path is required")
            try:
                if read_key is not None:
                    data = read_key(path)
                else:
                    local = Path(path.removeprefix("file://"))
                    data = (
                        local if local.is_absolute() else (base_dir or Path()) / local
                    ).read_bytes()
                return load_admin_public_key(data)
            except (OSError, ValueError) as exc:
                raise AdminConfigError(f"{where}: {path}: {exc}") from None

        version = versions.check_version(trustee_version)
        if versions.self_signed_admin_auth(version):
            return cls._from_simple(version, table, read)
        return cls._from_authenticated(version, table, read)

    @classmethod
    def _from_simple(cls, version: str, table: Mapping[str, Any], read) -> AdminConfig:
        _only(table, {"type", "personas", "roles"}, "[admin]")
        if table.get("type") != "Simple":
            raise AdminConfigError(
                f'[admin] type {table.get("type")!r}: the stand-in emulates "Simple" only '
                "(never InsecureAllowAll)"
            )
        identities = []
        for i, persona in enumerate(_list(table, "personas")):
            where = f"admin.personas[{i}]"
            _only(persona, {"id", "public_key_path"}, where)
            if not isinstance(persona.get("id"), str):
                raise AdminConfigError(f"{where}: id must be a string")
            identities.append(
                AdminIdentity(persona["id"], read(persona.get("public_key_path"), where))
            )
        rules = []
        for i, role in enumerate(_list(table, "roles")):
            _only(role, {"id", "allowed_endpoints"}, f"admin.roles[{i}]")
            rules.append(AdminRule(role.get("id"), role.get("allowed_endpoints", "")))
        return cls(version, tuple(identities), tuple(rules))

    @classmethod
    def _from_authenticated(cls, version: str, table: Mapping[str, Any], read) -> AdminConfig:
        _only(table, {"authorization_mode", "authentication", "authorization"}, "[admin]")
        if table.get("authorization_mode") != "AuthenticatedAuthorization":
            raise AdminConfigError(
                f"[admin] authorization_mode {table.get('authorization_mode')!r}: the stand-in "
                'emulates "AuthenticatedAuthorization" only (never InsecureAllowAll)'
            )
        authn = table.get("authentication")
        authz = table.get("authorization")
        if not isinstance(authn, dict) or not isinstance(authn.get("bearer_jwt"), dict):
            raise AdminConfigError("[admin.authentication.bearer_jwt] is required")
        if not isinstance(authz, dict) or not isinstance(authz.get("regex_acl"), dict):
            raise AdminConfigError("[admin.authorization.regex_acl] is required")
        _only(authn, {"bearer_jwt"}, "[admin.authentication]")
        _only(authz, {"regex_acl"}, "[admin.authorization]")
        bearer, acl = authn["bearer_jwt"], authz["regex_acl"]
        _only(bearer, {"identity_providers"}, "[admin.authentication.bearer_jwt]")
        _only(acl, {"acls"}, "[admin.authorization.regex_acl]")
        identities = []
        for i, idp in enumerate(_list(bearer, "identity_providers")):
            where = f"identity_providers[{i}]"
            _only(idp, {"issuer", "audience", "public_key_uri", "jwk_set_uri"}, where)
            if "jwk_set_uri" in idp:
                raise AdminConfigError(f"{where}: the stand-in reads public_key_uri (PEM) only")
            uri = idp.get("public_key_uri")
            if isinstance(uri, str) and uri.startswith(("http://", "https://")):
                raise AdminConfigError(f"{where}: the stand-in reads local PEM files only")
            issuer, audience = idp.get("issuer"), idp.get("audience")
            identities.append(
                AdminIdentity(
                    issuer or f"identity_providers[{i}]",
                    read(uri, where),
                    issuer=issuer or None,
                    audience=audience or None,
                )
            )
        if not identities:
            raise AdminConfigError(
                "AuthenticatedAuthorization requires at least one `identity_providers` entry"
            )
        rules = []
        for i, rule in enumerate(_list(acl, "acls")):
            _only(rule, {"role", "allowed_endpoints"}, f"regex_acl.acls[{i}]")
            rules.append(AdminRule(rule.get("role"), rule.get("allowed_endpoints", "")))
        return cls(version, tuple(identities), tuple(rules))

    # -- a request -------------------------------------------------------------------------

    def authorize(self, authorization: str | None, uri: str, now: float) -> str:
        """The role allowed to call `uri` (path and query, undecoded), or AdminAuthDenied."""
        token = _parse_token(authorization)
        if self.simple:
            return self._authorize_simple(token, uri, now)
        return self._authorize_bearer(token, uri, now)

    def _authorize_simple(self, token: _Token, uri: str, now: float) -> str:
        role = None
        for persona in self.identities:
            # jsonwebtoken refuses a token with an audience when none is configured.
            if _signed_and_live(token, persona.public_key, now) and token.claims.get("aud") in (
                None,
                [],
            ):
                role = persona.id
                break
        if role is None:
            raise AdminAuthDenied("Admin Token could not be verified for any admin persona")
        if not self.rules:
            return role
        rule = next((r for r in self.rules if r.role == role), None)
        if rule is not None and rule.allows(uri):
            return role
        raise AdminAuthDenied(f"persona {role} not allowed for {uri}")

    def _authorize_bearer(self, token: _Token, uri: str, now: float) -> str:
        role = None
        for idp in self.identities:
            if not _signed_and_live(token, idp.public_key, now):
                continue
            if not isinstance(token.claims.get("role"), str):
                raise AdminAuthDenied("Missing required `role` claim in JWT")
            if idp.issuer is not None and token.claims.get("iss") != idp.issuer:
                continue
            if idp.audience is not None and idp.audience not in _audiences(token.claims):
                continue
            role = token.claims["role"]
            break
        if role is None:
            raise AdminAuthDenied("Cannot verify token with any of the issuers")
        if any(rule.role == role and rule.allows(uri) for rule in self.rules):
            return role
        raise AdminAuthDenied(f"Role {role} not allowed for path {uri}")


def _only(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise AdminConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise AdminConfigError(f"{where}: unknown field {unknown[0]!r}")


def _list(table: Mapping[str, Any], name: str) -> list[Any]:
    value = table.get(name, [])
    if not isinstance(value, list):
        raise AdminConfigError(f"{name} must be an array")
    return value
