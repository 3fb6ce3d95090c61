"""Evidence verifiers of the stand-in, one file per TEE, behind one small interface.

A verifier checks that evidence is bound to the expected report data (and, for a CPU TEE, to the
initdata digest) and returns one claims object per device with its TEE class, like Trustee's
`Verifier::evaluate`. A claims object may hold `report_data` and `init_data`; the attestation
service lifts those out next to the TEE-specific claims, as Trustee's `transform_claims` does.
"""

from __future__ import annotations

from coco_ai.kbs import versions
from coco_ai.trustee_dev.extensions import MULTI_GPU_SAMPLEDEVICE, SAMPLE_INITDATA_CHECK
from coco_ai.trustee_dev.verifiers._base import VerificationError, Verifier
from coco_ai.trustee_dev.verifiers.sample import SampleVerifier
from coco_ai.trustee_dev.verifiers.sampledevice import SampleDeviceVerifier

__all__ = ["VerificationError", "Verifier", "verifiers"]


def verifiers(
    trustee_version: str, extensions: frozenset[str] = frozenset()
) -> dict[str, Verifier]:
    """The stand-in's verifiers as `trustee_version` behaves, plus the opted-in extensions."""
    sample = SampleVerifier(check_initdata=SAMPLE_INITDATA_CHECK in extensions)
    device = SampleDeviceVerifier(
        report_data_claim=versions.check_version(trustee_version) == versions.MAIN,
        multi_gpu=MULTI_GPU_SAMPLEDEVICE in extensions,
    )
    return {v.tee: v for v in (sample, device)}
