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
from cryptography.hazmat.primitives.asymmetric import ec
from pki import make_cert, new_key, pem, self_signed_ca

from coco_ai.kbs.ear import TRUSTEE_EAT_PROFILE, sign_ear_token

RUN_ID_CLAIM = "io.coco-ai.run-id"
KEY_URI = "kbs:///coco-ai/checkpoint/run-a"
SEGMENT = 4096  # the format's minimum: many segments from small files


# Valid 2020-2050: the checkpoint tests judge tokens at chosen past and future times.
_START, _DAYS = dt.datetime(2020, 1, 1, tzinfo=dt.UTC), 365 * 30


@dataclass
class TokenIssuer:
    """Issues EAR tokens like Trustee's attestation service, signed under a test CA."""

    ca_pem: bytes
    signer_key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]

    @classmethod
    def create(cls, cn: str = "test token CA") -> TokenIssuer:
        ca_key, ca = self_signed_ca(cn, days=_DAYS, start=_START)
        signer_key = new_key()
        signer = make_cert(
            "test EAR signer",
            cn,
            signer_key.public_key(),
            ca_key,
            ca=False,
            days=_DAYS,
            start=_START,
        )
        return cls(pem(ca), signer_key, [signer])

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
