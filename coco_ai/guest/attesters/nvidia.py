"""NVIDIA confidential GPU attester via NVIDIA's NVAT tooling (``nvattest`` CLI).

Evidence as guest-components' NVIDIA attester: ``{"device_evidence_list": [{"arch", "uuid",
"evidence", "certificate"}, ...]}`` with the SPDM nonce = the first 32 bytes of the device
runtime-data digest (shorter input zero-padded). The SPDM reports come from the GPUs through
``nvattest collect-evidence --device gpu --nonce <hex>``; without the tool or GPUs in CC mode
this attester is unavailable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from coco_ai.guest.attesters._base import AttesterUnavailable, EvidenceError

NVIDIA_NONCE_SIZE = 32
_TOOL = "nvattest"
_FIELDS = ("arch", "evidence", "certificate")


class NvidiaAttester:
    tee = "nvidia"

    def __init__(self, *, expected_count: int | None = None, timeout: float = 120.0) -> None:
        self.expected_count = expected_count
        self.timeout = timeout

    @staticmethod
    def available() -> bool:
        return shutil.which(_TOOL) is not None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        tool = shutil.which(_TOOL)
        if tool is None:
            raise AttesterUnavailable(
                "NVIDIA GPU attestation (nvattest from the NVIDIA Attestation SDK) is not "
                "available on this host"
            )
        nonce = bytes(report_data[:NVIDIA_NONCE_SIZE]).ljust(NVIDIA_NONCE_SIZE, b"\0")
        proc = subprocess.run(
            [tool, "collect-evidence", "--device", "gpu", "--nonce", nonce.hex()],
            capture_output=True,
            timeout=self.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise EvidenceError(
                f"nvattest collect-evidence failed (exit {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-500:]}"
            )
        try:
            items = json.loads(proc.stdout)["evidences"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EvidenceError(f"nvattest output is not the expected JSON: {exc}") from None
        devices = []
        for item in items:
            if not isinstance(item, dict) or any(not item.get(f) for f in _FIELDS):
                raise EvidenceError(f"nvattest evidence entry lacks one of {_FIELDS}")
            devices.append(
                {
                    "arch": str(item["arch"]).upper(),
                    "uuid": str(item.get("uuid", "unknown")),
                    "evidence": item["evidence"],
                    "certificate": item["certificate"],
                }
            )
        if not devices:
            raise AttesterUnavailable("no NVIDIA GPU in confidential-computing mode found")
        if self.expected_count is not None and len(devices) != self.expected_count:
            raise EvidenceError(
                f"expected {self.expected_count} confidential GPU(s), nvattest found {len(devices)}"
            )
        return {"device_evidence_list": devices}
