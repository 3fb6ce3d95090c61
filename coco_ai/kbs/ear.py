"""EAR attestation tokens (relying-party side): verification and claim accessors.

Trustee's attestation service issues an EAR (EAT Attestation Result) as a JWT signed with ES256;
the header's `jwk` carries the signer's P-256 key and, with a signer certificate configured,
its chain as `x5c` (DER, leaf first). A relying party trusts the token only if that chain ends at
its configured trust anchor (KBS `trusted_certs_paths`) and its leaf is the configured signer.

Encodings differ by version (`attestation-service/src/ear_token/broker.rs` `pubkey_jwk`):
v0.20.0 writes `x5c` entries as base64url without padding and the EC coordinates without
left-padding; v0.21.0 writes standard base64 and 32-byte coordinates. Trustee's KBS accepts both
(`kbs/src/token/jwk.rs`: STANDARD, then URL_SAFE_NO_PAD), and so does this verifier; it compares
the header key with the certificate's key by value, never as strings.
"""

from __future__ import annotations

import base64
import binascii
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from coco_ai.kbs import versions
from coco_ai.kbs.errors import TokenVerifierError
from coco_ai.kbs.wire import b64url_decode, b64url_encode

EAR_ALG = "ES256"
TRUSTEE_EAT_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ANNOTATED_EVIDENCE = "ear.veraison.annotated-evidence"
EAR_STATUSES = ("none", "affirming", "warning", "contraindicated")
#: Trustee's development verifiers (sample CPU, sampledevice GPU): no hardware behind them
DEVELOPMENT_EVIDENCE = ("sample", "sampledevice")

_MAX_CHAIN = 8
_TLS_PURPOSES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
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
    except (ValueError, UnicodeDecodeError, RecursionError):
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
    token: str,
    trust_anchor_pem: bytes,
    *,
    now: float | None = None,
    leeway: int = 0,
    signer_pem: bytes | None = None,
) -> EarClaims:
    """Verify an EAR token and return its claims; raise TokenVerifierError on any doubt.

    Checks: alg ES256; `x5c` chain (in the header's `jwk`, or the header itself; standard or
    unpadded-url base64) whose every certificate is valid at `now` and signed by the next, the
    last one signed by (or equal to) a certificate in `trust_anchor_pem`; the leaf is the
    token signer (see below); the header `jwk`, if present, is the leaf's key (compared by
    value); the signature; `iat` not in the future and `exp` not passed (with `leeway` s).

    Signer identity: with `signer_pem` (the signer's certificate or public key, PEM) the leaf
    must hold exactly that key. Without it the leaf must at least look like a token signer: not
    a CA, key usage (when present) allowing digitalSignature, and no TLS extended key usage
    (serverAuth/clientAuth), so a TLS certificate under the same anchor never signs tokens.
    Pinning is the production setting: a key that anyone under the CA could hold is not
    Trustee's signer.
    """
    at = time.time() if now is None else now
    header = unverified_header(token)
    if header.get("alg") != EAR_ALG:
        raise TokenVerifierError(f"attestation token alg {header.get('alg')!r} is not {EAR_ALG}")
    anchors = _load_anchors(trust_anchor_pem)
    pinned = _load_signer_pin(signer_pem) if signer_pem is not None else None
    chain = _header_chain(header)
    _verify_chain(chain, anchors, at)
    leaf_key = chain[0].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp256r1":
        raise TokenVerifierError("token signer certificate does not hold a P-256 key")
    _check_signer(chain[0], pinned)
    header_jwk = header.get("jwk")
    if header_jwk is not None and not _jwk_is_key(header_jwk, leaf_key):
        raise TokenVerifierError("token header jwk is not the key of its x5c certificate")
    payload = _verify_es256(token, leaf_key)
    claims = parse_ear_claims(payload)
    if claims.issued_at > at + leeway:
        raise TokenVerifierError("attestation token is issued in the future")
    if claims.expires_at <= at - leeway:
        raise TokenVerifierError("attestation token has expired")
    return claims


