"""Errors of the object stores (the storage layer knows nothing of checkpoints or keys)."""

from __future__ import annotations


class ObjectIntegrityError(Exception):
    """Bytes streamed into or read from a store are not the expected ones (digest or length)."""
