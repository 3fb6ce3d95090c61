"""Keyless verification of a signed checkpoint: attestation, signature, ciphertext.

(a) the EAR token chains to the trust anchor and meets the policy (CPU and every GPU
    affirming, enough GPUs, expected initdata claims such as the run id);
(b) the manifest is signed (ES256) by the TEE key attested in that token, and was created
    while the token was valid (iat <= created_at <= exp);
(c) the ciphertext in the store matches the manifest (exact object set, sizes, SHA-256);
plus the replay check: the manifest's run id is the run being verified.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from coco_ai.crypto.errors import AttestationError, ReplayError, SignatureError
from coco_ai.crypto.manifest import JWS_TYPE, Manifest
from coco_ai.guest.initdata import RUN_ID_KEY
from coco_ai.kbs.ear import EarClaims, verify_ear_token
from coco_ai.kbs.errors import KbsError

if TYPE_CHECKING:
    from coco_ai.runs import RunRefs


@dataclass(frozen=True)
class VerificationPolicy:
    """What a checkpoint must prove. `run_id` is the run being verified (replay check)."""

    run_id: str
    min_gpus: int = 1
    init_data_claims: Mapping[str, str] = field(default_factory=dict)
    init_data_digest: bytes | None = None  # this run's initdata digest, when pinned
    leeway: int = 0  # clock skew tolerated, seconds
    # The attestation service's signer (certificate or public key PEM); None: any signing leaf
    # under the anchor (never a CA or TLS certificate, see coco_ai.kbs.ear.verify_ear_token).
    token_signer_pem: bytes | None = None

    @classmethod
    def for_run(cls, run_id: str, *, min_gpus: int = 1, **extra: Any) -> VerificationPolicy:
        """The least a checkpoint must prove: its token's initdata names this run."""
        claims = {RUN_ID_KEY: run_id, **extra.pop("init_data_claims", {})}
        return cls(run_id=run_id, min_gpus=min_gpus, init_data_claims=claims, **extra)

    @classmethod
    def for_refs(
        cls, refs: RunRefs, *, min_gpus: int = 1, token_signer_pem: bytes | None = None
    ) -> VerificationPolicy:
        """What a checkpoint of the pipeline's run must prove: the token carries exactly this
        run's initdata (digest) and every claim key release wrote into it."""
        return cls(
            run_id=refs.run_id,
            min_gpus=min_gpus,
            init_data_claims=refs.expected_claims(),
            init_data_digest=refs.initdata_digest.value,
            token_signer_pem=token_signer_pem,
        )


@dataclass(frozen=True)
class VerifiedCheckpoint:
    manifest: Manifest
    manifest_digest: str
    claims: EarClaims
    signer_jwk: dict
    location: str


def check_policy(claims: EarClaims, policy: VerificationPolicy) -> None:
    """Raise AttestationError unless the verified claims meet `policy`."""
    names = claims.submod_names()
    if "cpu0" not in names:
        raise AttestationError("token has no cpu0 submod")
    gpus = claims.gpu_submods()
    if len(gpus) < policy.min_gpus:
        raise AttestationError(
            f"token attests {len(gpus)} GPU(s), policy requires {policy.min_gpus}"
        )
    for name in names:
        status = claims.submod(name).get("ear.status")
        if status != "affirming":
            raise AttestationError(f"submod {name} is {status!r}, policy requires 'affirming'")
    have = claims.init_data_claims() or {}
    for key, want in policy.init_data_claims.items():
        if have.get(key) != want:
            if key == RUN_ID_KEY:
                raise ReplayError(
                    f"token was issued to run {have.get(key)!r}, expected run {want!r}"
                )
            raise AttestationError(f"token init_data_claims[{key!r}] is not {want!r}")
    if policy.init_data_digest is not None and not claims.carries_init_data(
        policy.init_data_digest
    ):
        raise AttestationError(
            f"token init_data {claims.init_data()!r} is not this run's initdata digest "
            f"{policy.init_data_digest.hex()}"
        )


def verify_es256_jws(compact: str, key: jwk.JWK) -> tuple[dict, bytes]:
    """(protected header, payload) of a compact JWS that verifies with `key` under ES256 and
    no other algorithm; ValueError otherwise (the caller says what was being verified)."""
    try:
        sig = jws.JWS()
        sig.allowed_algs = ["ES256"]
        sig.deserialize(compact)
        sig.verify(key, alg="ES256")
    except (JWException, ValueError):
        raise ValueError("JWS does not verify under ES256 with the given key") from None
    return dict(sig.jose_header), sig.payload


def verify_signed_manifest(
    manifest_bytes: bytes,
    signature: str | None,
    token: str | None,
    *,
    trust_anchor_pem: bytes,
    policy: VerificationPolicy,
    now: float | None = None,
) -> tuple[Manifest, EarClaims, dict]:
    """(a) + (b) + replay check. Returns the manifest, the verified claims, the signer JWK."""
    manifest = Manifest.from_bytes(manifest_bytes)
    if not signature:
        raise SignatureError("checkpoint has no manifest signature")
    if not token:
        raise AttestationError("checkpoint has no attestation token")
    at = time.time() if now is None else now
    if manifest.created_at > at + policy.leeway:
        raise SignatureError("manifest claims a creation time in the future")
    # The token is judged at the manifest's creation time: it must have been valid (issued,
    # not expired, chain valid) when the TEE signed. created_at itself is covered by the
    # signature checked below, so a forged time fails there.
    try:
        claims = verify_ear_token(
            token,
            trust_anchor_pem,
            now=manifest.created_at,
            leeway=policy.leeway,
            signer_pem=policy.token_signer_pem,
        )
    except KbsError as exc:
        raise AttestationError(
            f"attestation token not valid at manifest creation "
            f"(created_at={manifest.created_at}): {exc.detail}"
        ) from None
    if not claims.issued_at - policy.leeway <= manifest.created_at <= claims.expires_at:
        raise AttestationError("manifest was not created within the token's validity")
    check_policy(claims, policy)
    try:
        attested = claims.tee_pubkey()
        key = jwk.JWK(**{k: attested[k] for k in ("kty", "crv", "x", "y")})
    except (KbsError, KeyError, TypeError, ValueError, JWException):
        raise AttestationError("token carries no usable P-256 tee-pubkey") from None
    try:
        header, payload = verify_es256_jws(signature, key)
    except ValueError:
        raise SignatureError(
            "manifest signature does not verify with the attested TEE key "
            "(signed by another key, or signature/manifest altered)"
        ) from None
    if header.get("typ") != JWS_TYPE:
        raise SignatureError(f"signature typ is not {JWS_TYPE}")
    if payload != manifest_bytes:
        raise SignatureError(
            "manifest.json differs from the signed manifest (edited after signing)"
        )
    if manifest.run_id != policy.run_id:
        raise ReplayError(
            f"manifest belongs to run {manifest.run_id!r}, not to run {policy.run_id!r}"
        )
    return manifest, claims, {k: attested[k] for k in ("kty", "crv", "x", "y")}
