"""Checkpoints in object stores: transfer (content-addressed, idempotent, resumable, manifest
last) and keyless verification at a location. Builds on `coco_ai.storage` (the stores) and on
the manifest and its signature verification (`coco_ai.crypto.manifest`, `.verify`).

A checkpoint is complete at a location exactly when `manifest.json` is there; it is written
after every object has been uploaded and re-read from the store with the right digest (each
entry's: BLAKE3-256 in manifest version 5, SHA-256 before), and
after the token and signature. A crash at any point before leaves no manifest: readers see an
incomplete checkpoint, and a retry of the same transfer skips verified objects, resumes the
interrupted one (S3 multipart parts or the local `.uploads/` prefix) and finishes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from coco_ai.crypto.errors import IncompleteCheckpointError, IntegrityError, ManifestError
from coco_ai.crypto.manifest import (
    MANIFEST_FILE,
    OBJECTS_DIR,
    PUBLIC_FILES,
    SIGNATURE_FILE,
    TOKEN_FILE,
    FileEntry,
    Manifest,
)
from coco_ai.crypto.verify import VerificationPolicy, VerifiedCheckpoint, verify_signed_manifest
from coco_ai.storage.errors import ObjectIntegrityError
from coco_ai.storage.hashing import HASH_NAMES
from coco_ai.storage.store import (
    OBJECT_SKIPPED,
    OBJECT_WRITTEN,
    ProgressCallback,
    ProgressEvent,
    Store,
    open_store,
)


def read_manifest(store: Store) -> tuple[Manifest, bytes]:
    """The parsed manifest and its exact bytes; IncompleteCheckpointError when absent."""
    if not store.exists(MANIFEST_FILE):
        raise IncompleteCheckpointError(
            f"no {MANIFEST_FILE} at {store.uri}: the checkpoint is absent or incomplete"
        )
    data = store.read_bytes(MANIFEST_FILE)
    return Manifest.from_bytes(data), data


def is_complete(uri: str, **storage_options: Any) -> bool:
    """True when a manifest is present (it still has to verify before anything is trusted)."""
    return open_store(uri, **storage_options).exists(MANIFEST_FILE)


def check_object_set(store: Store, manifest: Manifest) -> None:
    """Exactly the manifest's objects are present (no missing and no extra file)."""
    present = set(store.list(OBJECTS_DIR))
    wanted = {e.object_name: e.path for e in manifest.files}
    missing = sorted(wanted[o] for o in set(wanted) - present)
    if missing:
        raise IntegrityError(f"missing file(s) at {store.uri}: {missing}")
    extra = sorted(present - set(wanted))
    if extra:
        raise IntegrityError(f"extra file(s) not in the manifest at {store.uri}: {extra}")


def verify_objects(store: Store, manifest: Manifest, *, sha256s: bool = False) -> dict[str, str]:
    """Re-read every object and compare size and digest with the manifest (no key needed).

    With `sha256s` the same read also gives each object's ``sha256:<hex>`` (returned by object
    name, else {}): what model signing hashes, so promotion can require that the bytes it signs
    are the bytes verified here, whichever digest the manifest lists."""
    check_object_set(store, manifest)
    seen: dict[str, str] = {}
    for e in manifest.files:
        size = store.size(e.object_name)
        if size != e.ciphertext_size:
            raise IntegrityError(
                f"{e.path}: ciphertext is {size} bytes, manifest says {e.ciphertext_size}"
            )
        algorithm = e.ciphertext_algorithm
        digests = store.digests(
            e.object_name, tuple({algorithm, "sha256"} if sha256s else {algorithm})
        )
        if digests[algorithm] != e.ciphertext_digest:
            raise IntegrityError(
                f"{e.path}: ciphertext {HASH_NAMES[algorithm]} differs from the manifest"
            )
        if sha256s:
            seen[e.object_name] = "sha256:" + digests["sha256"]
    return seen


def _object_ok(store: Store, e: FileEntry) -> bool:
    name = e.object_name
    return (
        store.exists(name)
        and store.size(name) == e.ciphertext_size
        and store.digest(name, e.ciphertext_algorithm) == e.ciphertext_digest
    )


