"""EAR token issuing: the stand-in's own token CA, a P-256 signer it certifies, Trustee's payload.

The token CA certificate is written to `<state-dir>/ca.pem`: relying parties (the KBS side of
this stand-in, the promotion step) use it as the trust anchor, as a real Trustee deployment's
KBS uses `trusted_certs_paths`; the signer certificate, `<state-dir>/token-signer/signer-cert.pem`,
is what they pin (`verify_ear_token(signer_pem=...)`). Keys persist in `<state-dir>/token-signer/`
(0600) so the anchor survives restarts. The token CA issues nothing else: the TLS server
certificate comes from a separate CA (server.py), so a TLS key can never sign a token that
chains to this anchor.

Tokens are encoded as the emulated version's attestation service encodes them (see
coco_ai.kbs.versions): v0.20.0 without `iss` and with the legacy x5c/coordinate encoding.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coco_ai.kbs import versions
from coco_ai.kbs.ear import TRUSTEE_EAT_PROFILE, EarClaims, sign_ear_token, verify_ear_token
from coco_ai.trustee_dev.state import StateDir, write_atomic

ISSUER = "CoCo-Attestation-Service"
VERIFIER_ID = {
    "build": "attestation-service 0.1.0",
    "developer": "https://confidentialcontainers.org",
}
APPRAISAL_POLICY_ID = "default"
_CERT_DAYS = 3650


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coco-ai trustee stand-in"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA (certificate signing only) for one purpose of the stand-in."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=_CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca


def _new_certs() -> tuple[
    ec.EllipticCurvePrivateKey, x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate
]:
    ca_key, ca = new_ca("coco-ai trustee stand-in token CA")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=_CERT_DAYS)
    ca_name = ca.subject
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(_name("coco-ai trustee stand-in EAR signer"))
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca, signer_key, signer


class TokenBroker:
    """Signs EAR tokens and verifies tokens presented back to the stand-in."""

    def __init__(
        self, state: StateDir, trustee_version: str = versions.DEFAULT_TRUSTEE_VERSION
    ) -> None:
        self.trustee_version = versions.check_version(trustee_version)
        folder = state.signer_dir
        key_file, cert_file = folder / "signer-key.pem", folder / "signer-cert.pem"
        if not key_file.exists():
            self._create(state, folder)
        self._key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(self._key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file} is not an EC private key")
        self.signer_pem = cert_file.read_bytes()
        self._chain = [x509.load_pem_x509_certificate(self.signer_pem)]
        self.ca_pem = state.ca_cert_path.read_bytes()
        self.ca_cert_path: Path = state.ca_cert_path
        self.signer_cert_path: Path = cert_file

    @staticmethod
    def _create(state: StateDir, folder: Path) -> None:
        ca_key, ca, signer_key, signer = _new_certs()
        pem = serialization.Encoding.PEM
        write_atomic(folder / "ca-key.pem", _pem_key(ca_key))
        write_atomic(folder / "signer-cert.pem", signer.public_bytes(pem), mode=0o644)
        write_atomic(state.ca_cert_path, ca.public_bytes(pem), mode=0o644)
        # The key last: its presence marks a complete signer.
        write_atomic(folder / "signer-key.pem", _pem_key(signer_key))

    def issue(self, submods: dict[str, Any], now: float, lifetime_s: int) -> str:
        iat = int(now)
        payload = {
            "eat_profile": TRUSTEE_EAT_PROFILE,
            "iat": iat,
            "ear.verifier-id": VERIFIER_ID,
            "submods": submods,
            "exp": iat + lifetime_s,
        }
        if not versions.legacy_ear_encoding(self.trustee_version):
            payload["iss"] = ISSUER  # registered as an EAR extension since v0.21.0
        return sign_ear_token(payload, self._key, self._chain, trustee_version=self.trustee_version)

    def verify(self, token: str, now: float) -> EarClaims:
        """Verify against the stand-in's own CA and signer (raises TokenVerifierError)."""
        return verify_ear_token(token, self.ca_pem, now=now, signer_pem=self.signer_pem)
