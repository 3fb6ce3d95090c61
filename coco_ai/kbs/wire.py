"""Wire primitives of the KBS protocol 0.4.0 (pure functions, no I/O).

The evidence binding follows Trustee byte for byte: SHA-384 over RFC 8785 (JCS) canonical
JSON of the runtime data (`kbs/src/attestation/backend.rs`, guest `rcar_client.rs`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import rfc8785

# Resource paths are re-exported here: they are part of the wire vocabulary, but live in a
# standard-library-only module so that configuration code inside the TEE can validate URIs.
from coco_ai.kbs.resource_path import (  # noqa: F401
    RESOURCE_URI_SCHEMES,
    ResourcePath,
    parse_resource_path,
    parse_resource_uri,
    to_resource_path,
    validate_segment,
)

PROTOCOL_VERSION = "0.4.0"

# Trustee main's provisioner plugin: a guest may fetch `default/<uuid>/root` only when its
# initdata claims bind this key to `kbs+provisioner:///default/<uuid>/root`
# (kbs/src/plugins/implementations/provisioner/mod.rs handle_get_resource).
PROVISIONER_INITDATA_KEY = "trustee.kbs.resource"


def provisioner_binding(resource_path: str) -> str:
    """The `trustee.kbs.resource` initdata value that unlocks a provisioner resource."""
    return f"kbs+provisioner:///{resource_path}"


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of `obj` (what Trustee hashes)."""
    return rfc8785.dumps(obj)


def cpu_runtime_data_digest(nonce: str, tee_pubkey: dict, additional_evidence: str) -> bytes:
    """48-byte SHA-384 bound into the primary (CPU) evidence.

    `additional_evidence` is the exact string sent in `tee-evidence.additional_evidence`
    ("" when there are no devices); the key is present even when empty.
    """
    if not isinstance(additional_evidence, str):
        raise TypeError("additional_evidence must be the JSON string as sent ('' for none)")
    return hashlib.sha384(
        canonical_json(
            {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": tee_pubkey}
        )
    ).digest()


def device_runtime_data_digest(nonce: str, tee_pubkey: dict) -> bytes:
    """48-byte SHA-384 bound into every additional (device) evidence."""
    return hashlib.sha384(canonical_json({"nonce": nonce, "tee-pubkey": tee_pubkey})).digest()


def b64url_encode(data: bytes) -> str:
    """base64url without padding (JOSE, Trustee policy uploads)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of b64url_encode: no padding, no characters outside the alphabet."""
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not unpadded base64url") from None
