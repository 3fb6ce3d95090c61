"""Serving export: a small file as a compact JWE for KServe's confidential storage initializer.

KServe (kserve/kserve#5382, v0.20) detects JWE-encrypted model files (`alg` A256KW, `enc`
A256GCM) and fetches the AES key from the confidential data hub at a `kbs:///repo/type/tag` URI
inside the TEE. JWE is one-shot (the whole file in memory on both sides), so this export is
for adapters and other small files only; the streaming checkpoint format stays the storage
format. The export must run where the keys are (inside a TEE, or by the data owner): it
decrypts the authenticated checkpoint file and re-encrypts it under the *serving* key, which
outlives the run's per-run checkpoint key (revoked when the run ends).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from jwcrypto import jwe, jwk
from jwcrypto.common import JWException, base64url_encode

from coco_ai.crypto.errors import CheckpointError, IntegrityError
from coco_ai.crypto.stream import KEY_SIZE
from coco_ai.kbs.wire import parse_resource_uri

JWE_ALG = "A256KW"
JWE_ENC = "A256GCM"
MAX_EXPORT_SIZE = 512 * 1024 * 1024


def _oct_key(kek: bytes) -> jwk.JWK:
    if not isinstance(kek, bytes | bytearray) or len(kek) != KEY_SIZE:
        raise ValueError("serving key must be exactly 32 bytes (A256KW)")
    return jwk.JWK(kty="oct", k=base64url_encode(bytes(kek)))


def export_kserve_jwe(plaintext: bytes, *, kek: bytes, key_uri: str) -> str:
    """Compact JWE (A256KW + A256GCM, `kid` = the key's kbs:/// URI) of `plaintext`."""
    parse_resource_uri(key_uri)
    if len(plaintext) > MAX_EXPORT_SIZE:
        raise ValueError(f"JWE export is for small files (at most {MAX_EXPORT_SIZE} bytes)")
    token = jwe.JWE(plaintext, protected={"alg": JWE_ALG, "enc": JWE_ENC, "kid": key_uri})
    token.add_recipient(_oct_key(kek))
    return token.serialize(compact=True)


def decrypt_kserve_jwe(token: str, *, kek: bytes) -> bytes:
    """What the storage initializer does with the key it got from the CDH."""
    try:
        obj = jwe.JWE()
        obj.allowed_algs = [JWE_ALG, JWE_ENC]
        obj.deserialize(token, key=_oct_key(kek))
    except (JWException, ValueError) as exc:
        raise CheckpointError(f"JWE did not decrypt: {type(exc).__name__}") from None
    return obj.payload


def export_checkpoint_file(
    src: str | os.PathLike,
    path: str,
    *,
    kek: bytes,
    serving_kek: bytes,
    serving_key_uri: str,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Decrypt `path` of the checkpoint at `src` (authenticated, digests checked) and return it
    as a KServe JWE under the serving key."""
    from coco_ai.crypto.checkpoint import decrypt_entry
    from coco_ai.crypto.transfer import read_manifest
    from coco_ai.storage import open_store

    store = open_store(str(src), **dict(storage_options or {}))
    manifest, _ = read_manifest(store)
    entry = next((e for e in manifest.files if e.path == path), None)
    if entry is None:
        raise IntegrityError(f"{path!r} is not in the checkpoint manifest")
    if entry.size > MAX_EXPORT_SIZE:
        raise ValueError(f"{path} is {entry.size} bytes; JWE export is for small files")
    out = io.BytesIO()
    with store.open(entry.object_name) as f:
        decrypt_entry(f, out, manifest, entry, kek=kek)
    return export_kserve_jwe(out.getvalue(), kek=serving_kek, key_uri=serving_key_uri)
