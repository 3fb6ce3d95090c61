"""Trustee's `sampledevice` GPU (additional evidence, class gpu): one device.

Evidence `{"svn", "report_data": base64std}`; the report data must equal the device runtime-data
digest byte for byte. Claims (`deps/verifier/src/sample_device/mod.rs`): `{svn}` at v0.20.0 and
v0.21.0; main adds `report_data` (commit f1340ff6), which the attestation service then lifts
next to `runtime_data_claims`. Unknown fields are ignored, as serde does, so a
`device_evidence_list` still yields only gpu0.

Extension `multi-gpu-sampledevice` (opt-in, not Trustee; contract in docs/formats/kbs.md): the
first device's fields at the top plus `device_evidence_list`, one `{"svn", "report_data",
"uuid"}` per device; each becomes its own gpuN submod with claims `{svn, report_data, uuid}`.
Against real Trustee the same evidence attests one GPU, so `min_gpus > 1` fails closed there.
"""

from __future__ import annotations

from typing import Any

from coco_ai.trustee_dev.verifiers._base import VerificationError
from coco_ai.trustee_dev.verifiers._common import check_report_data, field

MAX_DEVICES = 64


class SampleDeviceVerifier:
    tee = "sampledevice"

    def __init__(self, *, report_data_claim: bool = False, multi_gpu: bool = False) -> None:
        self.report_data_claim = report_data_claim
        self.multi_gpu = multi_gpu

    def evaluate(
        self, evidence: Any, report_data: bytes, init_data_digest: bytes | None
    ) -> list[tuple[dict[str, Any], str]]:
        if not isinstance(evidence, dict):
            raise VerificationError("sampledevice evidence is not a JSON object")
        listed = evidence.get("device_evidence_list") if self.multi_gpu else None
        if listed is None:
            svn = field(evidence, "svn", self.tee)
            encoded = field(evidence, "report_data", self.tee, default="")
            check_report_data(encoded, report_data, self.tee)
            claims: dict[str, Any] = {"svn": svn}
            if self.report_data_claim:
                claims["report_data"] = encoded
            return [(claims, "gpu")]
        return self._device_list(evidence, listed, report_data)

    def _device_list(
        self, evidence: dict[str, Any], devices: Any, report_data: bytes
    ) -> list[tuple[dict[str, Any], str]]:
        if not isinstance(devices, list) or not devices or len(devices) > MAX_DEVICES:
            raise VerificationError(
                f"sampledevice device_evidence_list must list 1..{MAX_DEVICES} devices"
            )
        if not all(isinstance(d, dict) for d in devices) or (
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
