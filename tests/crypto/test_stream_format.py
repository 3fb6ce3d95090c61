"""The segmented AEAD file format: round trips and every single-file tampering of the issue."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct

import blake3
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from coco_ai.crypto.errors import (
    ContextMismatchError,
    HeaderError,
    KeyUnwrapError,
    SegmentAuthError,
    TrailingDataError,
    TruncatedError,
)
from coco_ai.crypto.stream import (
    TAG_SIZE,
    decrypt_blob,
    decrypt_stream,
    encrypt_blob,
    encrypt_stream,
    read_header,
)

from .helpers import KEY_URI, SEGMENT

COMMIT_LABEL = b"coco-ai/checkpoint-file/v2 key commitment"  # docs/formats/checkpoint.md §2
CTX = {"kind": "checkpoint-file", "run_id": "run-a", "checkpoint_id": "c1", "path": "w.bin"}


def encrypt(data: bytes, kek: bytes, context=CTX) -> bytes:
    out = io.BytesIO()
    r = encrypt_stream(
        io.BytesIO(data), out, kek=kek, key_uri=KEY_URI, context=context, segment_size=SEGMENT
    )
    assert r.ciphertext_size == len(out.getvalue())
    return out.getvalue()


def decrypt(ct: bytes, kek: bytes, context=CTX) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(ct), out, kek=kek, expected_context=context)
    return out.getvalue()


def layout(ct: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Header length and (offset, length) of every segment."""
    header = read_header(io.BytesIO(ct))
    pos, segs = len(header.raw), []
    left = header.plaintext_size
    for _ in range(header.segment_count):
        n = min(SEGMENT, left) + TAG_SIZE
        segs.append((pos, n))
        pos += n
        left -= min(SEGMENT, left)
    assert pos == len(ct)
    return len(header.raw), segs


def flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 7])
def test_round_trip_and_sizes(kek, size):
    data = os.urandom(size)
    ct = encrypt(data, kek)
    hlen, segs = layout(ct)
    assert len(segs) == max(1, -(-size // SEGMENT))
    assert len(ct) == hlen + size + TAG_SIZE * len(segs)
    assert size < 32 or data[:32] not in ct  # no plaintext run in the output
    assert decrypt(ct, kek) == data


def test_two_encryptions_differ(kek):
    """A fresh data key and nonce prefix per file: equal plaintexts never give equal files."""
    data = os.urandom(100)
    a, b = encrypt(data, kek), encrypt(data, kek)
    assert a != b
    assert read_header(io.BytesIO(a)).wrapped_key != read_header(io.BytesIO(b)).wrapped_key


def test_flipped_bit_in_segment(kek):
    ct = encrypt(os.urandom(3 * SEGMENT), kek)
    _, segs = layout(ct)
    off, _ = segs[1]
    with pytest.raises(SegmentAuthError) as e:
        decrypt(flip(ct, off + 10), kek)
    assert e.value.index == 1


def test_flipped_bit_in_segment_tag(kek):
    ct = encrypt(os.urandom(2 * SEGMENT), kek)
    _, segs = layout(ct)
    off, n = segs[-1]
    with pytest.raises(SegmentAuthError) as e:
        decrypt(flip(ct, off + n - 1), kek)
    assert e.value.index == 1


@pytest.mark.parametrize(
    "field_offset",
    [
        pytest.param(8, id="segment_size"),
        pytest.param(19, id="plaintext_size"),
        pytest.param(22, id="nonce_prefix"),
        pytest.param(-20, id="context"),
        pytest.param(-1, id="header_tag"),
    ],
)
def test_flipped_bit_in_header(kek, field_offset):
    ct = encrypt(os.urandom(2 * SEGMENT), kek)
    hlen, _ = layout(ct)
    pos = field_offset if field_offset >= 0 else hlen + field_offset
    with pytest.raises(HeaderError):
        decrypt(flip(ct, pos), kek)


def test_flipped_bit_in_magic_or_version(kek):
    ct = encrypt(b"x" * 10, kek)
    with pytest.raises(HeaderError, match="magic"):
        decrypt(flip(ct, 0), kek)
    with pytest.raises(HeaderError, match="version"):
        decrypt(flip(ct, 6), kek)


def test_flipped_bit_in_wrapped_key(kek):
    ct = encrypt(os.urandom(100), kek)
    wrapped_at = 6 + 1 + 1 + 4 + 8 + 7  # magic, version, suite, segment size, size, prefix
    with pytest.raises(KeyUnwrapError, match="wrapped key is corrupted"):
        decrypt(flip(ct, wrapped_at + 5), kek)


def test_wrong_key(kek):
    ct = encrypt(os.urandom(100), kek)
    with pytest.raises(KeyUnwrapError, match="wrong key-encryption key"):
        decrypt(ct, os.urandom(32))


@pytest.mark.parametrize("cut", ["segment_boundary", "mid_segment", "header_only"])
def test_truncated(kek, cut):
    ct = encrypt(os.urandom(3 * SEGMENT), kek)
    hlen, segs = layout(ct)
    end = {"segment_boundary": segs[2][0], "mid_segment": segs[1][0] + 9, "header_only": hlen}
    with pytest.raises(TruncatedError):
        decrypt(ct[: end[cut]], kek)


def test_truncated_in_header(kek):
    ct = encrypt(os.urandom(10), kek)
    with pytest.raises(HeaderError, match="truncated"):
        decrypt(ct[:30], kek)


class _Unseekable(io.RawIOBase):
    """A pipe-like source: forces the streaming (not size-based) truncation checks."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        return self._b.readinto(buf)


def test_truncated_unseekable_stream(kek):
    ct = encrypt(os.urandom(3 * SEGMENT), kek)
    _, segs = layout(ct)
    with pytest.raises(TruncatedError, match="segment 2"):
        decrypt_stream(
            io.BufferedReader(_Unseekable(ct[: segs[2][0]])),
            io.BytesIO(),
            kek=kek,
            expected_context=CTX,
        )


def test_extended_unseekable_stream(kek):
    ct = encrypt(os.urandom(SEGMENT + 5), kek)
    with pytest.raises(TrailingDataError):
        decrypt_stream(
            io.BufferedReader(_Unseekable(ct + b"\0")),
            io.BytesIO(),
            kek=kek,
            expected_context=CTX,
        )


@pytest.mark.parametrize("extra", [b"\0", os.urandom(SEGMENT + TAG_SIZE)])
def test_extended(kek, extra):
    ct = encrypt(os.urandom(2 * SEGMENT + 1), kek)
    with pytest.raises(TrailingDataError):
        decrypt(ct + extra, kek)


def test_reordered_segments(kek):
    ct = encrypt(os.urandom(3 * SEGMENT), kek)
    _hlen, segs = layout(ct)
    (a, n), (b, _) = segs[0], segs[1]
    swapped = ct[:a] + ct[b : b + n] + ct[a : a + n] + ct[b + n :]
    with pytest.raises(SegmentAuthError) as e:
        decrypt(swapped, kek)
    assert e.value.index == 0


def test_last_segment_duplicated_over_earlier(kek):
    """A full final segment copied over a non-final one: the final flag differs in the nonce."""
    ct = encrypt(os.urandom(2 * SEGMENT), kek)
    _, segs = layout(ct)
    (a, n), (b, _) = segs
    with pytest.raises(SegmentAuthError) as e:
        decrypt(ct[:a] + ct[b : b + n] + ct[b:], kek)
    assert e.value.index == 0


def test_segment_spliced_from_another_file_same_run(kek):
    """Same key-encryption key, same run, another path: its data key differs."""
    ct = encrypt(os.urandom(2 * SEGMENT), kek)
    other = encrypt(os.urandom(2 * SEGMENT), kek, context={**CTX, "path": "other.bin"})
    _, segs = layout(ct)
    _, osegs = layout(other)
    (a, n), (oa, _) = segs[1], osegs[1]
    with pytest.raises(SegmentAuthError) as e:
        decrypt(ct[:a] + other[oa : oa + n] + ct[a + n :], kek)
    assert e.value.index == 1


def test_segment_spliced_from_another_run(kek):
    ct = encrypt(os.urandom(2 * SEGMENT), kek)
    other_kek = os.urandom(32)
    other = encrypt(os.urandom(2 * SEGMENT), other_kek, context={**CTX, "run_id": "run-b"})
    _, segs = layout(ct)
    _, osegs = layout(other)
    (a, n), (oa, _) = segs[0], osegs[0]
    with pytest.raises(SegmentAuthError) as e:
        decrypt(ct[:a] + other[oa : oa + n] + ct[a + n :], kek)
    assert e.value.index == 0


def test_header_spliced_onto_other_segments(kek):
    """Header of file A + segments of file B (same key, same sizes): B's segments fail."""
    a = encrypt(os.urandom(2 * SEGMENT), kek)
    b = encrypt(os.urandom(2 * SEGMENT), kek)
    ha, _ = layout(a)
    hb, _ = layout(b)
    with pytest.raises(SegmentAuthError):
        decrypt(a[:ha] + b[hb:], kek)


def test_whole_file_from_another_context(kek):
    """An authentic file, but bound to another checkpoint: refused before any plaintext."""
    ct = encrypt(b"weights", kek, context={**CTX, "checkpoint_id": "c0"})
    out = io.BytesIO()
    with pytest.raises(ContextMismatchError, match="c0"):
        decrypt_stream(io.BytesIO(ct), out, kek=kek, expected_context=CTX)
    assert out.getvalue() == b""


def test_expected_key_uri(kek):
    ct = encrypt(b"weights", kek)
    with pytest.raises(ContextMismatchError, match="expected kbs:///other/k/1"):
        decrypt_stream(
            io.BytesIO(ct),
            io.BytesIO(),
            kek=kek,
            expected_context=CTX,
            expected_key_uri="kbs:///other/k/1",
        )


def test_encrypt_rejects_bad_parameters(kek):
    src = io.BytesIO(b"x")
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_stream(src, io.BytesIO(), kek=kek[:16], key_uri=KEY_URI, context=CTX)
    with pytest.raises(ValueError):
        encrypt_stream(src, io.BytesIO(), kek=kek, key_uri="https://x/y", context=CTX)
    with pytest.raises(ValueError, match="segment size"):
        encrypt_stream(src, io.BytesIO(), kek=kek, key_uri=KEY_URI, context=CTX, segment_size=100)


def test_source_changing_during_encryption_is_refused(kek):
    with pytest.raises(ValueError, match="early"):
        encrypt_stream(
            io.BytesIO(b"abc"),
            io.BytesIO(),
            kek=kek,
            key_uri=KEY_URI,
            context=CTX,
            plaintext_size=10,
        )


def test_header_is_byte_exact(kek):
    """The documented fixed fields sit at the documented offsets."""
    ct = encrypt(os.urandom(5000), kek)
    magic, version, suite, seg, size = struct.unpack(">6sBBIQ", ct[:20])
    assert (magic, version, suite, seg, size) == (b"COCOAI", 2, 1, SEGMENT, 5000)
    data_key = aes_key_unwrap(kek, ct[27:67])
    assert ct[67:99] == hmac.digest(data_key, COMMIT_LABEL, "sha256")
    (uri_len,) = struct.unpack(">H", ct[99:101])
    assert ct[101 : 101 + uri_len].decode() == KEY_URI
    h = read_header(io.BytesIO(ct))
    assert h.context == CTX and len(h.wrapped_key) == 40 and h.segment_count == 2
    assert h.version == 2 and h.key_commitment == ct[67:99]


def test_flipped_key_commitment_refused_before_decrypting(kek):
    ct = flip(encrypt(os.urandom(100), kek), 67 + 5)
    with pytest.raises(HeaderError, match="key commitment"):
        decrypt(ct, kek)


def test_commitment_of_another_key_refused(kek):
    """A header whose commitment names another data key does not open, even re-authenticated
    under the wrapped key (what a holder of the KEK could forge): one data key per header."""
    ct = bytearray(encrypt(os.urandom(100), kek))
    data_key = aes_key_unwrap(kek, bytes(ct[27:67]))
    ct[67:99] = hmac.digest(os.urandom(32), COMMIT_LABEL, "sha256")
    h = read_header(io.BytesIO(bytes(ct)))
    body_end = len(h.raw) - TAG_SIZE
    ct[body_end : len(h.raw)] = AESGCM(data_key).encrypt(
        h.nonce_prefix + b"\xff\xff\xff\xff\x02", b"", bytes(ct[:body_end])
    )
    with pytest.raises(HeaderError, match="key commitment"):
        decrypt(bytes(ct), kek)


def test_header_repr_has_no_wrapped_key(kek):
    ct = encrypt(b"x", kek)
    h = read_header(io.BytesIO(ct))
    assert h.wrapped_key.hex() not in repr(h)


# --- data-set blobs --------------------------------------------------------------------------


def test_blob_round_trip(kek):
    data = os.urandom(2 * SEGMENT + 3)
    blob = encrypt_blob(
        data, kek=kek, key_uri=KEY_URI, aad_context={"dataset": "d1"}, segment_size=SEGMENT
    )
    assert decrypt_blob(blob, kek=kek, aad_context={"dataset": "d1"}, key_uri=KEY_URI) == data


def test_blob_other_context_refused(kek):
    blob = encrypt_blob(b"rows", kek=kek, key_uri=KEY_URI, aad_context={"dataset": "d1"})
    with pytest.raises(ContextMismatchError):
        decrypt_blob(blob, kek=kek, aad_context={"dataset": "d2"})


def test_blob_is_not_a_checkpoint_file(kek):
    same_fields = {k: v for k, v in CTX.items() if k != "kind"}
    blob = encrypt_blob(b"rows", kek=kek, key_uri=KEY_URI, aad_context=same_fields)
    with pytest.raises(ContextMismatchError):
        decrypt(blob, kek)


def test_blob_tampered(kek):
    blob = encrypt_blob(b"rows" * 100, kek=kek, key_uri=KEY_URI, aad_context={"d": "1"})
    with pytest.raises(SegmentAuthError):
        decrypt_blob(flip(blob, len(blob) - 30), kek=kek, aad_context={"d": "1"})


def test_blob_truncated_and_extended(kek):
    blob = encrypt_blob(
        os.urandom(SEGMENT * 2), kek=kek, key_uri=KEY_URI, aad_context={}, segment_size=SEGMENT
    )
    with pytest.raises(TruncatedError):
        decrypt_blob(blob[:-1], kek=kek, aad_context={})
    with pytest.raises(TrailingDataError):
        decrypt_blob(blob + b"\0", kek=kek, aad_context={})


def test_blob_is_the_stream_format(kek):
    """Blobs and streamed files are one format: each side reads the other's output."""
    data = os.urandom(3 * SEGMENT + 1)
    ctx = {"kind": "blob", "dataset": "d1"}
    blob = encrypt_blob(
        data, kek=kek, key_uri=KEY_URI, aad_context={"dataset": "d1"}, segment_size=SEGMENT
    )
    assert decrypt(blob, kek, context=ctx) == data
    assert (
        decrypt_blob(encrypt(data, kek, context=ctx), kek=kek, aad_context={"dataset": "d1"})
        == data
    )


def test_blob_reserved_kind_key(kek):
    with pytest.raises(ValueError, match="reserved"):
        encrypt_blob(b"x", kek=kek, key_uri=KEY_URI, aad_context={"kind": "checkpoint-file"})


# --- regular files: the zero-copy (mmap) read path -------------------------------------------


def _file_round(tmp_path, ct: bytes, kek: bytes) -> bytes:
    p = tmp_path / "f.enc"
    p.write_bytes(ct)
    out = io.BytesIO()
    with open(p, "rb") as f:
        decrypt_stream(f, out, kek=kek, expected_context=CTX)
        assert f.tell() == len(ct)  # positioned after what was consumed, as if read
    return out.getvalue()


def test_file_round_trip_both_directions(tmp_path, kek):
    data = os.urandom(3 * SEGMENT + 5)
    (tmp_path / "p").write_bytes(data)
    with open(tmp_path / "p", "rb") as f:
        out = io.BytesIO()
        r = encrypt_stream(f, out, kek=kek, key_uri=KEY_URI, context=CTX, segment_size=SEGMENT)
        assert f.tell() == len(data)
    assert r.ciphertext_size == len(out.getvalue())
    assert _file_round(tmp_path, out.getvalue(), kek) == data


def test_file_tampering(tmp_path, kek):
    ct = encrypt(os.urandom(3 * SEGMENT), kek)
    _, segs = layout(ct)
    with pytest.raises(SegmentAuthError):
        _file_round(tmp_path, flip(ct, segs[2][0] + 3), kek)
    with pytest.raises(TruncatedError):
        _file_round(tmp_path, ct[: segs[2][0] + 3], kek)
    with pytest.raises(TrailingDataError):
        _file_round(tmp_path, ct + b"x", kek)


def test_file_source_longer_than_declared(tmp_path, kek):
    (tmp_path / "p").write_bytes(b"abcdef")
    with open(tmp_path / "p", "rb") as f, pytest.raises(ValueError, match="longer"):
        encrypt_stream(f, io.BytesIO(), kek=kek, key_uri=KEY_URI, context=CTX, plaintext_size=3)


# --- release: nothing unauthenticated is written -----------------------------------------


@pytest.mark.parametrize("segment", [SEGMENT, 2 * 1024 * 1024])
def test_failed_segment_releases_no_plaintext_of_it(kek, segment):
    """Plaintext reaches the destination only once its segment is authenticated: a tampered
    segment's plaintext, and anything after it, is never written."""
    data = os.urandom(4 * segment)
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(data), out, kek=kek, key_uri=KEY_URI, context=CTX, segment_size=segment
    )
    header_len = len(read_header(io.BytesIO(out.getvalue())).raw)
    bad = flip(out.getvalue(), header_len + 2 * (segment + TAG_SIZE) + 5)  # in segment 2
    released = io.BytesIO()
    with pytest.raises(SegmentAuthError) as e:
        decrypt_stream(io.BytesIO(bad), released, kek=kek, expected_context=CTX)
    assert e.value.index == 2
    assert len(released.getvalue()) <= 2 * segment
    assert released.getvalue() == data[: len(released.getvalue())]


# --- the pipeline: digests computed in other threads, errors surfacing --------------------------


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_pipelined_digests_are_the_digests_of_the_bytes(kek, tmp_path, mapped, algorithm):
    reference = {"blake3": blake3.blake3, "sha256": hashlib.sha256}[algorithm]
    data = os.urandom(9 * SEGMENT + 5)
    (tmp_path / "p").write_bytes(data)
    out = io.BytesIO()
    with open(tmp_path / "p", "rb") as f:
        src = f if mapped else io.BytesIO(f.read())
        r = encrypt_stream(
            src, out, kek=kek, key_uri=KEY_URI, context=CTX, segment_size=SEGMENT,
            ciphertext_algorithm=algorithm,
        )  # fmt: skip
    ct = out.getvalue()
    assert r.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert r.ciphertext_algorithm == algorithm and r.ciphertext_digest == reference(ct).hexdigest()
    (tmp_path / "c").write_bytes(ct)
    back = io.BytesIO()
    with open(tmp_path / "c", "rb") as f:
        src = f if mapped else io.BytesIO(f.read())
        d = decrypt_stream(src, back, kek=kek, expected_context=CTX, ciphertext_algorithm=algorithm)
    assert back.getvalue() == data
    assert (d.plaintext_sha256, d.ciphertext_digest) == (r.plaintext_sha256, r.ciphertext_digest)


def test_unknown_ciphertext_algorithm_refused_before_anything_is_written(kek):
    out = io.BytesIO()
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        encrypt_stream(
            io.BytesIO(b"x"), out, kek=kek, key_uri=KEY_URI, context=CTX, ciphertext_algorithm="md5"
        )
    assert out.getvalue() == b""


class FailingWriter(io.RawIOBase):
    """A destination that fails after some bytes, as a full disk does."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.left:
            raise OSError(28, "No space left on device")
        self.left -= len(b)
        return len(b)


def test_writer_error_in_its_thread_is_raised_to_the_caller(kek):
    data = os.urandom(20 * SEGMENT)
    with pytest.raises(OSError, match="No space left"):
        encrypt_stream(
            io.BytesIO(data),
            FailingWriter(5 * SEGMENT),
            kek=kek,
            key_uri=KEY_URI,
            context=CTX,
            segment_size=SEGMENT,
        )
    ct = encrypt(data, kek)
    with pytest.raises(OSError, match="No space left"):
        decrypt_stream(io.BytesIO(ct), FailingWriter(3 * SEGMENT), kek=kek, expected_context=CTX)
