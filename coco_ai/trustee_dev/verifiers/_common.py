"""Helpers shared by the sample verifiers."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from coco_ai.trustee_dev.verifiers._base import VerificationError


def field(evidence: dict[str, Any], name: str, tee: str, *, default: str | None = None) -> str:
    value = evidence.get(name, default)
    if not isinstance(value, str):
        raise VerificationError(f"{tee} evidence field {name!r} is missing or not a string")
    return value


def b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"{what} is not standard base64") from None


def check_report_data(encoded: str, expected: bytes, tee: str) -> None:
    """Trustee's sample verifiers compare the decoded bytes exactly (no padding)."""
    if b64decode(encoded, f"{tee} report_data") != expected:
        raise VerificationError(f"REPORT_DATA is different from that in {tee} evidence")
