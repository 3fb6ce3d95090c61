"""Trustee's ``sampledevice`` GPU (class ``gpu``; development only).

One device: exactly upstream's ``{"svn": "2", "report_data": base64std(bytes)}``. More than one
(project extension, docs/formats/kbs.md): the first device's fields plus
``device_evidence_list`` with one ``{"svn", "report_data", "uuid"}`` per device, mirroring
NVIDIA's list. Every device is bound to the same device runtime-data digest. Real Trustee reads
only the top-level fields, i.e. sees one GPU, so a policy requiring more fails closed there.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from coco_ai.guest.attesters._base import EvidenceError, check_report_data

_REPORT_DATA_LIMIT = 64


class SampleDeviceAttester:
    tee = "sampledevice"

    def __init__(self, count: int = 1, svn: str = "2") -> None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise EvidenceError(f"sampledevice count must be a positive integer, got {count!r}")
        if not isinstance(svn, str) or not svn:
            raise EvidenceError("sampledevice svn must be a non-empty string")
        self.count = count
        self.svn = svn
        # Stable per emulator instance, like a GPU's UUID across attestations.
        self.uuids = [f"GPU-{uuid.uuid4()}" for _ in range(count)]

    def __repr__(self) -> str:
        return f"SampleDeviceAttester(count={self.count}, svn={self.svn!r})"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        data = base64.b64encode(check_report_data(report_data, _REPORT_DATA_LIMIT, self.tee))
        ev: dict[str, Any] = {"svn": self.svn, "report_data": data.decode()}
        if self.count > 1:
            ev["device_evidence_list"] = [
                {"svn": self.svn, "report_data": data.decode(), "uuid": u} for u in self.uuids
            ]
        return ev
