"""Trustee's ``sample`` CPU TEE (development only; production policies deny it).

Evidence as guest-components' SampleAttester: ``{"svn": "1", "report_data": base64std(bytes)}``
with the report data carried exactly (no padding; Trustee's sample verifier compares bytes).
When the guest was given initdata, ``init_data`` carries its digest (standard base64, the
encoding Trustee's sample verifier used while it checked the field). Current Trustee ignores
the field and trusts the ``init-data`` body it receives; the project's stand-in checks it, the
way a TDX verifier checks MRCONFIGID.
"""

from __future__ import annotations

import base64
from typing import Any

from coco_ai.guest.attesters._base import EvidenceError, check_report_data

# A sample report has no fixed field size; bound it like the hardware ones so the
# /aa/evidence route behaves the same on every TEE.
_REPORT_DATA_LIMIT = 64


class SampleAttester:
    tee = "sample"

    def __init__(self, svn: str = "1", init_data_digest: bytes | None = None) -> None:
        if not isinstance(svn, str) or not svn:
            raise EvidenceError("sample svn must be a non-empty string")
        if init_data_digest is not None and len(init_data_digest) not in (32, 48, 64):
            raise EvidenceError("init_data_digest must be a sha256/sha384/sha512 digest")
        self.svn = svn
        self.init_data_digest = init_data_digest

    def __repr__(self) -> str:
        return f"SampleAttester(svn={self.svn!r}, init_data={self.init_data_digest is not None})"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        data = check_report_data(report_data, _REPORT_DATA_LIMIT, self.tee)
        ev: dict[str, Any] = {"svn": self.svn, "report_data": base64.b64encode(data).decode()}
        if self.init_data_digest is not None:
            ev["init_data"] = base64.b64encode(self.init_data_digest).decode()
        return ev
