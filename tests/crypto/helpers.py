"""Helpers for the checkpoint tests: a test attestation CA issuing EAR tokens, file trees.

Tokens are real ES256 EAR tokens (Trustee's payload shape, x5c chain in the header) signed by a
CA made here; `coco_ai.kbs.ear.verify_ear_token` verifies them against that CA's PEM.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coco_ai.kbs.ear import TRUSTEE_EAT_PROFILE, sign_ear_token

RUN_ID_CLAIM = "io.coco-ai.run-id"
KEY_URI = "kbs:///coco-ai/checkpoint/run-a"
SEGMENT = 4096  # the format's minimum: many segments from small files


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, key, sign_key, *, ca: bool) -> x509.Certificate:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(sign_key, hashes.SHA256())
    )


@dataclass
class TokenIssuer:
    """Issues EAR tokens like Trustee's attestation service, signed under a test CA."""

    ca_pem: bytes
    signer_key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]

    @classmethod
    def create(cls, cn: str = "test token CA") -> TokenIssuer:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(_name(cn), _name(cn), ca_key, ca_key, ca=True)
        signer_key = ec.generate_private_key(ec.SECP256R1())
        signer = _cert(_name("test EAR signer"), _name(cn), signer_key, ca_key, ca=False)
        return cls(ca.public_bytes(serialization.Encoding.PEM), signer_key, [signer])

    def issue(
        self,
        tee_pubkey: dict,
        *,
        run_id: str,
        iat: int | None = None,
        lifetime: int = 300,
        gpus: int = 1,
        cpu_status: str = "affirming",
        gpu_status: str = "affirming",
    ) -> str:
        iat = int(time.time()) - 5 if iat is None else iat
        vector = {"instance-identity": 2, "hardware": 2, "executables": 2, "configuration": 2}
        submods = {
            "cpu0": {
                "ear.status": cpu_status,
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": {
                    "sample": {"svn": "1"},
                    "init_data": "ab" * 48,
                    "init_data_claims": {RUN_ID_CLAIM: run_id},
                    "report_data": "00" * 64,
                    "runtime_data_claims": {"nonce": "n", "tee-pubkey": tee_pubkey},
                },
            }
        }
        for i in range(gpus):
            submods[f"gpu{i}"] = {
                "ear.status": gpu_status,
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": {"sampledevice": {"svn": "2"}},
            }
        claims = {
            "eat_profile": TRUSTEE_EAT_PROFILE,
            "iat": iat,
            "exp": iat + lifetime,
            "iss": "CoCo-Attestation-Service",
            "ear.verifier-id": {"developer": "https://confidentialcontainers.org", "build": "t"},
            "submods": submods,
        }
        return sign_ear_token(claims, self.signer_key, self.chain)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def leftovers(parent: Path) -> list[str]:
    """Hidden staging directories or temporaries left next to a destination."""
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or p.suffix == ".tmp")
