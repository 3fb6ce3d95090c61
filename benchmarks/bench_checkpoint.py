"""Checkpoint format benchmark: throughput against raw AES-256-GCM / SHA-256, and peak memory.

Prints one JSON document. Every ratio divides by a baseline measured in this same run:

- encrypt/decrypt: the format (stream path: source stream -> sink, one copy in; blob path:
  straight from/into memory) against raw `AESGCM.encrypt_into`/`decrypt_into` over the same
  bytes with the same segment size (goal >= 0.9);
- verify without key (`verify_objects`: re-read every object from the store and SHA-256 it)
  against plain `hashlib.sha256` over the same bytes in memory, and against hashing the same
  file read in the same chunks;
- peak memory: `encrypt_checkpoint`, keyless verification and `decrypt_checkpoint` of one
  file of 64 MiB, 1 GiB and 4 GiB, each in a fresh subprocess, peak RSS minus the peak after
  imports (goal: flat, < 64 MiB).

Each throughput figure is the best of `--repeat` runs (the machine is shared).
Usage: python benchmarks/bench_checkpoint.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
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


def _best_of(fns: dict, repeat: int) -> dict[str, float]:
    """Best time of each function; rounds interleave them so load drift hits all alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _throughput(size: int, segment: int, repeat: int, workdir: Path) -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from coco_ai.crypto.stream import (
        decrypt_blob,
        decrypt_stream,
        encrypt_blob,
        encrypt_stream,
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

    t = _best_of(
        {
            "raw_encrypt": raw_encrypt,
            "stream_encrypt": fmt_encrypt,
            "raw_decrypt": raw_decrypt,
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
    mbps = {k: round(size / v / 1e6, 1) for k, v in t.items()}
    return {
        "bytes": size,
        "segment_size": segment,
        "MB_per_s": mbps,
        "ratio_encrypt_stream_vs_raw_aes_gcm": round(t["raw_encrypt"] / t["stream_encrypt"], 3),
        "ratio_decrypt_stream_vs_raw_aes_gcm": round(t["raw_decrypt"] / t["stream_decrypt"], 3),
        "ratio_encrypt_bytesio_stream_vs_raw_aes_gcm": round(
            t["raw_encrypt"] / t["bytesio_encrypt"], 3
        ),
        "ratio_encrypt_blob_vs_raw_aes_gcm": round(t["raw_encrypt"] / t["blob_encrypt"], 3),
        "ratio_decrypt_blob_vs_raw_aes_gcm": round(t["raw_decrypt"] / t["blob_decrypt"], 3),
        "ratio_encrypt_with_digests_vs_raw_aes_gcm": round(
            t["raw_encrypt"] / t["stream_encrypt_with_digests"], 3
        ),
        "ratio_encrypt_with_digests_vs_aes_plus_2_sha256": round(
            (t["raw_encrypt"] + 2 * t["sha256"]) / t["stream_encrypt_with_digests"], 3
        ),
    }


def _verify_throughput(size: int, workdir: Path, repeat: int) -> dict:
    from coco_ai.crypto.checkpoint import encrypt_checkpoint
    from coco_ai.storage import open_store, read_manifest, verify_objects

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

    t = _best_of(
        {
            "verify": lambda: verify_objects(store, manifest),
            "mem": lambda: hashlib.sha256(data).digest(),
            "file": file_sha256,
        },
        repeat,
    )
    t_verify, t_mem, t_file = t["verify"], t["mem"], t["file"]
    shutil.rmtree(ckpt)
    n = len(data)
    return {
        "bytes": n,
        "MB_per_s": {
            "verify_without_key": round(n / t_verify / 1e6, 1),
            "sha256_in_memory": round(n / t_mem / 1e6, 1),
            "sha256_of_file": round(n / t_file / 1e6, 1),
        },
        "ratio_verify_vs_sha256_in_memory": round(t_mem / t_verify, 3),
        "ratio_verify_vs_sha256_of_file": round(t_file / t_verify, 3),
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
from coco_ai.storage import open_store, read_manifest, verify_objects

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
    ap.add_argument("--repeat", type=int, default=None, help="runs per throughput figure")
    args = ap.parse_args()
    segment = 4 * MIB
    if args.quick:
        tp_size, mem_sizes, repeat = 64 * MIB, [8 * MIB, 64 * MIB], args.repeat or 3
    else:
        tp_size, mem_sizes, repeat = (
            1024 * MIB,
            [64 * MIB, 1024 * MIB, 4096 * MIB],
            args.repeat or 3,
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
