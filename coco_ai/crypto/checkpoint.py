"""Encrypt a checkpoint directory into the checkpoint layout, and decrypt it back.

Both directions stage into a hidden sibling directory and rename it into place only when every
file succeeded, so a failure (bad input, wrong key, tampering, crash) leaves nothing behind.
`encrypt_checkpoint_to_store` encrypts straight into a store (S3 multipart parts sent while later
segments are encrypted); there every object appears only complete and verified, and the
manifest, written last, is the commit point.

New checkpoints have manifest version 5 over files of format 2: each entry lists the file's
ciphertext size and BLAKE3-256 (what keyless verification and content addressing use; hashed
in its own thread while AES-GCM seals the next segment) and its header SHA-256 (what decryption
checks: the segments are bound to the header and authenticated under its committed key, so the
whole ciphertext is not hashed again). Versions 3 and 4 (ciphertext SHA-256) decrypt the same
way; version 1 (plaintext SHA-256s) and version 2 checkpoints still verify and decrypt, hashing
the ciphertext as before.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO

from coco_ai.crypto.errors import IntegrityError
from coco_ai.crypto.manifest import (
    CIPHERTEXT_ALGORITHM_OF_MANIFEST,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    OBJECTS_DIR,
    FileEntry,
    Manifest,
    file_context,
    validate_id,
    validate_relpath,
)
from coco_ai.crypto.stream import (
    DEFAULT_SEGMENT_SIZE,
    decrypt_stream,
    encrypt_stream,
    encrypt_to_writer,
)
from coco_ai.crypto.transfer import check_object_set, read_manifest
from coco_ai.storage import open_store
from coco_ai.storage.store import ProgressCallback

#: the keyless ciphertext digest of what is written now
CIPHERTEXT_ALGORITHM = CIPHERTEXT_ALGORITHM_OF_MANIFEST[MANIFEST_VERSION]

# Files processed at once where each is hashed. One file's digest is one sequential stream, the
# slowest stage of its pipeline: a second file is what puts the second core to work on a sharded
# model. Without a hash (decrypting manifest version 3 or later) a file's cipher and writer threads
# already fill two cores, and a second file only adds contention (measured: more CPU, no gain).
FILE_WORKERS = 2


def _for_each(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int = FILE_WORKERS
) -> list[Any]:
    """`fn` over `items`, `workers` at a time; results in order. On the first error the files
    not started are cancelled, the running ones finish, and the error is raised."""
    if workers == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="coco-ai-file") as pool:
        futures = [pool.submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()
        return [f.result() for f in futures]


def _largest_first(root: Path, files: list[str]) -> list[str]:
    """Big shards start first, so the two workers finish together."""
    return sorted(files, key=lambda rel: -(root / rel).stat().st_size)


def _source_files(src: Path) -> list[str]:
    if not src.is_dir():
        raise FileNotFoundError(f"checkpoint source {src} is not a directory")
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in [*names, *[d for d in dirs if (Path(root) / d).is_symlink()]]:
            path = Path(root) / name
            rel = path.relative_to(src).as_posix()
            if path.is_symlink() or not path.is_file():
                raise ValueError(f"checkpoint source entry {rel!r} is not a regular file")
            files.append(validate_relpath(rel))
    if not files:
        raise ValueError(f"checkpoint source {src} holds no files")
    return sorted(files)


def _staging_for(dst: Path) -> Path:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"destination {dst} exists and is not an empty directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _commit(staging: Path, dst: Path) -> None:
    if dst.exists():
        dst.rmdir()  # empty, checked by _staging_for
    os.rename(staging, dst)


def encrypt_checkpoint(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    kek: bytes,
    key_uri: str,
    run_id: str,
    meta: Mapping[str, Any],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    now: float | None = None,
) -> Manifest:
    """Encrypt every file of `src_dir` into `dst_dir` (objects/ + manifest.json, unsigned).

    Each file gets a fresh data key wrapped by `kek` (the key at `key_uri`) and is bound to
    (run id, checkpoint id, path). `meta` may hold base_model_digest, dataset_digest,
    training_config_digest, metrics, checkpoint_id, created_at.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    validate_id(run_id, "run id")
    checkpoint_id = validate_id(meta.get("checkpoint_id") or uuid.uuid4().hex, "checkpoint id")
    files = _source_files(src)
    staging = _staging_for(dst)
    try:
        (staging / OBJECTS_DIR).mkdir()

        def encrypt_one(rel: str) -> FileEntry:
            tmp = staging / OBJECTS_DIR / f".encrypting-{uuid.uuid4().hex}"
            with open(src / rel, "rb") as f, open(tmp, "wb") as out:
                r = encrypt_stream(
                    f,
                    out,
                    kek=kek,
                    key_uri=key_uri,
                    context=file_context(run_id, checkpoint_id, rel),
                    segment_size=segment_size,
                    plaintext_digest=False,
                    ciphertext_algorithm=CIPHERTEXT_ALGORITHM,
                )
            os.rename(tmp, staging / OBJECTS_DIR / r.ciphertext_digest)
            return _entry(rel, r, segment_size)

        entries = _for_each(encrypt_one, _largest_first(src, files))
        manifest = _manifest(run_id, key_uri, entries, meta, checkpoint_id, now)
        (staging / MANIFEST_FILE).write_bytes(manifest.canonical_bytes())
        _commit(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _entry(rel: str, r: Any, segment_size: int) -> FileEntry:
    """The manifest entry (version 5) of a file `encrypt_stream`/`encrypt_to_writer` wrote."""
    assert r.ciphertext_algorithm == CIPHERTEXT_ALGORITHM
    return FileEntry(
        path=rel,
        size=r.plaintext_size,
        sha256=None,
        ciphertext_size=r.ciphertext_size,
        ciphertext_sha256=None,
        segment_size=segment_size,
        header_sha256=r.header_sha256,
        ciphertext_blake3=r.ciphertext_digest,
    )


def _manifest(
    run_id: str,
    key_uri: str,
    entries: list[FileEntry],
    meta: Mapping[str, Any],
    checkpoint_id: str,
    now: float | None,
) -> Manifest:
    return Manifest.build(
        run_id=run_id,
        key_uri=key_uri,
        files=entries,
        meta={**meta, "checkpoint_id": checkpoint_id},
        created_at=int(time.time() if now is None else now),
    )


def encrypt_checkpoint_to_store(
    src_dir: str | os.PathLike,
    dest_uri: str | os.PathLike,
    *,
    kek: bytes,
    key_uri: str,
    run_id: str,
    meta: Mapping[str, Any],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    now: float | None = None,
    write_manifest: bool = True,
    on_progress: ProgressCallback | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Encrypt every file of `src_dir` straight into the store at `dest_uri` (no local copy of
    the ciphertext); same files, keys and bindings as `encrypt_checkpoint`.

    Each object is committed only complete and with the BLAKE3 digest it is named by (see
    `encrypt_to_writer`); with `write_manifest` the unsigned manifest follows, last. A signing
    workload passes `write_manifest=False`, then `sign_manifest(manifest, key, token,
    dst_dir=dest_uri)` writes token, signature and manifest (manifest last). A failed try leaves
    no manifest (the checkpoint reads as incomplete); a retry encrypts afresh (new data keys)
    and first deletes the objects an earlier try left there: no manifest references them, and a
    checkpoint must hold exactly its manifest's objects.
    """
    src = Path(src_dir)
    validate_id(run_id, "run id")
    checkpoint_id = validate_id(meta.get("checkpoint_id") or uuid.uuid4().hex, "checkpoint id")
    files = _source_files(src)
    store = open_store(str(dest_uri), **dict(storage_options or {}))
    if store.exists(MANIFEST_FILE):
        raise FileExistsError(f"{store.uri} already holds a checkpoint")
    for name in store.list(OBJECTS_DIR):  # left by a failed try: unreferenced, never trusted
        store.delete(name)

    def encrypt_one(rel: str) -> FileEntry:
        with open(src / rel, "rb") as f:
            r = encrypt_to_writer(
                f,
                # verified by encrypt_to_writer (segment tags of both passes), not hashed again
                lambda size, digest: store.open_writer(
                    f"{OBJECTS_DIR}/{digest}",
                    size,
                    digest=digest,
                    algorithm=CIPHERTEXT_ALGORITHM,
                    on_progress=on_progress,
                    hash_check=False,
                ),
                kek=kek,
                key_uri=key_uri,
                context=file_context(run_id, checkpoint_id, rel),
                segment_size=segment_size,
                ciphertext_algorithm=CIPHERTEXT_ALGORITHM,
            )
        return _entry(rel, r, segment_size)

    # One file at a time: an upload holds two parts besides its segments, two would pass the
    # memory bound, and the network, not the CPU, is the limit here.
    entries = _for_each(encrypt_one, files, workers=1)
    manifest = _manifest(run_id, key_uri, entries, meta, checkpoint_id, now)
    if write_manifest:
        store.put_bytes(MANIFEST_FILE, manifest.canonical_bytes())
    return manifest


def decrypt_entry(
    src: BinaryIO, dst: BinaryIO, manifest: Manifest, entry: FileEntry, *, kek: bytes
):
    """Decrypt the object of `entry` from `src` to `dst` and check it against the manifest:
    authenticated, bound to this run, checkpoint and path, of the manifest's file format
    version, sizes as listed; from manifest version 3 on the header SHA-256 as listed (checked
    first; every segment is bound to that header and authenticated under its committed key),
    in versions 1 and 2 the ciphertext SHA-256 (and the plaintext SHA-256 in version 1)."""
    by_header = entry.header_sha256 is not None
    r = decrypt_stream(
        src,
        dst,
        kek=kek,
        expected_context=manifest.file_context(entry.path),
        expected_key_uri=manifest.key_uri,
        digests=not by_header,
        plaintext_digest=entry.sha256 is not None,
        expected_version=manifest.file_format_version,
        expected_header_sha256=entry.header_sha256,
        ciphertext_algorithm=entry.ciphertext_algorithm,
    )
    got = (r.plaintext_size, r.ciphertext_size, r.plaintext_sha256 or None)
    want = (entry.size, entry.ciphertext_size, entry.sha256)
    if not by_header:
        got, want = (*got, r.ciphertext_digest), (*want, entry.ciphertext_digest)
    if got != want:
        raise IntegrityError(f"{entry.path}: sizes or digests differ from the manifest")
    return r


def decrypt_checkpoint(
    src: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    kek: bytes,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Decrypt the checkpoint at `src` (directory or store URI) into `dst_dir`.

    Every file must be listed, bound to its manifest path/run/checkpoint, authentic under `kek`
    and match its manifest digests; otherwise nothing is written. This does not check who
    signed the manifest: use `verify_checkpoint` for that before trusting its metadata.
    """
    store = open_store(str(src), **dict(storage_options or {}))
    manifest, _ = read_manifest(store)
    check_object_set(store, manifest)
    dst = Path(dst_dir)
    staging = _staging_for(dst)
    try:
        for entry in manifest.files:
            (staging / entry.path).parent.mkdir(parents=True, exist_ok=True)

        def decrypt_one(entry: FileEntry) -> None:
            with store.open(entry.object_name) as f, open(staging / entry.path, "wb") as out:
                decrypt_entry(f, out, manifest, entry, kek=kek)

        hashed = any(e.header_sha256 is None for e in manifest.files)
        _for_each(
            decrypt_one,
            sorted(manifest.files, key=lambda e: -e.size),
            workers=FILE_WORKERS if hashed else 1,
        )
        _commit(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
