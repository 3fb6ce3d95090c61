"""The Trustee versions this project speaks to, and what differs between them.

Every difference is read from Trustee's source at the tag (confidential-containers/trustee):

- `/healthz`: added in v0.21.0 (`kbs/src/api_server.rs`); v0.20.0 answers 404 there. Both serve
  `/metrics` (GET, no auth) from the same file, so that is v0.20.0's liveness probe.
- EAR header `jwk.x5c`: v0.20.0 encodes each DER certificate as base64url without padding and
  the EC coordinates unpadded (`attestation-service/src/ear_token/broker.rs` `pubkey_jwk`);
  v0.21.0 uses standard base64 and pads the coordinates to 32 bytes. v0.21.0 also adds `iss`.
- Admin auth: v0.20.0 `Simple` personas (`kbs/src/admin/simple.rs`, error variant `AdminAuth`);
  v0.21.0 `bearer_jwt` with a `role` claim (`kbs/src/admin/authentication/bearer_jwt.rs`,
  variant `AdminAuthAccess`, or `AdminAuthInitialization` on plugin paths).
- `sampledevice` claims: `{svn}` up to v0.21.0; main adds `report_data`
  (`deps/verifier/src/sample_device/mod.rs`, commit f1340ff6).
- Provisioner plugin: main only (`kbs/src/plugins/implementations/provisioner/mod.rs`).
"""

from __future__ import annotations

V0_20_0 = "0.20.0"
V0_21_0 = "0.21.0"
MAIN = "main"
TRUSTEE_VERSIONS = (V0_20_0, V0_21_0, MAIN)
# What docker-compose.yaml pins (key-broker-service:v0.20.0).
DEFAULT_TRUSTEE_VERSION = V0_20_0


def check_version(version: str) -> str:
    """`version` if it is one of TRUSTEE_VERSIONS (a leading "v" is accepted), else ValueError."""
    plain = version[1:] if isinstance(version, str) and version.startswith("v") else version
    if plain not in TRUSTEE_VERSIONS:
        raise ValueError(
            f"unknown Trustee version {version!r}; supported: {', '.join(TRUSTEE_VERSIONS)}"
        )
    return plain


def has_healthz(version: str) -> bool:
    return check_version(version) != V0_20_0


def has_provisioner(version: str) -> bool:
    return check_version(version) == MAIN


def liveness_path(version: str) -> str:
    """The unauthenticated read-only path that answers 200 while the KBS serves requests."""
    return "/healthz" if has_healthz(version) else "/metrics"


def legacy_ear_encoding(version: str) -> bool:
    """True where the AS writes x5c as unpadded base64url and EC coordinates unpadded."""
    return check_version(version) == V0_20_0


def self_signed_admin_auth(version: str) -> bool:
    """True where admin tokens are the client's own `{iat, exp}` JWT (v0.20.0 `Simple`)."""
    return check_version(version) == V0_20_0
