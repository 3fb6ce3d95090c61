"""EAR attestation tokens (relying-party side): verification and claim accessors.

Trustee's attestation service issues an EAR (EAT Attestation Result) as a JWT signed with ES256;
the header's `jwk` carries the signer's P-256 key and, with a signer certificate configured,
its chain as `x5c` (DER, standard base64, leaf first). A relying party trusts the token only if
that chain ends at its configured trust anchor (KBS `trusted_certs_paths`).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import itertools
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from jwcrypto import jwk as _jwk
from jwcrypto import jws as _jws
from jwcrypto.common import JWException

from coco_ai.kbs.errors import TokenVerifierError
from coco_ai.kbs.wire import b64url_decode

EAR_ALG = "ES256"
TRUSTEE_EAT_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ANNOTATED_EVIDENCE = "ear.veraison.annotated-evidence"
EAR_STATUSES = ("none", "affirming", "warning", "contraindicated")

_MAX_CHAIN = 8
_GPU_SUBMOD = re.compile(r"gpu(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class EarClaims:
    """The verified payload of an EAR token, with accessors for what policies look at."""

    raw: dict
    issued_at: int
    expires_at: int

    def submod(self, name: str) -> dict:
        submods = self.raw.get("submods")
        sub = submods.get(name) if isinstance(submods, dict) else None
        if not isinstance(sub, dict):
            raise TokenVerifierError(f"EAR token has no submod {name!r}")
        return sub

    def submod_names(self) -> list[str]:
        submods = self.raw.get("submods")
        return sorted(submods) if isinstance(submods, dict) else []

    def status(self, name: str) -> str:
        """`ear.status` of a submod: "affirming", "warning", "contraindicated" or "none"."""
        status = self.submod(name).get("ear.status")
        if status not in EAR_STATUSES:
            raise TokenVerifierError(f"submod {name!r} has no valid ear.status ({status!r})")
        return status

    def trust_vector(self, name: str) -> dict[str, int]:
        vector = self.submod(name).get("ear.trustworthiness-vector")
        if not isinstance(vector, dict):
            raise TokenVerifierError(f"submod {name!r} has no ear.trustworthiness-vector")
        return vector

    def annotated_evidence(self, name: str = "cpu0") -> dict:
        evidence = self.submod(name).get(ANNOTATED_EVIDENCE)
        if not isinstance(evidence, dict):
            raise TokenVerifierError(f"submod {name!r} has no {ANNOTATED_EVIDENCE}")
        return evidence

    def gpu_submods(self) -> list[str]:
        """Names of the GPU submods (gpu0, gpu1, …) in numeric order."""
        names = [n for n in self.submod_names() if _GPU_SUBMOD.fullmatch(n)]
        return sorted(names, key=lambda n: int(n[3:]))

    def tee_pubkey(self) -> dict:
        """The attested TEE public key (cpu0 runtime_data_claims.tee-pubkey), as KBS finds it."""
        runtime = self.annotated_evidence("cpu0").get("runtime_data_claims")
        key = runtime.get("tee-pubkey") if isinstance(runtime, dict) else None
        if not isinstance(key, dict):
            raise TokenVerifierError("EAR token carries no cpu0 runtime_data_claims.tee-pubkey")
        return key

    def init_data(self) -> str | None:
        """cpu0 `init_data`: the initdata digest as the verifier reports it.

        Hex of the hardware field (truncated/padded digest) from the TDX and SNP verifiers;
        standard base64 of the digest from the `sample` verifier.
        """
        value = self.annotated_evidence("cpu0").get("init_data")
        return value if isinstance(value, str) else None

    def carries_init_data(self, digest: bytes) -> bool:
        """Does cpu0's `init_data` carry the initdata `digest` (any verifier's encoding)?"""
        return init_data_matches(self.init_data(), digest)

    def init_data_claims(self) -> dict | None:
        """cpu0 `init_data_claims`: the parsed initdata `[data]` (None when absent/null)."""
        value = self.annotated_evidence("cpu0").get("init_data_claims")
        return value if isinstance(value, dict) else None

    def all_affirming(self, *, min_gpus: int = 0) -> bool:
        """True when cpu0 and every submod are affirming and at least `min_gpus` GPUs attested."""
        names = self.submod_names()
        if "cpu0" not in names or len(self.gpu_submods()) < min_gpus:
            return False
        return all(self.submod(n).get("ear.status") == "affirming" for n in names)


def parse_ear_claims(payload: dict) -> EarClaims:
    """Structure-check an EAR payload (no signature check): `iat`, `exp`, `submods`."""
    if not isinstance(payload, dict):
        raise TokenVerifierError("EAR payload is not a JSON object")
    iat, exp = payload.get("iat"), payload.get("exp")
    for name, value in (("iat", iat), ("exp", exp)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenVerifierError(f"EAR token has no integer {name!r} claim")
    if exp <= iat:
        raise TokenVerifierError("EAR token expires before it was issued")
    if not isinstance(payload.get("submods"), dict) or not payload["submods"]:
        raise TokenVerifierError("EAR token has no submods")
    return EarClaims(raw=payload, issued_at=iat, expires_at=exp)


def unverified_header(token: str) -> dict:
    """Decode a JWS compact header without trusting it (for diagnostics and chain lookup)."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenVerifierError("attestation token is not a JWS compact string")
    try:
        header = json.loads(b64url_decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError):
        raise TokenVerifierError("attestation token header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenVerifierError("attestation token header is not a JSON object")
    return header


def unverified_claims(token: str) -> EarClaims:
    """A token's claims read WITHOUT verifying it: only for a TEE reading the token its own
    attestation agent just gave it, or to refuse early what verification would refuse anyway."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenVerifierError("attestation token is not a JWS compact string")
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]))
    except (ValueError, UnicodeDecodeError):
        raise TokenVerifierError("attestation token payload is not base64url JSON") from None
    return parse_ear_claims(payload)


def verify_ear_token(
    token: str, trust_anchor_pem: bytes, *, now: float | None = None, leeway: int = 0
) -> EarClaims:
    """Verify an EAR token and return its claims; raise TokenVerifierError on any doubt.

    Checks: alg ES256; `x5c` chain (in the header's `jwk`, or the header itself) whose every
    certificate is valid at `now` and signed by the next, the last one signed by (or equal to)
    a certificate in `trust_anchor_pem`; the header `jwk`, if present, is the leaf's key; the
    signature; `iat` not in the future and `exp` not passed (both with `leeway` seconds).
    """
    at = time.time() if now is None else now
    header = unverified_header(token)
    if header.get("alg") != EAR_ALG:
        raise TokenVerifierError(f"attestation token alg {header.get('alg')!r} is not {EAR_ALG}")
    anchors = _load_anchors(trust_anchor_pem)
    chain = _header_chain(header)
    _verify_chain(chain, anchors, at)
    leaf_key = chain[0].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp256r1":
        raise TokenVerifierError("token signer certificate does not hold a P-256 key")
    signer = _jwk.JWK.from_pyca(leaf_key)
    header_jwk = header.get("jwk")
    if header_jwk is not None:
        public = {k: header_jwk.get(k) for k in ("kty", "crv", "x", "y")}
        if public != {k: signer.get(k) for k in ("kty", "crv", "x", "y")}:
            raise TokenVerifierError("token header jwk is not the key of its x5c certificate")
    try:
        jws = _jws.JWS()
        jws.allowed_algs = [EAR_ALG]
        jws.deserialize(token)
        jws.verify(signer, alg=EAR_ALG)
        payload = json.loads(jws.payload)
    except (JWException, ValueError, UnicodeDecodeError):
        raise TokenVerifierError("attestation token signature is invalid") from None
    claims = parse_ear_claims(payload)
    if claims.issued_at > at + leeway:
        raise TokenVerifierError("attestation token is issued in the future")
    if claims.expires_at <= at - leeway:
        raise TokenVerifierError("attestation token has expired")
    return claims


def sign_ear_token(
    claims: dict, signing_key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
) -> str:
    """Sign an EAR payload as Trustee does: ES256, header `jwk` with `x5c` (leaf first)."""
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or (
        signing_key.curve.name != "secp256r1"
    ):
        raise ValueError("EAR tokens are signed with a P-256 key (ES256)")
    if not chain:
        raise ValueError("an EAR signer needs its certificate chain (leaf first)")
    key = _jwk.JWK.from_pyca(signing_key)
    public = key.export_public(as_dict=True)
    public["x5c"] = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in chain]
    jws = _jws.JWS(json.dumps(claims, separators=(",", ":")).encode())
    jws.add_signature(key, alg=EAR_ALG, protected={"alg": EAR_ALG, "typ": "JWT", "jwk": public})
    return jws.serialize(compact=True)


def _load_anchors(pem: bytes) -> list[x509.Certificate]:
    try:
        anchors = x509.load_pem_x509_certificates(pem if isinstance(pem, bytes) else pem.encode())
    except ValueError:
        raise TokenVerifierError("trust anchor is not a PEM certificate") from None
    if not anchors:
        raise TokenVerifierError("trust anchor PEM holds no certificate")
    return anchors


def _header_chain(header: dict) -> list[x509.Certificate]:
    header_jwk = header.get("jwk")
    x5c = header_jwk.get("x5c") if isinstance(header_jwk, dict) else None
    if x5c is None:
        x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or len(x5c) > _MAX_CHAIN:
        raise TokenVerifierError(
            "attestation token has no x5c certificate chain (an ephemeral, unendorsed signer "
            "key is never trusted)"
        )
    chain = []
    for entry in x5c:
        try:
            chain.append(x509.load_der_x509_certificate(base64.b64decode(entry, validate=True)))
        except (ValueError, TypeError):
            raise TokenVerifierError("token x5c entry is not a base64 DER certificate") from None
    return chain


def _valid_at(cert: x509.Certificate, at: float) -> bool:
    moment = datetime.fromtimestamp(at, UTC)
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _verify_chain(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], at: float
) -> None:
    for cert in chain:
        if not _valid_at(cert, at):
            raise TokenVerifierError(
                f"token signer certificate {cert.subject.rfc4514_string()!r} is not valid now"
            )
    for cert, issuer in itertools.pairwise(chain):
        if not _is_ca(issuer) or not _issued_by(cert, issuer):
            raise TokenVerifierError(
                "token x5c chain is broken (a certificate is not signed by the next CA)"
            )
    top = chain[-1]
    for anchor in anchors:
        if top == anchor or (_is_ca(anchor) and _issued_by(top, anchor)):
            if not _valid_at(anchor, at):
                raise TokenVerifierError("trust anchor certificate is not valid now")
            return
    raise TokenVerifierError("token x5c chain does not lead to the configured trust anchor")


def init_data_matches(token_value: str | None, digest: bytes) -> bool:
    """Does a token's cpu0 `init_data` carry the initdata `digest`?

    Trustee's TDX/SNP verifiers report the hardware field as hex, its sample verifier (and the
    stand-in's) as standard base64. The field holds the digest adjusted to its size as Kata
    does (`adjust_digest`): truncated (SNP HOST_DATA, 32 bytes) or zero-padded (a sha256 in
    TDX MRCONFIGID, 48 bytes).
    """
    if not isinstance(token_value, str) or not token_value:
        return False
    candidates = []
    if len(token_value) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", token_value):
        candidates.append(bytes.fromhex(token_value))
    with contextlib.suppress(ValueError):
        candidates.append(base64.b64decode(token_value, validate=True))
    for field_bytes in candidates:
        n = len(field_bytes)
        if n == len(digest) and hmac.compare_digest(field_bytes, digest):
            return True
        if 32 <= n < len(digest) and hmac.compare_digest(field_bytes, digest[:n]):
            return True
        if n > len(digest) and hmac.compare_digest(field_bytes, digest + bytes(n - len(digest))):
            return True
    return False
