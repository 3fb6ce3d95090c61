"""Trustee's `sample` CPU TEE (primary evidence, class cpu).

Evidence `{"svn", "report_data": base64std, "init_data"?: base64std}`. Claims as Trustee's
sample verifier reports them (`svn`, `report_data`, a fixed `launch_digest` "abcde",
`platform_version` 1.4, `debug` false). Unlike current Trustee, which only warns "Sample
verifier does not check init-data", the stand-in checks the initdata binding the way a TDX
verifier checks MRCONFIGID: the evidence's `init_data` must equal the digest of the received
initdata body, and evidence that carries no digest cannot be paired with an initdata body.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

from coco_ai.trustee_dev.verifiers._base import VerificationError
from coco_ai.trustee_dev.verifiers._common import b64decode, check_report_data, field


class SampleVerifier:
    tee = "sample"

    def evaluate(
        self, evidence: Any, report_data: bytes, init_data_digest: bytes | None
    ) -> list[tuple[dict[str, Any], str]]:
        if not isinstance(evidence, dict):
            raise VerificationError("sample evidence is not a JSON object")
        svn = field(evidence, "svn", self.tee)
        encoded = field(evidence, "report_data", self.tee, default="")
        check_report_data(encoded, report_data, self.tee)
        claims: dict[str, Any] = {
            "svn": svn,
            "report_data": encoded,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        }
        carried = evidence.get("init_data")
        if carried is not None:
            measured = b64decode(field(evidence, "init_data", self.tee), "sample init_data")
            if init_data_digest is not None and not hmac.compare_digest(measured, init_data_digest):
                raise VerificationError(
                    "initdata digest mismatch: the init-data body does not hash to the "
                    "init_data digest carried by the sample evidence"
                )
            claims["init_data"] = base64.b64encode(measured).decode("ascii")
        elif init_data_digest is not None:
            raise VerificationError(
                "init-data was sent but the sample evidence carries no init_data digest"
            )
        return [(claims, "cpu")]
