"""Checkpoint encryption format, signed manifests and keyless verification.

Exports resolve lazily (PEP 562), so that importing one light module (e.g. the error classes)
does not load the JOSE and storage stacks.
"""

from __future__ import annotations

from coco_ai._lazy import lazy_exports

_EXPORTS = {
    "encrypt_checkpoint": "checkpoint",
    "decrypt_checkpoint": "checkpoint",
    "encrypt_checkpoint_to_store": "checkpoint",
    "encrypt_blob": "stream",
    "decrypt_blob": "stream",
    "encrypt_stream": "stream",
    "decrypt_stream": "stream",
    "read_header": "stream",
    "Manifest": "manifest",
    "FileEntry": "manifest",
    "SignedManifest": "manifest",
    "sign_manifest": "manifest",
    "VerificationPolicy": "verify",
    "VerifiedCheckpoint": "verify",
    "verify_checkpoint": "transfer",
    "copy_checkpoint": "transfer",
    "upload_checkpoint": "transfer",
    "read_manifest": "transfer",
    "verify_objects": "transfer",
    "is_complete": "transfer",
    "verify_signed_manifest": "verify",
    "export_kserve_jwe": "kserve",
    "decrypt_kserve_jwe": "kserve",
    "export_checkpoint_file": "kserve",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
