"""Errors of the checkpoint format, one class per way a checkpoint can be wrong.

Messages name what failed (file path, segment index, field) and never carry key material.
"""

from __future__ import annotations

from coco_ai.storage.errors import ObjectIntegrityError


class CheckpointError(Exception):
    """Base class: the checkpoint or blob must not be used."""


class FormatError(CheckpointError):
    """Bytes that are not a well-formed encrypted file of a supported version."""


class HeaderError(FormatError):
    """The file header is malformed or its authentication tag does not verify."""


class KeyUnwrapError(CheckpointError):
    """The wrapped data key did not unwrap: wrong key-encryption key or corrupted wrapped key."""


class SegmentAuthError(CheckpointError):
    """A segment failed authentication (tampered, reordered or spliced from another file)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class TruncatedError(CheckpointError):
    """The ciphertext ends before its final segment."""


class TrailingDataError(CheckpointError):
    """Bytes follow the final segment (the file was extended)."""


class ContextMismatchError(CheckpointError):
    """An authentic file bound to another context (run, checkpoint, path or key) than expected."""


class IntegrityError(CheckpointError, ObjectIntegrityError):
    """Ciphertext or plaintext does not match the manifest (digest, size, missing or extra file)."""


class ManifestError(CheckpointError):
    """The manifest is malformed, not canonical, or absent (checkpoint incomplete)."""


class IncompleteCheckpointError(ManifestError):
    """No manifest at the location: the checkpoint was never completed there."""


class SignatureError(CheckpointError):
    """The manifest signature is missing, invalid, or not made by the attested TEE key."""


class AttestationError(CheckpointError):
    """The token is not genuine, was not valid when the manifest was made, or fails policy."""


class ReplayError(AttestationError):
    """The checkpoint belongs to another run than the one being verified."""
