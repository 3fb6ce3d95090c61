"""A multi-file (sharded safetensors) model through encrypt, verify and decrypt with flat memory.

The test tier uses 256 MiB of sparse shards (160 MiB straight into S3: moto's server is slow);
benchmarks/bench_checkpoint.py runs the same operations on 4 GiB. Each operation runs in a
fresh interpreter that reports its peak RSS above the RSS it had after its imports (Linux
`clear_refs` 5 resets the high-water mark; for S3 after one tiny checkpoint loaded its clients).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.crypto.checkpoint import decrypt_checkpoint
from coco_ai.crypto.transfer import read_manifest, verify_objects
from coco_ai.storage import open_store

pytestmark = pytest.mark.timeout(300)

MIB = 1024 * 1024
SHARDS = 4
SHARD_SIZE = 64 * MIB
MEMORY_LIMIT_MIB = 64  # the goal: flat, < 64 MiB above the interpreter

CHILD = r"""
import json, os, sys
from pathlib import Path
from coco_ai.crypto.checkpoint import (
    decrypt_checkpoint, encrypt_checkpoint, encrypt_checkpoint_to_store,
)
from coco_ai.crypto.transfer import read_manifest, verify_objects
from coco_ai.storage import open_store

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

op, root, kek = sys.argv[1], Path(sys.argv[2]), bytes.fromhex(sys.argv[3])
if op == "encrypt_to_s3":  # the S3 clients are the interpreter's baseline, not per-byte memory
    uri, options = sys.argv[4], json.loads(sys.argv[5])
    (root / "warm").mkdir()
    (root / "warm" / "w").write_bytes(b"w")
    encrypt_checkpoint_to_store(root / "warm", uri + "-warm", kek=kek,
                                key_uri="kbs:///coco-ai/checkpoint/big", run_id="big", meta={},
                                storage_options=options)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
if op == "encrypt":
    encrypt_checkpoint(root / "model", root / "ckpt", kek=kek,
                       key_uri="kbs:///coco-ai/checkpoint/big", run_id="big", meta={})
elif op == "encrypt_to_s3":
    encrypt_checkpoint_to_store(root / "model", uri, kek=kek,
                                key_uri="kbs:///coco-ai/checkpoint/big", run_id="big", meta={},
                                storage_options=options)
elif op == "verify":
    store = open_store(str(root / "ckpt"))
    verify_objects(store, read_manifest(store)[0])
else:
    decrypt_checkpoint(root / "ckpt", root / "out", kek=kek)
print(json.dumps({"above_mib": (status("VmHWM") - base) / 1024}))
"""


def sparse_model(root: Path, shard_size: int = SHARD_SIZE) -> Path:
    d = root / "model"
    d.mkdir()
    for i in range(SHARDS):
        with open(d / f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors", "wb") as f:
            f.truncate(shard_size)
            f.seek(i * MIB)  # a few distinct bytes per shard, the rest holes
            f.write(f"shard {i}".encode() * 1000)
    (d / "config.json").write_bytes(b'{"architectures": ["LlamaForCausalLM"]}')
    return d


def digest_tree(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                out[p.relative_to(d).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux clear_refs")
def test_sharded_model_round_trip_with_flat_memory(tmp_path):
    model = sparse_model(tmp_path)
    kek = os.urandom(32).hex()
    peaks = {}
    for op in ("encrypt", "verify", "decrypt"):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, op, str(tmp_path), kek],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[op] = json.loads(done.stdout)["above_mib"]
    assert digest_tree(tmp_path / "out") == digest_tree(model)
    assert len(list((tmp_path / "ckpt" / "objects").iterdir())) == SHARDS + 1
    assert all(peak < MEMORY_LIMIT_MIB for peak in peaks.values()), peaks


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux clear_refs")
def test_sharded_model_straight_into_s3_with_flat_memory(tmp_path, moto_endpoint, s3_admin):
    """Encrypted into moto's S3 server with no local ciphertext: 160 MiB, each object (40 MiB)
    held whole would pass the bound with the segments; sent in 8 MiB parts, then verified and
    decrypted from there."""
    model = sparse_model(tmp_path, shard_size=40 * MIB)
    bucket = f"big-{os.urandom(6).hex()}"
    s3_admin.create_bucket(Bucket=bucket)
    options = {
        "endpoint_url": moto_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    uri, kek = f"s3://{bucket}/ckpt", os.urandom(32)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "encrypt_to_s3", str(tmp_path), kek.hex(), uri,
         json.dumps(options)],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    peak = json.loads(done.stdout)["above_mib"]
    store = open_store(uri, **options)
    manifest = read_manifest(store)[0]
    verify_objects(store, manifest)
    assert len(manifest.files) == SHARDS + 1
    assert manifest.files[1].ciphertext_size > 2 * 8 * MIB  # several parts per object
    decrypt_checkpoint(uri, tmp_path / "out", kek=kek, storage_options=options)
    assert digest_tree(tmp_path / "out") == digest_tree(model)
    assert peak < MEMORY_LIMIT_MIB, peak
