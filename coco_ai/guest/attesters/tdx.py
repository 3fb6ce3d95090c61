"""Intel TDX attester: a TD quote from configfs-tsm (provider ``tdx_guest``).

Evidence as guest-components' TdxAttester: ``{"cc_eventlog": null, "quote": base64std(quote)}``
with report_data zero-padded to 64 bytes (longer input is an error). The CCEL/AAEL event log is
not collected (``cc_eventlog`` null): policies that need RTMR replay need the CoCo AA.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from coco_ai.guest.attesters._base import HW_REPORT_DATA_SIZE, check_report_data
from coco_ai.guest.attesters._tsm import TSM_REPORT_PATH, tsm_available, tsm_report

TDX_GUEST_DEVICE = Path("/dev/tdx_guest")


class TdxAttester:
    tee = "tdx"

    def __init__(self, *, tsm_root: Path = TSM_REPORT_PATH) -> None:
        self._tsm_root = tsm_root

    @staticmethod
    def available(tsm_root: Path = TSM_REPORT_PATH) -> bool:
        return tsm_available(tsm_root) and TDX_GUEST_DEVICE.exists()

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        data = check_report_data(report_data, HW_REPORT_DATA_SIZE, self.tee)
        quote, _ = tsm_report(
            "tdx_guest", data.ljust(HW_REPORT_DATA_SIZE, b"\0"), root=self._tsm_root
        )
        return {"cc_eventlog": None, "quote": base64.b64encode(quote).decode()}
