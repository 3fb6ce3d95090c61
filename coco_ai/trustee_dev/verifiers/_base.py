"""The verifier interface of the stand-in (one small protocol; one file per TEE beside it)."""

from __future__ import annotations

from typing import Any, Protocol


class VerificationError(Exception):
    """Evidence that does not verify; the message says what did not match."""


class Verifier(Protocol):
    tee: str

    def evaluate(
        self, evidence: Any, report_data: bytes, init_data_digest: bytes | None
    ) -> list[tuple[dict[str, Any], str]]:
        """[(claims, tee_class), ...] or raise VerificationError."""
        ...
