"""Shared pieces of the attester backends."""

from __future__ import annotations

# Hardware report_data fields are 64 bytes; the guest AA refuses longer input rather than
# truncating it (attestation-agent/attester/src/{tdx,snp}/mod.rs).
HW_REPORT_DATA_SIZE = 64


class AttesterUnavailable(RuntimeError):
    """The TEE interface this attester needs is not available on this host."""


class EvidenceError(ValueError):
    """Evidence could not be produced for this input (e.g. report_data too long)."""


def check_report_data(report_data: bytes, limit: int, tee: str) -> bytes:
    if not isinstance(report_data, bytes | bytearray):
        raise EvidenceError(f"{tee}: report_data must be bytes")
    if len(report_data) > limit:
        raise EvidenceError(
            f"{tee}: report data must be no more than {limit} bytes, got {len(report_data)}"
        )
    return bytes(report_data)
