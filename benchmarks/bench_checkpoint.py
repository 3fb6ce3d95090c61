"""Checkpoint format benchmark: throughput against raw AES-256-GCM / SHA-256, and peak memory.

Prints one JSON document. Every ratio divides by a baseline measured in this same run:

- encrypt/decrypt: the format (stream path: a page-cached file -> sink; blob path: straight
  from/into memory) against raw `AESGCM.encrypt_into`/`decrypt_into` over the same bytes with
  the same segment size (goal >= 0.9), two baselines: (a) the bytes in anonymous memory (no
  file I/O on that side), (b) like with like: the very same file the stream path reads (for
  decrypt: the file `encrypt_stream` wrote, opened with its own data key, nonces and AADs),
  mapped read-only afresh each run, as the stream path maps it (file I/O on both sides). (a)
  also measures the page cache: a freshly written ciphertext file maps with smaller folios
  than the plaintext file (docs/architecture/checkpoint.md, "Measured");
- verify without key (`verify_objects`: re-read every object from the store and SHA-256 it)
  against plain `hashlib.sha256` over the same bytes in memory, and against hashing the same
  file read in the same chunks;
- peak memory: `encrypt_checkpoint`, keyless verification and `decrypt_checkpoint` of one
  file of 64 MiB, 1 GiB and 4 GiB, each in a fresh subprocess, peak RSS minus the peak after
  imports (goal: flat, < 64 MiB).

Every round runs each variant once, interleaved (the machine is shared: load drift hits all
alike); a ratio is the median over rounds of the ratio within a round, a MB/s figure the median
over rounds.
Usage: python benchmarks/bench_checkpoint.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
KEY_URI = "kbs:///bench/checkpoint/key"
CTX = {"kind": "checkpoint-file", "run_id": "bench", "checkpoint_id": "b", "path": "w"}


class _Sink(io.RawIOBase):
    """Discards writes: measures the format, not the disk."""

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return len(b)


def _rounds(fns: dict, repeat: int) -> dict[str, list[float]]:
    """Times of each function in each round; rounds interleave them so load drift hits all
    alike, and a ratio can pair a variant with its baseline from the same round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _ratio(times: dict[str, list[float]], baseline: str, variant: str) -> float:
    """Median over rounds of baseline time / variant time (> 1: the variant is faster)."""
    pairs = zip(times[baseline], times[variant], strict=True)
    return round(statistics.median(b / v for b, v in pairs), 3)


def _mb_per_s(size: int, times: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(size / statistics.median(v) / 1e6, 1) for k, v in times.items()}


