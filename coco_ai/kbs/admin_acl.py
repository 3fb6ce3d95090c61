"""The two admin credentials every Trustee this project sets up has, and their `[admin]` config.

- The **data owner** (role / persona ``admin``): every admin endpoint. Uploads policies,
  reference values, the run-key root and data-set keys. Never given to Airflow.
- **Airflow** (role / persona ``airflow``): only ``AIRFLOW_ENDPOINTS``, i.e. writing and deleting
  a run's public grant at ``kbs:///coco-ai-run/grant/<run id>`` (coco_ai.run_keys).

How Trustee binds a credential to a role differs by version, and so does what Airflow holds:

- v0.20.0 (`[admin] type = "Simple"`, kbs/src/admin/mod.rs): the role *is* the id of the persona
  whose public key verifies the token; with any ``[[admin.roles]]`` present, a persona without a
  matching role may call nothing. Airflow holds its own Ed25519 private key (persona
  ``airflow``) and signs its own short tokens.
- v0.21.0 and main (`AuthenticatedAuthorization`, kbs/src/admin/authentication/bearer_jwt.rs):
  the role is a *claim* of the JWT, so whoever can sign for a trusted identity provider can claim
  any role. Airflow therefore holds no key at all: the data owner mints Airflow a token with
  ``role = "airflow"`` and a bounded ``exp`` (``mint_airflow_token``) and re-mints it before it
  expires.

Both versions match ``allowed_endpoints`` against the request URI (path *and* query, undecoded)
whatever the HTTP method, so a role that may GET an endpoint may POST it too: least power means
Airflow reads no policy either.
"""

from __future__ import annotations

from coco_ai.kbs import versions
from coco_ai.kbs.admin_auth import mint_admin_token

DATA_OWNER_ROLE = "admin"
AIRFLOW_ROLE = "airflow"
#: Every admin endpoint (the data owner).
DATA_OWNER_ENDPOINTS = r"^/kbs/v0/.+$"
#: A run's grant and nothing else: one segment in the run-id alphabet (coco_ai.runs), so no
#: extra segment, ``..``, percent-encoding or query string can match.
AIRFLOW_ENDPOINTS = r"^/kbs/v0/resource/coco-ai-run/grant/[A-Za-z0-9][A-Za-z0-9._-]*$"
#: v0.21.0+: the data owner's identity provider, as the tokens of mint_admin_token name it.
OWNER_ISSUER = "coco-ai"
ADMIN_AUDIENCE = "KBS"
#: Default lifetime of Airflow's v0.21.0+ token: the window a stolen token stays usable.
AIRFLOW_TOKEN_LIFETIME_S = 30 * 24 * 3600


def mint_airflow_token(
    owner_private_pem: bytes | str, *, lifetime: int = AIRFLOW_TOKEN_LIFETIME_S
) -> str:
    """Airflow's v0.21.0+ credential: a token for role ``airflow``, signed with the data owner's
    key (the only key Trustee trusts), valid for ``lifetime`` seconds."""
    return mint_admin_token(
        owner_private_pem,
        role=AIRFLOW_ROLE,
        issuer=OWNER_ISSUER,
        subject=AIRFLOW_ROLE,
        audience=ADMIN_AUDIENCE,
        lifetime=lifetime,
    )


def _toml_str(value: str) -> str:
    # TOML literal strings: no escapes, so a regex's backslashes stay as written.
    if "'" in value or "\n" in value:
        raise ValueError(f"cannot write {value!r} as a TOML literal string")
    return f"'{value}'"


def admin_config_toml(
    trustee_version: str, owner_public_key_path: str, airflow_public_key_path: str | None = None
) -> str:
    """The `[admin]` section of kbs-config.toml for the two credentials, in the syntax of
    ``trustee_version``. ``airflow_public_key_path`` is Airflow's persona key (v0.20.0 only;
    later versions trust the data owner's key alone)."""
    version = versions.check_version(trustee_version)
    if versions.self_signed_admin_auth(version):
        if not airflow_public_key_path:
            raise ValueError("Trustee v0.20.0 needs Airflow's own public key (its persona)")
        return (
            '[admin]\ntype = "Simple"\n\n'
            f"[[admin.personas]]\nid = {_toml_str(DATA_OWNER_ROLE)}\n"
            f"public_key_path = {_toml_str(owner_public_key_path)}\n\n"
            f"[[admin.personas]]\nid = {_toml_str(AIRFLOW_ROLE)}\n"
            f"public_key_path = {_toml_str(airflow_public_key_path)}\n\n"
            f"[[admin.roles]]\nid = {_toml_str(DATA_OWNER_ROLE)}\n"
            f"allowed_endpoints = {_toml_str(DATA_OWNER_ENDPOINTS)}\n\n"
            f"[[admin.roles]]\nid = {_toml_str(AIRFLOW_ROLE)}\n"
            f"allowed_endpoints = {_toml_str(AIRFLOW_ENDPOINTS)}\n"
        )
    if airflow_public_key_path:
        raise ValueError(
            f"Trustee {version} takes the role from the token: Airflow must hold a token the "
            "data owner minted (mint_airflow_token), not a key of its own"
        )
    return (
        '[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n\n'
        "[admin.authentication.bearer_jwt]\nidentity_providers = [\n"
        f"  {{ issuer = {_toml_str(OWNER_ISSUER)}, audience = {_toml_str(ADMIN_AUDIENCE)}, "
        f"public_key_uri = {_toml_str(owner_public_key_path)} }},\n]\n\n"
        "[admin.authorization.regex_acl]\nacls = [\n"
        f"  {{ role = {_toml_str(DATA_OWNER_ROLE)}, "
        f"allowed_endpoints = {_toml_str(DATA_OWNER_ENDPOINTS)} }},\n"
        f"  {{ role = {_toml_str(AIRFLOW_ROLE)}, "
        f"allowed_endpoints = {_toml_str(AIRFLOW_ENDPOINTS)} }},\n]\n"
    )
