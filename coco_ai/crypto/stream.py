"""Streaming segmented AEAD: the byte format of every encrypted checkpoint file and data-set blob.

Layout (all integers big-endian; byte-exact spec in docs/formats/checkpoint.md):

    header  = MAGIC "COCOAI" | version u8 (=2) | suite u8 (=1) | segment_size u32
              | plaintext_size u64 | nonce_prefix 7B | wrapped_key 40B (AES-KW of the data key)
              | key_commitment 32B (version 2 only) | key_uri_len u16 | key_uri
              | context_len u32 | context (RFC 8785 JSON) | header_tag 16B
    segments: N = max(1, ceil(plaintext_size / segment_size)); segment i is
              AES-256-GCM(data_key, nonce_prefix | u32 i | u8 final, plaintext_i,
                          aad = SHA-256(header) | u32 i | u8 final)  -> ciphertext_i | tag_i

The construction is the STREAM scheme (Hoang et al. 2015) as Tink's AES-GCM-HKDF streaming AEAD
uses it: the segment index and the final flag in each nonce make reordering, truncation and
extension fail authentication; the header digest in each AAD binds every segment to this file's
fresh data key, key URI and context (run, checkpoint, path), so segments or whole files spliced
from elsewhere fail too. The header tag (GCM over the header, with a nonce no segment can use)
authenticates the header itself before any segment is read. Version 2 adds a key commitment
(HMAC-SHA256 of a fixed label under the data key), checked before anything is decrypted: GCM alone
does not commit to its key, the commitment makes the ciphertext bytes identify the plaintext, so
the signed ciphertext digest in the manifest (BLAKE3-256 from manifest version 5, SHA-256 before)
is the file's identity and no plaintext digest is needed (docs/formats/checkpoint.md §2). Readers
accept versions 1 and 2; writers write 2.

Throughput: AES-GCM runs in the calling thread; hashing and writing each run in their own thread
on the segments already sealed (`_Pipeline`), so with SHA-256 and the disk on other cores the
file moves at the speed of its slowest stage instead of the sum of all of them: AES-GCM of
segment i+1 overlaps the hashing of segment i. The primitives
(`cryptography`'s AEAD, `hashlib`, `blake3`, file writes) release the GIL.

Memory is constant: a few preallocated output buffers of one segment each (`_slot_count`), reused
with `AESGCM.encrypt_into` / `decrypt_into`; input comes from a read-only map of the file (no copy)
or through one reused buffer, allocated only for streams that cannot be mapped
(`coco_ai.storage.views`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import queue
import struct
import threading
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from coco_ai.crypto.errors import (
    ContextMismatchError,
    HeaderError,
    IntegrityError,
    KeyUnwrapError,
    SegmentAuthError,
    TrailingDataError,
    TruncatedError,
)
from coco_ai.kbs.wire import canonical_json, parse_resource_uri
from coco_ai.storage.hashing import new_hash
from coco_ai.storage.views import read_views

MAGIC = b"COCOAI"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SUITE_AES256GCM_AESKW = 1
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
DEFAULT_SEGMENT_SIZE = 4 * 1024 * 1024
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
MAX_KEY_URI_SIZE = 1024
MAX_CONTEXT_SIZE = 64 * 1024
# Segment indices are u32; 0xFFFFFFFF with flag 2 is the header tag's nonce, never a segment's.
_HEADER_TAG_INDEX = 0xFFFFFFFF
_HEADER_TAG_FLAG = 2
_MAX_SEGMENTS = _HEADER_TAG_INDEX

_START = struct.Struct(">6sBB")  # magic, version, suite
# after them, per version, up to key_uri_len (40 = AES-KW of a 32-byte key, 32 = commitment)
_REST = {1: struct.Struct(">IQ7s40sH"), 2: struct.Struct(">IQ7s40s32sH")}
_SEG = struct.Struct(">IB")
_COMMIT_LABEL = b"coco-ai/checkpoint-file/v2 key commitment"
COMMITMENT_SIZE = 32
# Segments in flight per stream: one being sealed while earlier ones are hashed and written.
# Bounded in bytes (two 4 MiB segments: double buffering is enough when the stages run at a
# steady rate, and two files may stream at once), more slots only for small segments.
_MAX_SLOTS = 8
_SLOT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileHeader:
    """A parsed header. Reading it needs no key; trusting it needs the header tag verified."""

    version: int
    suite: int
    segment_size: int
    plaintext_size: int
    nonce_prefix: bytes
    wrapped_key: bytes
    key_uri: str
    context: dict[str, Any]
    raw: bytes  # the header bytes as stored, tag included
    key_commitment: bytes = b""  # version 2; empty in version 1

    def __repr__(self) -> str:  # the wrapped key is not secret, but keeps reprs short
        return (
            f"FileHeader(version={self.version}, segment_size={self.segment_size}, "
            f"plaintext_size={self.plaintext_size}, key_uri={self.key_uri!r}, "
            f"context={self.context!r})"
        )

    @property
    def segment_count(self) -> int:
        return segment_count(self.plaintext_size, self.segment_size)

    @property
    def ciphertext_size(self) -> int:
        return len(self.raw) + self.plaintext_size + TAG_SIZE * self.segment_count


@dataclass(frozen=True)
class StreamResult:
    """Sizes and digests (hex) of what was streamed: the plaintext's SHA-256, the ciphertext's
    (header included) in `ciphertext_algorithm`; a digest is empty when it was not computed
    (`digests=False`, or `plaintext_digest=False` for the plaintext one). The header's SHA-256
    costs nothing (every segment's AAD holds it) and is always there."""

    plaintext_size: int
    ciphertext_size: int
    plaintext_sha256: str
    ciphertext_digest: str
    header_sha256: str = ""
    ciphertext_algorithm: str = "blake3"


def segment_count(plaintext_size: int, segment_size: int) -> int:
    return max(1, -(-plaintext_size // segment_size))


def _check_kek(kek: bytes) -> None:
    if not isinstance(kek, bytes | bytearray) or len(kek) != KEY_SIZE:
        raise ValueError("key-encryption key must be exactly 32 bytes (AES-256)")


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"segment size {segment_size} outside [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]"
        )


def _segment_nonce_aad(prefix: bytes, header_digest: bytes, index: int, final: bool) -> tuple:
    tail = _SEG.pack(index, 1 if final else 0)
    return prefix + tail, header_digest + tail


def _header_tag_nonce(prefix: bytes) -> bytes:
    return prefix + _SEG.pack(_HEADER_TAG_INDEX, _HEADER_TAG_FLAG)


def key_commitment(data_key: bytes) -> bytes:
    """The version-2 header's commitment to its data key: HMAC-SHA256(data key, fixed label).

    GCM is not key-committing (another key can open the same ciphertext to other bytes with
    valid tags); a reader that checks this value before decrypting accepts exactly one data key
    per header, so the ciphertext bytes determine the plaintext."""
    return hmac.digest(data_key, _COMMIT_LABEL, "sha256")


def _build_header(
    aead: AESGCM,
    *,
    segment_size: int,
    plaintext_size: int,
    nonce_prefix: bytes,
    wrapped_key: bytes,
    commitment: bytes,
    key_uri: str,
    context_bytes: bytes,
) -> bytes:
    uri = key_uri.encode()
    body = (
        _START.pack(MAGIC, FORMAT_VERSION, SUITE_AES256GCM_AESKW)
        + _REST[FORMAT_VERSION].pack(
            segment_size, plaintext_size, nonce_prefix, wrapped_key, commitment, len(uri)
        )
        + uri
        + struct.pack(">I", len(context_bytes))
        + context_bytes
    )
    return body + aead.encrypt(_header_tag_nonce(nonce_prefix), b"", body)


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise HeaderError(f"header truncated while reading {what}")
    return data


def read_header(src: BinaryIO) -> FileHeader:
    """Parse the header at the current position of `src` (no key needed, nothing trusted yet)."""
    start = _read_exact(src, _START.size, "magic and version")
    magic, version, suite = _START.unpack(start)
    if magic != MAGIC:
        raise HeaderError("not a CoCo AI encrypted file (bad magic)")
    if version not in READABLE_VERSIONS:
        raise HeaderError(f"unsupported format version {version} (this reader knows 1 and 2)")
    if suite != SUITE_AES256GCM_AESKW:
        raise HeaderError(f"unsupported cipher suite {suite}")
    rest = _read_exact(src, _REST[version].size, "fixed fields")
    fields = _REST[version].unpack(rest)
    if version == 1:
        seg, size, prefix, wrapped, uri_len = fields
        commitment = b""
    else:
        seg, size, prefix, wrapped, commitment, uri_len = fields
    if not MIN_SEGMENT_SIZE <= seg <= MAX_SEGMENT_SIZE:
        raise HeaderError(f"segment size {seg} out of range")
    if segment_count(size, seg) > _MAX_SEGMENTS:
        raise HeaderError("plaintext size needs more segments than the format allows")
    if uri_len > MAX_KEY_URI_SIZE:
        raise HeaderError("key URI length out of range")
    uri_b = _read_exact(src, uri_len, "key URI")
    (ctx_len,) = struct.unpack(">I", _read_exact(src, 4, "context length"))
    if ctx_len > MAX_CONTEXT_SIZE:
        raise HeaderError("context length out of range")
    ctx_b = _read_exact(src, ctx_len, "context")
    tag = _read_exact(src, TAG_SIZE, "header tag")
    try:
        key_uri = uri_b.decode()
        parse_resource_uri(key_uri)
        context = json.loads(ctx_b)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"header field unreadable: {exc}") from None
    if not isinstance(context, dict) or canonical_json(context) != ctx_b:
        raise HeaderError("header context is not a canonical JSON object")
    return FileHeader(
        version=version,
        suite=suite,
        segment_size=seg,
        plaintext_size=size,
        nonce_prefix=prefix,
        wrapped_key=wrapped,
        key_uri=key_uri,
        context=context,
        raw=start + rest + uri_b + struct.pack(">I", ctx_len) + ctx_b + tag,
        key_commitment=commitment,
    )


def _stream_size(src: BinaryIO) -> int:
    """Bytes left in `src` from its current position."""
    pos = src.tell()
    end = src.seek(0, io.SEEK_END)
    src.seek(pos)
    return end - pos


def _new_file(
    kek: bytes, key_uri: str, context: Mapping[str, Any], segment_size: int, plaintext_size: int
) -> tuple[AESGCM, bytes, bytes]:
    """A fresh data key (wrapped by `kek`), nonce prefix and authenticated header."""
    _check_kek(kek)
    _check_segment_size(segment_size)
    parse_resource_uri(key_uri)
    if segment_count(plaintext_size, segment_size) > _MAX_SEGMENTS:
        raise ValueError("input too large for this segment size")
    ctx_bytes = canonical_json(dict(context))
    if len(ctx_bytes) > MAX_CONTEXT_SIZE:
        raise ValueError("context too large")
    data_key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(data_key)
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    header = _build_header(
        aead,
        segment_size=segment_size,
        plaintext_size=plaintext_size,
        nonce_prefix=prefix,
        wrapped_key=aes_key_wrap(bytes(kek), data_key),
        commitment=key_commitment(data_key),
        key_uri=key_uri,
        context_bytes=ctx_bytes,
    )
    del data_key
    return aead, prefix, header


# A consumer of one segment: (input view, output view) -> None. It must not keep the views.
Consumer = Callable[[memoryview, memoryview], None]


def _slot_count(segment_size: int) -> int:
    return max(2, min(_MAX_SLOTS, _SLOT_BYTES // (segment_size + TAG_SIZE)))


class _Pipeline:
    """Runs each consumer in its own thread over the segments submitted, in order.

    Segment k lives in slot k % n (its input view and output buffer); the producer `claim`s a
    slot before refilling its buffers, and a slot is free again once every consumer is done
    with it. The first consumer error is raised at the next `claim` or at `close`; after it the
    consumers skip the remaining segments."""

    def __init__(self, consumers: list[Consumer], slots: int) -> None:
        self._n = slots
        self._free = [threading.Semaphore(1) for _ in range(slots)]
        self._pending = [0] * slots
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in consumers]
        self._threads = [
            threading.Thread(target=self._run, args=(fn, q), name="coco-ai-stream", daemon=True)
            for fn, q in zip(consumers, self._queues, strict=True)
        ]
        for t in self._threads:
            t.start()

    def _run(self, fn: Consumer, q: queue.SimpleQueue) -> None:
        while (item := q.get()) is not None:
            k, data, out = item
            if self._error is None:
                try:
                    fn(data, out)
                except BaseException as exc:  # handed to the producer's thread
                    self._error = self._error or exc
            del data, out, item
            with self._lock:
                self._pending[k % self._n] -= 1
                free = self._pending[k % self._n] == 0
            if free:
                self._free[k % self._n].release()

    def claim(self, k: int) -> None:
        self._free[k % self._n].acquire()
        if self._error is not None:
            raise self._error

    def submit(self, k: int, data: memoryview, out: memoryview) -> None:
        self._pending[k % self._n] = len(self._queues)
        for q in self._queues:
            q.put((k, data, out))

    def close(self, *, failed: bool = False) -> None:
        """Wait for every consumer to finish; raise the first consumer error unless `failed`
        (the producer is already raising its own)."""
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        if self._error is not None and not failed:
            raise self._error


class _Inline:
    """The same interface without threads, for single-segment files (no overlap to gain)."""

    def __init__(self, consumers: list[Consumer]) -> None:
        self._consumers = consumers

    def claim(self, k: int) -> None:
        pass

    def submit(self, k: int, data: memoryview, out: memoryview) -> None:
        for fn in self._consumers:
            fn(data, out)

    def close(self, *, failed: bool = False) -> None:
        pass


def _pipeline(consumers: list[Consumer], count: int, slots: int) -> _Pipeline | _Inline:
    return _Pipeline(consumers, slots) if count > 1 else _Inline(consumers)


def _writer(dst: BinaryIO) -> Consumer:
    def write(_data: memoryview, out: memoryview) -> None:
        dst.write(out)

    return write


def _hasher(h: Any, *, of_output: bool) -> Consumer:
    if of_output:
        return lambda _data, out: h.update(out)

    def of_input(data: memoryview, _out: memoryview) -> None:
        h.update(data)

    of_input.reads_input = True  # type: ignore[attr-defined]
    return of_input


def _input_ring(consumers: list[Consumer], slots: int) -> int:
    """Input views that must stay valid at once: all slots when a consumer reads the input
    (it may lag behind the cipher), else only the one being sealed (less memory)."""
    return slots if any(getattr(c, "reads_input", False) for c in consumers) else 1


def _seal_segments(
    src: BinaryIO,
    aead: AESGCM,
    prefix: bytes,
    header: bytes,
    plaintext_size: int,
    segment_size: int,
    consumers: list[Consumer],
    *,
    slots: int | None = None,
) -> None:
    """Encrypt the segments of `src` in this thread; each consumer gets every (plaintext view,
    sealed segment) in order, in its own thread. Deterministic for a given key and prefix.
    `slots`: segments in flight (default by segment size)."""
    header_digest = hashlib.sha256(header).digest()
    count = segment_count(plaintext_size, segment_size)
    slots = slots or _slot_count(segment_size)
    outbufs = [memoryview(bytearray(segment_size + TAG_SIZE)) for _ in range(min(slots, count))]
    lengths = [min(segment_size, plaintext_size - i * segment_size) for i in range(count)]
    pipe = _pipeline(consumers, count, slots)
    try:
        ring = _input_ring(consumers, slots)
        with closing(read_views(src, iter(lengths), segment_size, ring=ring)) as views:
            for index, want in enumerate(lengths):
                pipe.claim(index)
                chunk = next(views)
                if len(chunk) != want:
                    raise ValueError("input ended early (it changed while read)")
                nonce, aad = _segment_nonce_aad(prefix, header_digest, index, index == count - 1)
                out = outbufs[index % slots][: want + TAG_SIZE]
                aead.encrypt_into(nonce, chunk, aad, out)
                pipe.submit(index, chunk, out)
                del chunk, out
    except BaseException:
        pipe.close(failed=True)
        raise
    pipe.close()
    if src.read(1):
        raise ValueError("input is longer than its declared size (it changed while read)")


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    kek: bytes,
    key_uri: str,
    context: Mapping[str, Any],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    plaintext_size: int | None = None,
    digests: bool = True,
    plaintext_digest: bool = True,
    ciphertext_algorithm: str = "blake3",
) -> StreamResult:
    """Encrypt everything left in `src` to `dst` under a fresh data key wrapped by `kek`.

    `src` must be seekable or `plaintext_size` given: the size is authenticated in the header so
    truncation and extension are detected exactly. `context` is bound into every segment.
    With `digests`, the ciphertext digest in `ciphertext_algorithm` (header included) and,
    unless `plaintext_digest` is False, the plaintext SHA-256 are computed, each in its own
    thread beside the cipher.
    """
    if plaintext_size is None:
        plaintext_size = _stream_size(src)
    ct_hash = new_hash(ciphertext_algorithm) if digests else None
    aead, prefix, header = _new_file(kek, key_uri, context, segment_size, plaintext_size)
    pt_hash = hashlib.sha256() if digests and plaintext_digest else None
    if ct_hash is not None:
        ct_hash.update(header)
    dst.write(header)
    consumers = [_writer(dst)]
    if ct_hash is not None:
        consumers.append(_hasher(ct_hash, of_output=True))
    if pt_hash is not None:
        consumers.append(_hasher(pt_hash, of_output=False))
    _seal_segments(src, aead, prefix, header, plaintext_size, segment_size, consumers)
    count = segment_count(plaintext_size, segment_size)
    return StreamResult(
        plaintext_size=plaintext_size,
        ciphertext_size=len(header) + plaintext_size + TAG_SIZE * count,
        plaintext_sha256=pt_hash.hexdigest() if pt_hash else "",
        ciphertext_digest=ct_hash.hexdigest() if ct_hash else "",
        header_sha256=hashlib.sha256(header).hexdigest(),
        ciphertext_algorithm=ciphertext_algorithm,
    )


def encrypt_to_writer(
    src: BinaryIO,
    open_writer: Callable[[int, str], Any],
    *,
    kek: bytes,
    key_uri: str,
    context: Mapping[str, Any],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    ciphertext_algorithm: str = "blake3",
) -> StreamResult:
    """Encrypt the seekable `src` into a destination named by the ciphertext's own digest (in
    `ciphertext_algorithm`), without staging the ciphertext anywhere.

    Two passes under one data key and nonce prefix, so both give the same bytes: the first
    hashes the ciphertext (its digest names the object) and keeps every segment's GCM tag; the
    second streams the ciphertext into `open_writer(ciphertext_size, ciphertext_digest)` (an
    `ObjectWriter`-like object: `write`, `commit`, context manager aborting on error) and
    commits only if every segment's tag is the one of the first pass. A tag is a MAC of the
    segment under the secret data key, so a source that changed between the passes is caught
    there (a change keeping all tags is a GCM forgery) without hashing the bytes again. The
    writer runs in its own thread beside the cipher, so its uploads overlap the encryption of
    later segments. The plaintext digest is not computed (format version 2 does not need it)."""
    origin = src.tell()
    plaintext_size = _stream_size(src)
    ct_hash = new_hash(ciphertext_algorithm)
    aead, prefix, header = _new_file(kek, key_uri, context, segment_size, plaintext_size)
    ct_hash.update(header)
    tags: list[bytes] = []
    _seal_segments(
        src,
        aead,
        prefix,
        header,
        plaintext_size,
        segment_size,
        [_hasher(ct_hash, of_output=True), lambda _data, out: tags.append(bytes(out[-TAG_SIZE:]))],
    )
    size = len(header) + plaintext_size + TAG_SIZE * segment_count(plaintext_size, segment_size)
    digest = ct_hash.hexdigest()
    src.seek(origin)
    seen = iter(tags)

    def write_checked(_data: memoryview, out: memoryview) -> None:
        if not hmac.compare_digest(bytes(out[-TAG_SIZE:]), next(seen)):
            raise IntegrityError("the source changed while it was encrypted; nothing committed")
        writer.write(out)

    with open_writer(size, digest) as writer:
        writer.write(header)
        # two slots: the writer double-buffers its own parts, more would only cost memory
        _seal_segments(
            src, aead, prefix, header, plaintext_size, segment_size, [write_checked], slots=2
        )
        writer.commit()
    return StreamResult(
        plaintext_size, size, "", digest, hashlib.sha256(header).hexdigest(), ciphertext_algorithm
    )


def open_header(
    header: FileHeader,
    *,
    kek: bytes,
    expected_context: Mapping[str, Any] | None,
    expected_key_uri: str | None = None,
) -> AESGCM:
    """Unwrap the data key, check its commitment (version 2), authenticate the header, check
    its bound context; returns the AEAD."""
    _check_kek(kek)
    try:
        data_key = aes_key_unwrap(bytes(kek), header.wrapped_key)
    except InvalidUnwrap:
        raise KeyUnwrapError(
            f"data key did not unwrap with the given key for {header.key_uri}: "
            "wrong key-encryption key, or the wrapped key is corrupted"
        ) from None
    if header.version >= 2 and not hmac.compare_digest(
        key_commitment(data_key), header.key_commitment
    ):
        raise HeaderError("key commitment does not match the data key (header modified)")
    aead = AESGCM(data_key)
    del data_key
    body, tag = header.raw[:-TAG_SIZE], header.raw[-TAG_SIZE:]
    try:
        aead.decrypt(_header_tag_nonce(header.nonce_prefix), tag, body)
    except InvalidTag:
        raise HeaderError("header authentication failed (header modified)") from None
    if expected_key_uri is not None and header.key_uri != expected_key_uri:
        raise ContextMismatchError(
            f"file is encrypted under {header.key_uri}, expected {expected_key_uri}"
        )
    if expected_context is not None and header.context != dict(expected_context):
        raise ContextMismatchError(
            f"file is bound to context {header.context}, expected {dict(expected_context)} "
            "(file from another run, checkpoint or path)"
        )
    return aead


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    kek: bytes,
    expected_context: Mapping[str, Any] | None,
    expected_key_uri: str | None = None,
    digests: bool = True,
    plaintext_digest: bool = True,
    expected_version: int | None = None,
    expected_header_sha256: str | None = None,
    ciphertext_algorithm: str = "blake3",
) -> StreamResult:
    """Decrypt one encrypted file (format version 1 or 2) from `src` to `dst`, authenticating
    every segment.

    Writes only authenticated plaintext, but a failure can leave a prefix in `dst`: callers
    write to a temporary and discard it on error (the checkpoint functions do).
    `expected_context=None` skips the context check (only for tools that display headers).
    With `digests` the ciphertext digest in `ciphertext_algorithm` and (unless
    `plaintext_digest` is False) the plaintext SHA-256 are computed, each in its own thread
    beside the cipher.
    `expected_version` refuses a file of another format version (the manifest's);
    `expected_header_sha256` a file whose header is not that one, before any key is used.
    """
    ct_hash = new_hash(ciphertext_algorithm) if digests else None
    header = read_header(src)
    if expected_version is not None and header.version != expected_version:
        raise HeaderError(
            f"file is format version {header.version}, its manifest says {expected_version}"
        )
    header_digest = hashlib.sha256(header.raw).digest()
    if expected_header_sha256 is not None and not hmac.compare_digest(
        header_digest.hex(), expected_header_sha256
    ):
        raise IntegrityError(
            "file header is not the one its manifest lists (another encryption of this file)"
        )
    aead = open_header(
        header, kek=kek, expected_context=expected_context, expected_key_uri=expected_key_uri
    )
    if src.seekable():
        left = _stream_size(src)
        body = header.ciphertext_size - len(header.raw)
        if left < body:
            raise TruncatedError(f"ciphertext truncated: {body - left} bytes missing")
        if left > body:
            raise TrailingDataError(f"{left - body} bytes after the final segment")
    seg = header.segment_size
    pt_hash = hashlib.sha256() if digests and plaintext_digest else None
    consumers = [_writer(dst)]
    if ct_hash is not None:
        ct_hash.update(header.raw)
        consumers.append(_hasher(ct_hash, of_output=False))  # the ciphertext is the input
    if pt_hash is not None:
        consumers.append(_hasher(pt_hash, of_output=True))
    count, size = header.segment_count, header.plaintext_size
    slots = _slot_count(seg)
    outbufs = [memoryview(bytearray(seg)) for _ in range(min(slots, count))]
    lengths = [min(seg, size - i * seg) for i in range(count)]
    pipe = _pipeline(consumers, count, slots)
    try:
        ring = _input_ring(consumers, slots)
        views = read_views(src, (n + TAG_SIZE for n in lengths), seg + TAG_SIZE, ring=ring)
        with closing(views):
            for index, want in enumerate(lengths):
                pipe.claim(index)
                data = next(views)
                if len(data) != want + TAG_SIZE:
                    raise TruncatedError(f"ciphertext truncated in segment {index} of {count}")
                nonce, aad = _segment_nonce_aad(
                    header.nonce_prefix, header_digest, index, index == count - 1
                )
                out = outbufs[index % slots][:want]
                try:
                    aead.decrypt_into(nonce, data, aad, out)
                except InvalidTag:
                    raise SegmentAuthError(
                        f"segment {index} of {count} failed authentication "
                        "(modified, reordered, or spliced from another file)",
                        index,
                    ) from None
                pipe.submit(index, data, out)
                del data, out
    except BaseException:
        pipe.close(failed=True)
        raise
    pipe.close()
    if src.read(1):
        raise TrailingDataError("bytes after the final segment")
    return StreamResult(
        plaintext_size=header.plaintext_size,
        ciphertext_size=header.ciphertext_size,
        plaintext_sha256=pt_hash.hexdigest() if pt_hash else "",
        ciphertext_digest=ct_hash.hexdigest() if ct_hash else "",
        header_sha256=header_digest.hex(),
        ciphertext_algorithm=ciphertext_algorithm,
    )


