"""Trustee's `sampledevice` GPU (additional evidence, class gpu), any number of devices.

One device: upstream's `{"svn", "report_data"}`. Several (project extension, contract in
docs/formats/kbs.md): the first device's fields at the top plus `device_evidence_list`, one
`{"svn", "report_data", "uuid"}` per device; each becomes its own gpuN submod. Every device's
report data must equal the device runtime-data digest byte for byte.
"""

from __future__ import annotations

from typing import Any

from coco_ai.trustee_dev.verifiers._base import VerificationError
from coco_ai.trustee_dev.verifiers._common import check_report_data, field

MAX_DEVICES = 64


class SampleDeviceVerifier:
    tee = "sampledevice"

    def evaluate(
        self, evidence: Any, report_data: bytes, init_data_digest: bytes | None
    ) -> list[tuple[dict[str, Any], str]]:
        if not isinstance(evidence, dict):
            raise VerificationError("sampledevice evidence is not a JSON object")
        devices = evidence.get("device_evidence_list")
        if devices is None:
            devices = [evidence]
        elif not isinstance(devices, list) or not devices or len(devices) > MAX_DEVICES:
            raise VerificationError(
                f"sampledevice device_evidence_list must list 1..{MAX_DEVICES} devices"
            )
        elif not all(isinstance(d, dict) for d in devices) or (
            devices[0].get("svn"),
            devices[0].get("report_data"),
        ) != (evidence.get("svn"), evidence.get("report_data")):
            raise VerificationError(
                "sampledevice top-level svn/report_data must repeat the first listed device"
            )
        results: list[tuple[dict[str, Any], str]] = []
        for device in devices:
            svn = field(device, "svn", self.tee)
            encoded = field(device, "report_data", self.tee, default="")
            check_report_data(encoded, report_data, self.tee)
            claims: dict[str, Any] = {"svn": svn, "report_data": encoded}
            if "uuid" in device:
                claims["uuid"] = field(device, "uuid", self.tee)
            results.append((claims, "gpu"))
        return results
