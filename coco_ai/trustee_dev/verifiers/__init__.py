"""Evidence verifiers of the stand-in, one file per TEE, behind one small interface.

A verifier checks that evidence is bound to the expected report data (and, for a CPU TEE, to the
initdata digest) and returns one claims object per device with its TEE class, like Trustee's
`Verifier::evaluate`. A claims object may hold `report_data` and `init_data`; the attestation
service lifts those out next to the TEE-specific claims, as Trustee's `transform_claims` does.
"""

from __future__ import annotations

from coco_ai.trustee_dev.verifiers._base import VerificationError, Verifier
from coco_ai.trustee_dev.verifiers.sample import SampleVerifier
from coco_ai.trustee_dev.verifiers.sampledevice import SampleDeviceVerifier

__all__ = ["VerificationError", "Verifier", "verifiers"]


def verifiers() -> dict[str, Verifier]:
    return {v.tee: v for v in (SampleVerifier(), SampleDeviceVerifier())}