def copy_checkpoint(
    src_uri: str | os.PathLike,
    dst_uri: str | os.PathLike,
    *,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
    trust_anchor_pem: bytes | None = None,
    policy: VerificationPolicy | None = None,
    now: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Manifest:
    """Copy a complete checkpoint from `src_uri` to `dst_uri` without decrypting it.

    Source objects must match the manifest (hashed while read); each destination object is
    re-read and verified; token and signature follow; the manifest is written last. With
    `trust_anchor_pem` and `policy` (a VerificationPolicy) the signature and token are verified
    first, so an unattested checkpoint is never copied. Running it again is a no-op when the
    destination already holds this checkpoint, and finishes it when a try was interrupted.
    """
    src = open_store(str(src_uri), **dict(src_options or {}))
    dst = open_store(str(dst_uri), **dict(dst_options or {}))
    manifest, manifest_bytes = read_manifest(src)
    if trust_anchor_pem is not None or policy is not None:
        if trust_anchor_pem is None or policy is None:
            raise ValueError("signature verification needs both trust_anchor_pem and policy")
        verify_signed_manifest(
            manifest_bytes,
            src.read_bytes(SIGNATURE_FILE).decode() if src.exists(SIGNATURE_FILE) else None,
            src.read_bytes(TOKEN_FILE).decode() if src.exists(TOKEN_FILE) else None,
            trust_anchor_pem=trust_anchor_pem,
            policy=policy,
            now=now,
        )
    check_object_set(src, manifest)
    if dst.exists(MANIFEST_FILE):
        if dst.read_bytes(MANIFEST_FILE) != manifest_bytes:
            raise ManifestError(f"{dst.uri} already holds a different checkpoint")
        verify_objects(dst, manifest)
        return manifest
    for e in manifest.files:
        name = e.object_name
        if _object_ok(dst, e):
            if on_progress:
                on_progress(ProgressEvent(OBJECT_SKIPPED, name, 0, e.ciphertext_size))
            continue
        try:
            with src.open(name) as f:
                dst.put_stream(
                    name,
                    f,
                    e.ciphertext_size,
                    digest=e.ciphertext_digest,
                    algorithm=e.ciphertext_algorithm,
                    on_progress=on_progress,
                )
        except ObjectIntegrityError as exc:
            raise IntegrityError(f"{e.path}: {exc}") from None
        if dst.digest(name, e.ciphertext_algorithm) != e.ciphertext_digest:
            dst.delete(name)
            raise IntegrityError(f"{e.path}: the store returned other bytes than were uploaded")
        if on_progress:
            on_progress(ProgressEvent(OBJECT_WRITTEN, name, 0, e.ciphertext_size))
    for aux in PUBLIC_FILES:
        if src.exists(aux):
            dst.put_bytes(aux, src.read_bytes(aux))
    dst.put_bytes(MANIFEST_FILE, manifest_bytes)
    return manifest


def upload_checkpoint(
    src_dir: str | os.PathLike,
    dest_uri: str | os.PathLike,
    *,
    on_progress: ProgressCallback | None = None,
    **storage_options: Any,
) -> Manifest:
    """Upload a local checkpoint directory (from `encrypt_checkpoint`, maybe signed) to
    `dest_uri`; same guarantees as `copy_checkpoint`."""
    return copy_checkpoint(src_dir, dest_uri, dst_options=storage_options, on_progress=on_progress)


def verify_checkpoint(
    src: str | os.PathLike | Store,
    *,
    trust_anchor_pem: bytes,
    policy: VerificationPolicy,
    now: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> VerifiedCheckpoint:
    """Prove (a), (b), (c) and the replay check for the checkpoint at `src`, without a key."""
    store = src if isinstance(src, Store) else open_store(str(src), **dict(storage_options or {}))
    _, manifest_bytes = read_manifest(store)
    signature = store.read_bytes(SIGNATURE_FILE).decode() if store.exists(SIGNATURE_FILE) else None
    token = store.read_bytes(TOKEN_FILE).decode() if store.exists(TOKEN_FILE) else None
    manifest, claims, signer = verify_signed_manifest(
        manifest_bytes,
        signature,
        token,
        trust_anchor_pem=trust_anchor_pem,
        policy=policy,
        now=now,
    )
    verify_objects(store, manifest)
    return VerifiedCheckpoint(
        manifest=manifest,
        manifest_digest=manifest.digest(),
        claims=claims,
        signer_jwk=signer,
        location=store.uri,
    )
