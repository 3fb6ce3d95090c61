"""AMD SEV-SNP attester: the attestation report from configfs-tsm (provider ``sev_guest``).

Trustee's SNP verifier deserialises ``{"attestation_report": <virtee/sev crate serde form>,
"cert_chain": [...]}``; that serde form is tied to the exact ``sev`` crate revision Trustee
pins and this project does not re-implement it. :meth:`raw_report` returns the genuine
hardware report bytes (and the certificate table) for callers that verify it themselves;
:meth:`evidence` refuses rather than emit a shape Trustee might misread. Use the CoCo
attestation-agent on SNP guests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coco_ai.guest.attesters._base import (
    HW_REPORT_DATA_SIZE,
    AttesterUnavailable,
    EvidenceError,
    check_report_data,
)
from coco_ai.guest.attesters._tsm import TSM_REPORT_PATH, tsm_available, tsm_report

SEV_GUEST_DEVICE = Path("/dev/sev-guest")
SEV_GUEST_PLATFORM = Path("/sys/devices/platform/sev-guest")


class SnpAttester:
    tee = "snp"

    def __init__(self, *, tsm_root: Path = TSM_REPORT_PATH) -> None:
        self._tsm_root = tsm_root

    @staticmethod
    def available(tsm_root: Path = TSM_REPORT_PATH) -> bool:
        return tsm_available(tsm_root) and (
            SEV_GUEST_DEVICE.exists() or SEV_GUEST_PLATFORM.exists()
        )

    def raw_report(self, report_data: bytes) -> tuple[bytes, bytes | None]:
        """(SNP attestation report, certificate table) for report_data zero-padded to 64."""
        if not self.available(self._tsm_root):
            raise AttesterUnavailable(
                "SEV-SNP (sev-guest + configfs-tsm) not available on this host"
            )
        data = check_report_data(report_data, HW_REPORT_DATA_SIZE, self.tee)
        return tsm_report(
            "sev_guest", data.ljust(HW_REPORT_DATA_SIZE, b"\0"), with_aux=True, root=self._tsm_root
        )

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        if not self.available(self._tsm_root):
            raise AttesterUnavailable(
                "SEV-SNP (sev-guest + configfs-tsm) not available on this host"
            )
        check_report_data(report_data, HW_REPORT_DATA_SIZE, self.tee)
        raise EvidenceError(
            "SNP evidence in Trustee's format (sev crate serde JSON) is not produced by this "
            "project; run the CoCo attestation-agent on SNP guests"
        )