def sign_ear_token(
    claims: dict,
    signing_key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    *,
    trustee_version: str = versions.V0_21_0,
) -> str:
    """Sign an EAR payload byte for byte as `trustee_version`'s attestation service does.

    Header `{"typ":"JWT","alg":"ES256","jwk":{"alg":"ES256","x5c":[..],"kty":"EC",
    "crv":"P-256","x","y"}}` (jsonwebtoken's field order); v0.20.0 writes x5c as unpadded
    base64url and the coordinates unpadded, later versions standard base64 and 32 bytes.
    """
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or (
        signing_key.curve.name != "secp256r1"
    ):
        raise ValueError("EAR tokens are signed with a P-256 key (ES256)")
    if not chain:
        raise ValueError("an EAR signer needs its certificate chain (leaf first)")
    legacy = versions.legacy_ear_encoding(trustee_version)
    numbers = signing_key.public_key().public_numbers()

    def coordinate(value: int) -> str:
        size = (value.bit_length() + 7) // 8 if legacy else 32
        return b64url_encode(value.to_bytes(max(size, 1), "big"))

    def der(cert: x509.Certificate) -> str:
        data = cert.public_bytes(Encoding.DER)
        return b64url_encode(data) if legacy else base64.b64encode(data).decode("ascii")

    jwk = {
        "alg": EAR_ALG,
        "x5c": [der(c) for c in chain],
        "kty": "EC",
        "crv": "P-256",
        "x": coordinate(numbers.x),
        "y": coordinate(numbers.y),
    }
    header = {"typ": "JWT", "alg": EAR_ALG, "jwk": jwk}
    signing_input = ".".join(
        b64url_encode(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims)
    )
    r, s = decode_dss_signature(
        signing_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    )
    return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def signer_public_pem(signer_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a signer pin (certificate or public key PEM)."""
    return _load_signer_pin(signer_pem).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )


def _load_signer_pin(pem: bytes) -> ec.EllipticCurvePublicKey:
    data = pem if isinstance(pem, bytes) else str(pem).encode()
    key = None
    with contextlib.suppress(ValueError):
        key = x509.load_pem_x509_certificate(data).public_key()
    if key is None:
        try:
            key = load_pem_public_key(data)
        except ValueError:
            raise TokenVerifierError(
                "token signer pin is neither a PEM certificate nor a PEM public key"
            ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise TokenVerifierError("token signer pin is not a P-256 key")
    return key


def _check_signer(leaf: x509.Certificate, pinned: ec.EllipticCurvePublicKey | None) -> None:
    if pinned is not None:
        if leaf.public_key().public_numbers() != pinned.public_numbers():
            raise TokenVerifierError(
                f"token signer {leaf.subject.rfc4514_string()!r} is not the configured signer"
            )
        return
    if _is_ca(leaf):
        raise TokenVerifierError("token signer certificate is a CA, not a token signer")
    with contextlib.suppress(x509.ExtensionNotFound):
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise TokenVerifierError("token signer certificate does not allow digitalSignature")
    with contextlib.suppress(x509.ExtensionNotFound):
        purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        tls = sorted(name for oid, name in _TLS_PURPOSES.items() if oid in purposes)
        if tls:
            raise TokenVerifierError(
                f"token signer certificate is a TLS certificate (extended key usage "
                f"{', '.join(tls)}), not a token signer"
            )


def _coordinate(value: object) -> int:
    """A JWK EC coordinate as an integer (unpadded base64url; any leading-zero length)."""
    if not isinstance(value, str) or not value:
        raise ValueError("missing coordinate")
    return int.from_bytes(b64url_decode(value), "big")


def _jwk_is_key(header_jwk: object, key: ec.EllipticCurvePublicKey) -> bool:
    if not isinstance(header_jwk, dict):
        return False
    if header_jwk.get("kty") != "EC" or header_jwk.get("crv") != "P-256":
        return False
    if header_jwk.get("alg", EAR_ALG) != EAR_ALG:
        return False
    try:
        x, y = _coordinate(header_jwk.get("x")), _coordinate(header_jwk.get("y"))
    except ValueError:
        return False
    numbers = key.public_numbers()
    return (x, y) == (numbers.x, numbers.y)


def _verify_es256(token: str, key: ec.EllipticCurvePublicKey) -> dict:
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        signature = b64url_decode(signature_b64)
        if len(signature) != 64:
            raise ValueError("ES256 signatures are 64 bytes")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        key.verify(
            encode_dss_signature(r, s),
            f"{header_b64}.{payload_b64}".encode("ascii"),
            ec.ECDSA(hashes.SHA256()),
        )
    except (ValueError, InvalidSignature, UnicodeEncodeError):
        raise TokenVerifierError("attestation token signature is invalid") from None
    try:
        return json.loads(b64url_decode(payload_b64))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenVerifierError("attestation token payload is not base64url JSON") from None


def _load_anchors(pem: bytes) -> list[x509.Certificate]:
    try:
        anchors = x509.load_pem_x509_certificates(pem if isinstance(pem, bytes) else pem.encode())
    except ValueError:
        raise TokenVerifierError("trust anchor is not a PEM certificate") from None
    if not anchors:
        raise TokenVerifierError("trust anchor PEM holds no certificate")
    return anchors


def _x5c_der(entry: object) -> bytes:
    """One x5c entry: standard base64 first, then unpadded base64url, as Trustee's KBS."""
    if not isinstance(entry, str):
        raise ValueError("x5c entry is not a string")
    text = "".join(entry.split("\n")).strip()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b64url_decode(text)


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
            chain.append(x509.load_der_x509_certificate(_x5c_der(entry)))
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
