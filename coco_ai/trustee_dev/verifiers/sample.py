"""Trustee's `sample` CPU TEE (primary evidence, class cpu).

Evidence `{"svn", "report_data": base64std}` as guest-components' SampleAttester sends it
(`attestation-agent/attester/src/sample/mod.rs`). Claims as Trustee's sample verifier reports
them (`deps/verifier/src/sample/mod.rs`, same at v0.20.0, v0.21.0 and main): `svn`,
`report_data`, a fixed `launch_digest` "abcde", `platform_version` 1.4, `debug` false, and, when
an init-data body was received, `init_data` = standard base64 of that body's digest. Trustee
does not check initdata for this TEE ("Sample verifier does not check init-data"); neither does
the stand-in by default, so any unknown evidence field (such as `init_data`) is ignored.

Extension `sample-initdata-check` (opt-in, not Trustee): the evidence must carry `init_data`
(standard base64 digest) equal to the received body's digest, the way a TDX verifier checks
MRCONFIGID, and evidence without it cannot be paired with an init-data body.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

from coco_ai.trustee_dev.verifiers._base import VerificationError
from coco_ai.trustee_dev.verifiers._common import b64decode, check_report_data, field


class SampleVerifier:
    tee = "sample"

    def __init__(self, *, check_initdata: bool = False) -> None:
        self.check_initdata = check_initdata

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
        if self.check_initdata:
            self._check_initdata(evidence, init_data_digest)
        if init_data_digest is not None:
            claims["init_data"] = base64.b64encode(init_data_digest).decode("ascii")
        return [(claims, "cpu")]

    def _check_initdata(self, evidence: dict[str, Any], init_data_digest: bytes | None) -> None:
        carried = evidence.get("init_data")
        if carried is None:
            if init_data_digest is not None:
                raise VerificationError(
                    "init-data was sent but the sample evidence carries no init_data digest"
                )
            return
        measured = b64decode(field(evidence, "init_data", self.tee), "sample init_data")
        if init_data_digest is None or not hmac.compare_digest(measured, init_data_digest):
            raise VerificationError(
                "initdata digest mismatch: the init-data body does not hash to the "
                "init_data digest carried by the sample evidence"
            )
