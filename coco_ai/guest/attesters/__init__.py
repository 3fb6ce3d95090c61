"""Guest attesters: one small interface, one module per TEE backend.

Every attester satisfies :class:`coco_ai.kbs.evidence.Attester`
(``tee`` + ``evidence(report_data)``).
``sample`` / ``sampledevice`` are Trustee's test TEEs, used explicitly by the guest-components
emulator. ``tdx`` / ``snp`` / ``nvidia`` read the real kernel or vendor interfaces and raise
:class:`AttesterUnavailable` on a host without them; nothing here ever invents hardware evidence.
"""

from __future__ import annotations

from typing import Any

from coco_ai.guest.attesters._base import AttesterUnavailable, EvidenceError
from coco_ai.guest.attesters.nvidia import NvidiaAttester
from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.guest.attesters.snp import SnpAttester
from coco_ai.guest.attesters.tdx import TdxAttester

__all__ = [
    "AttesterUnavailable",
    "EvidenceError",
    "NvidiaAttester",
    "SampleAttester",
    "SampleDeviceAttester",
    "SnpAttester",
    "TdxAttester",
    "detect_attesters",
]


def detect_attesters(gpus: int | None = None) -> tuple[Any, list[Any]]:
    """The real CPU attester of this host and its GPU attesters, like the AA's detection.

    ``gpus`` is the number of confidential GPUs the caller expects (None: take what is found,
    0: none wanted). Raises :class:`AttesterUnavailable` when the host is not a TEE or lacks the
    expected GPUs; use SampleAttester / SampleDeviceAttester explicitly for development.
    """
    if TdxAttester.available():
        cpu: Any = TdxAttester()
    elif SnpAttester.available():
        cpu = SnpAttester()
    else:
        raise AttesterUnavailable(
            "no confidential CPU on this host (neither TDX via configfs-tsm nor SEV-SNP found); "
            "for development use SampleAttester explicitly"
        )
    if gpus == 0:
        return cpu, []
    if NvidiaAttester.available():
        return cpu, [NvidiaAttester(expected_count=gpus)]
    if gpus:
        raise AttesterUnavailable(
            f"{gpus} confidential GPU(s) expected but the NVIDIA attestation tool (nvattest) "
            "is not available on this host"
        )
    return cpu, []
