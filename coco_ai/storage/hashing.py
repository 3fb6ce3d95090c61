"""The keyless content digests objects are named and verified by: one constructor for all.

SHA-256 names the objects of checkpoint manifests versions 1-4 (and every ``sha256:`` digest
elsewhere); BLAKE3-256 those of manifest version 5, because it runs at two to four times
SHA-256's speed per core, fast enough to hash a checkpoint beside AES-GCM on another core
(docs/formats/checkpoint.md §4). Both are 32 bytes (64 hex digits).
"""

from __future__ import annotations

import hashlib
from typing import Any

import blake3

#: the algorithms `new_hash` knows, with the names errors give them
HASH_NAMES = {"sha256": "SHA-256", "blake3": "BLAKE3"}
HASH_ALGORITHMS = tuple(HASH_NAMES)


def new_hash(algorithm: str, *, threads: bool = False) -> Any:
    """A fresh hash object (``update``, ``hexdigest``) of `algorithm`.

    `threads`: BLAKE3 may hash one large update on several cores (its tree allows it); for a
    re-read with nothing else to do. The encrypt pipeline leaves it off: the cipher has the
    other core. SHA-256 is one sequential chain either way."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO if threads else 1)
    raise ValueError(
        f"unknown digest algorithm {algorithm!r} (known: {', '.join(HASH_ALGORITHMS)})"
    )
