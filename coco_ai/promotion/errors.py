"""Errors of the promotion area. Messages name what failed and never carry key material."""

from __future__ import annotations


class PromotionRefused(Exception):
    """The checkpoint must not be promoted; `reasons` lists every check that failed."""

    def __init__(self, reasons: list[str]) -> None:
        if not reasons:
            reasons = ["promotion refused for an unspecified reason"]
        self.reasons = list(reasons)
        super().__init__("promotion refused: " + "; ".join(self.reasons))


class SignatureInvalid(Exception):
    """A model signature is missing, malformed, made by another key, or does not match the files."""


class RegistryError(Exception):
    """The model registry refused an operation or holds inconsistent promotion records."""