def _blob_context(aad_context: Mapping[str, Any]) -> dict[str, Any]:
    if "kind" in aad_context:
        raise ValueError("aad_context must not contain the reserved key 'kind'")
    return {"kind": "blob", **aad_context}


def encrypt_blob(
    plaintext: bytes,
    *,
    kek: bytes,
    key_uri: str,
    aad_context: Mapping[str, Any],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """Encrypt a data-set blob (in memory) in the checkpoint file format, bound to `aad_context`.

    Same bytes as `encrypt_stream`; segments are sealed straight from and into the buffers
    (no per-segment copies). For data sets (MBs): the result is built in memory.
    """
    size = len(plaintext)
    aead, prefix, header = _new_file(kek, key_uri, _blob_context(aad_context), segment_size, size)
    header_digest = hashlib.sha256(header).digest()
    count = segment_count(size, segment_size)
    out = bytearray(len(header) + size + TAG_SIZE * count)
    out[: len(header)] = header
    src, dst = memoryview(plaintext), memoryview(out)
    pos = len(header)
    for index in range(count):
        chunk = src[index * segment_size : (index + 1) * segment_size]
        nonce, aad = _segment_nonce_aad(prefix, header_digest, index, index == count - 1)
        aead.encrypt_into(nonce, chunk, aad, dst[pos : pos + len(chunk) + TAG_SIZE])
        pos += len(chunk) + TAG_SIZE
    return bytes(out)


def decrypt_blob(
    blob: bytes,
    *,
    kek: bytes,
    aad_context: Mapping[str, Any],
    key_uri: str | None = None,
) -> bytes:
    """Decrypt a blob from `encrypt_blob`; the same `aad_context` must be given."""
    header = read_header(io.BytesIO(blob))
    aead = open_header(
        header, kek=kek, expected_context=_blob_context(aad_context), expected_key_uri=key_uri
    )
    if len(blob) < header.ciphertext_size:
        raise TruncatedError(f"blob truncated: {header.ciphertext_size - len(blob)} bytes missing")
    if len(blob) > header.ciphertext_size:
        raise TrailingDataError(
            f"{len(blob) - header.ciphertext_size} bytes after the final segment"
        )
    header_digest = hashlib.sha256(header.raw).digest()
    seg, count = header.segment_size, header.segment_count
    out = bytearray(header.plaintext_size)
    src, dst = memoryview(blob), memoryview(out)
    pos = len(header.raw)
    for index in range(count):
        want = min(seg, header.plaintext_size - index * seg)
        nonce, aad = _segment_nonce_aad(
            header.nonce_prefix, header_digest, index, index == count - 1
        )
        try:
            aead.decrypt_into(
                nonce, src[pos : pos + want + TAG_SIZE], aad, dst[index * seg : index * seg + want]
            )
        except InvalidTag:
            raise SegmentAuthError(
                f"blob segment {index} of {count} failed authentication", index
            ) from None
        pos += want + TAG_SIZE
    return bytes(out)


__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "FileHeader",
    "StreamResult",
    "decrypt_blob",
    "decrypt_stream",
    "encrypt_blob",
    "encrypt_stream",
    "encrypt_to_writer",
    "read_header",
]