def _throughput(size: int, segment: int, repeat: int, workdir: Path) -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

    from coco_ai.crypto.stream import (
        _segment_nonce_aad,
        decrypt_blob,
        decrypt_stream,
        encrypt_blob,
        encrypt_stream,
        read_header,
    )

    data = os.urandom(size)
    kek = os.urandom(32)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    src = memoryview(data)
    raw_ct = bytearray(size + 16 * (-(-size // segment)))
    out = memoryview(bytearray(segment + 16))
    back = memoryview(bytearray(segment))
    aad = bytes(37)

    def raw_encrypt() -> None:  # what AES-GCM alone costs: same bytes, same segments
        for i, off in enumerate(range(0, size, segment)):
            chunk = src[off : off + segment]
            aead.encrypt_into(b"\0" * 4 + i.to_bytes(8, "big"), chunk, aad, out[: len(chunk) + 16])

    # raw ciphertext for the raw decrypt baseline (built once, outside timing)
    ct_view = memoryview(raw_ct)
    pos = 0
    for i, off in enumerate(range(0, size, segment)):
        chunk = src[off : off + segment]
        aead.encrypt_into(
            b"\0" * 4 + i.to_bytes(8, "big"), chunk, aad, ct_view[pos : pos + len(chunk) + 16]
        )
        pos += len(chunk) + 16

    def raw_decrypt() -> None:
        pos = 0
        for i, off in enumerate(range(0, size, segment)):
            n = min(segment, size - off)
            aead.decrypt_into(
                b"\0" * 4 + i.to_bytes(8, "big"), ct_view[pos : pos + n + 16], aad, back[:n]
            )
            pos += n + 16

    # The stream path reads a file, as checkpoints do (same bytes, page-cached), and writes to
    # a sink: it measures the format's own cost, not the disk's.
    plain_file, ct_file = workdir / "tp.plain", workdir / "tp.enc"
    plain_file.write_bytes(data)
    with open(plain_file, "rb") as f, open(ct_file, "wb") as out_f:
        encrypt_stream(f, out_f, kek=kek, key_uri=KEY_URI, context=CTX, segment_size=segment)

    # Baselines (b): raw AES-GCM over the same files, mapped read-only afresh each run as the
    # stream path maps them. The ciphertext file is opened with its own data key, nonces and
    # AADs (derived here, outside timing), so both sides decrypt exactly the same bytes.
    with open(ct_file, "rb") as f:
        header = read_header(f)
    file_aead = AESGCM(aes_key_unwrap(kek, header.wrapped_key))
    header_digest = hashlib.sha256(header.raw).digest()
    count = header.segment_count
    seg_params = [
        _segment_nonce_aad(header.nonce_prefix, header_digest, i, i == count - 1)
        for i in range(count)
    ]
    pt_lengths = [min(segment, size - i * segment) for i in range(count)]

    def mapped(path: Path) -> memoryview:  # unmapped when the last view of it goes
        with open(path, "rb") as f:
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))

    def raw_encrypt_file() -> None:
        whole = mapped(plain_file)
        for i, off in enumerate(range(0, size, segment)):
            chunk = whole[off : off + segment]
            aead.encrypt_into(b"\0" * 4 + i.to_bytes(8, "big"), chunk, aad, out[: len(chunk) + 16])

    def raw_decrypt_file() -> None:
        whole, pos = mapped(ct_file), len(header.raw)
        for (nonce, seg_aad), n in zip(seg_params, pt_lengths, strict=True):
            file_aead.decrypt_into(nonce, whole[pos : pos + n + 16], seg_aad, back[:n])
            pos += n + 16

    def fmt_encrypt(digests: bool = False) -> None:
        with open(plain_file, "rb") as f:
            encrypt_stream(
                f,
                _Sink(),
                kek=kek,
                key_uri=KEY_URI,
                context=CTX,
                segment_size=segment,
                digests=digests,
            )

    def fmt_decrypt(digests: bool = False) -> None:
        with open(ct_file, "rb") as f:
            decrypt_stream(f, _Sink(), kek=kek, expected_context=CTX, digests=digests)

    def bytesio_encrypt() -> None:  # a non-file stream: one copy per segment (readinto)
        encrypt_stream(
            io.BytesIO(data),
            _Sink(),
            kek=kek,
            key_uri=KEY_URI,
            context=CTX,
            segment_size=segment,
            digests=False,
        )

    blob = encrypt_blob(data, kek=kek, key_uri=KEY_URI, aad_context={}, segment_size=segment)

    t = _rounds(
        {
            "raw_encrypt": raw_encrypt,
            "raw_encrypt_same_file": raw_encrypt_file,
            "stream_encrypt": fmt_encrypt,
            "raw_decrypt": raw_decrypt,
            "raw_decrypt_same_file": raw_decrypt_file,
            "stream_decrypt": fmt_decrypt,
            "bytesio_encrypt": bytesio_encrypt,
            "blob_encrypt": lambda: encrypt_blob(
                data, kek=kek, key_uri=KEY_URI, aad_context={}, segment_size=segment
            ),
            "blob_decrypt": lambda: decrypt_blob(blob, kek=kek, aad_context={}),
            "stream_encrypt_with_digests": lambda: fmt_encrypt(True),
            "stream_decrypt_with_digests": lambda: fmt_decrypt(True),
            "sha256": lambda: hashlib.sha256(data).digest(),
        },
        repeat,
    )
    plain_file.unlink()
    ct_file.unlink()
    t["raw_encrypt_plus_2_sha256"] = [
        a + 2 * h for a, h in zip(t["raw_encrypt"], t["sha256"], strict=True)
    ]
    return {
        "bytes": size,
        "segment_size": segment,
        "rounds": repeat,
        "MB_per_s": _mb_per_s(size, t),
        "ratio_encrypt_stream_vs_raw_aes_gcm": _ratio(t, "raw_encrypt", "stream_encrypt"),
        "ratio_decrypt_stream_vs_raw_aes_gcm": _ratio(t, "raw_decrypt", "stream_decrypt"),
        "ratio_encrypt_stream_vs_raw_aes_gcm_same_file": _ratio(
            t, "raw_encrypt_same_file", "stream_encrypt"
        ),
        "ratio_decrypt_stream_vs_raw_aes_gcm_same_file": _ratio(
            t, "raw_decrypt_same_file", "stream_decrypt"
        ),
        "ratio_encrypt_bytesio_stream_vs_raw_aes_gcm": _ratio(t, "raw_encrypt", "bytesio_encrypt"),
        "ratio_encrypt_blob_vs_raw_aes_gcm": _ratio(t, "raw_encrypt", "blob_encrypt"),
        "ratio_decrypt_blob_vs_raw_aes_gcm": _ratio(t, "raw_decrypt", "blob_decrypt"),
        "ratio_encrypt_with_digests_vs_raw_aes_gcm": _ratio(
            t, "raw_encrypt", "stream_encrypt_with_digests"
        ),
        "ratio_encrypt_with_digests_vs_aes_plus_2_sha256": _ratio(
            t, "raw_encrypt_plus_2_sha256", "stream_encrypt_with_digests"
        ),
    }


def _verify_throughput(size: int, workdir: Path, repeat: int) -> dict:
    from coco_ai.crypto.checkpoint import encrypt_checkpoint
    from coco_ai.crypto.transfer import read_manifest, verify_objects
    from coco_ai.storage import open_store

    src = workdir / "verify-src"
    src.mkdir()
    _write_file(src / "weights.bin", size)
    ckpt = workdir / "verify-ckpt"
    encrypt_checkpoint(src, ckpt, kek=os.urandom(32), key_uri=KEY_URI, run_id="bench", meta={})
    shutil.rmtree(src)
    store = open_store(str(ckpt))
    manifest, _ = read_manifest(store)
    (obj,) = (ckpt / "objects").iterdir()
    data = obj.read_bytes()  # same bytes, in memory, for the plain SHA-256 baseline

    def file_sha256() -> None:
        with open(obj, "rb") as f:
            h, buf = hashlib.sha256(), memoryview(bytearray(8 * MIB))
            while n := f.readinto(buf):
                h.update(buf[:n])

    t = _rounds(
        {
            "verify": lambda: verify_objects(store, manifest),
            "mem": lambda: hashlib.sha256(data).digest(),
            "file": file_sha256,
        },
        repeat,
    )
    shutil.rmtree(ckpt)
    n = len(data)
    mbps = _mb_per_s(n, t)
    return {
        "bytes": n,
        "rounds": repeat,
        "MB_per_s": {
            "verify_without_key": mbps["verify"],
            "sha256_in_memory": mbps["mem"],
            "sha256_of_file": mbps["file"],
        },
        "ratio_verify_vs_sha256_in_memory": _ratio(t, "mem", "verify"),
        "ratio_verify_vs_sha256_of_file": _ratio(t, "file", "verify"),
    }


def _write_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


_CHILD = r"""
import os, sys, time, json
from pathlib import Path
op, workdir = sys.argv[1], Path(sys.argv[2])
from coco_ai.crypto.checkpoint import decrypt_checkpoint, encrypt_checkpoint
from coco_ai.crypto.transfer import read_manifest, verify_objects
from coco_ai.storage import open_store

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

kek = bytes.fromhex(os.environ["BENCH_KEK"])
# Peak RSS counted from here: reset the high-water mark to the current RSS (Linux >= 4.0).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
t0 = time.perf_counter()
if op == "encrypt":
    encrypt_checkpoint(workdir / "plain", workdir / "ckpt", kek=kek,
                       key_uri="kbs:///bench/checkpoint/key", run_id="bench", meta={})
elif op == "verify":
    store = open_store(str(workdir / "ckpt"))
    verify_objects(store, read_manifest(store)[0])
else:
    decrypt_checkpoint(workdir / "ckpt", workdir / "out", kek=kek)
dt = time.perf_counter() - t0
print(json.dumps({"baseline_kib": base, "peak_kib": status("VmHWM"), "seconds": dt}))
"""


def _memory(size: int, workdir: Path) -> dict:
    d = workdir / f"mem-{size}"
    (d / "plain").mkdir(parents=True)
    _write_file(d / "plain" / "weights.bin", size)
    env = {**os.environ, "BENCH_KEK": os.urandom(32).hex()}  # benchmark-only throwaway key
    result: dict = {"bytes": size}
    try:
        for op in ("encrypt", "verify", "decrypt"):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, op, str(d)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            result[op] = {
                "peak_rss_above_baseline_mib": round((r["peak_kib"] - r["baseline_kib"]) / 1024, 1),
                "baseline_rss_mib": round(r["baseline_kib"] / 1024, 1),
                "file_MB_per_s": round(size / r["seconds"] / 1e6, 1),
            }
            if op == "encrypt":
                shutil.rmtree(d / "plain")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=None, help="rounds per throughput figure")
    args = ap.parse_args()
    segment = 4 * MIB
    if args.quick:
        tp_size, mem_sizes, repeat = 64 * MIB, [8 * MIB, 64 * MIB], args.repeat or 3
    else:
        tp_size, mem_sizes, repeat = (
            1024 * MIB,
            [64 * MIB, 1024 * MIB, 4096 * MIB],
            args.repeat or 7,
        )
    workdir = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.workdir))
    try:
        report = {
            "benchmark": "checkpoint",
            "quick": args.quick,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            # memory first: its subprocesses should not fork a parent holding GiB of buffers
            "memory": [_memory(s, workdir) for s in mem_sizes],
            "throughput": _throughput(tp_size, segment, repeat, workdir),
            "verify": _verify_throughput(tp_size, workdir, repeat),
            "goals": {"ratio_vs_raw_aes_gcm": 0.9, "peak_rss_above_baseline_mib": 64},
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
