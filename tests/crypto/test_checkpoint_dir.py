"""Checkpoint directories: encrypt/decrypt, manifest contents, and checkpoint-level tampering.

Every failing case also asserts that no destination and no staging directory is left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import blake3
import pytest

from coco_ai.crypto.checkpoint import decrypt_checkpoint, encrypt_checkpoint
from coco_ai.crypto.errors import (
    ContextMismatchError,
    IncompleteCheckpointError,
    IntegrityError,
    KeyUnwrapError,
    ManifestError,
    SegmentAuthError,
)
from coco_ai.crypto.manifest import MANIFEST_FILE, Manifest
from coco_ai.crypto.stream import read_header
from coco_ai.crypto.transfer import verify_objects
from coco_ai.kbs.wire import canonical_json
from coco_ai.storage import open_store

from .helpers import KEY_URI, SEGMENT, leftovers

META = {
    "base_model_digest": "sha256:" + "1" * 64,
    "dataset_digest": "sha256:" + "2" * 64,
    "training_config_digest": "sha256:" + "3" * 64,
    "metrics": {"eval_loss": 1.25, "exact_match": 0.75, "steps": 40},
}


def make(plain: Path, dst: Path, kek: bytes, *, run_id="run-a", **meta) -> Manifest:
    return encrypt_checkpoint(
        plain,
        dst,
        kek=kek,
        key_uri=KEY_URI,
        run_id=run_id,
        meta={**META, **meta},
        segment_size=SEGMENT,
    )


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists()
    assert leftovers(dst.parent) == []


def test_round_trip(plain_dir, tmp_path, kek):
    m = make(plain_dir, tmp_path / "ckpt", kek, created_at=1_700_000_000)
    out = tmp_path / "out"
    assert decrypt_checkpoint(tmp_path / "ckpt", out, kek=kek) == m
    for p in plain_dir.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(plain_dir)).read_bytes() == p.read_bytes()
    assert leftovers(tmp_path) == []


def test_manifest_lists_every_file_with_digests(plain_dir, tmp_path, kek):
    m = make(plain_dir, tmp_path / "ckpt", kek, created_at=1_700_000_000, checkpoint_id="ck-1")
    raw = (tmp_path / "ckpt" / MANIFEST_FILE).read_bytes()
    assert raw == canonical_json(json.loads(raw)) == m.canonical_bytes()
    d = json.loads(raw)
    # manifest version 5 lists files of format 2
    assert d["format_version"] == 5 and d["encryption"]["format_version"] == 2
    assert d["run_id"] == "run-a" and d["key_uri"] == KEY_URI
    assert d["checkpoint_id"] == "ck-1" and d["created_at"] == 1_700_000_000
    assert d["metrics"] == META["metrics"] and d["dataset_digest"] == META["dataset_digest"]
    paths = sorted(str(p.relative_to(plain_dir)) for p in plain_dir.rglob("*") if p.is_file())
    assert [f["path"] for f in d["files"]] == paths
    for f in d["files"]:
        plain = (plain_dir / f["path"]).read_bytes()
        obj = (tmp_path / "ckpt" / "objects" / f["ciphertext_blake3"]).read_bytes()
        # no plaintext digest (the signed ciphertext digest identifies the file), and the
        # ciphertext is named by BLAKE3 alone
        assert f["size"] == len(plain) and "sha256" not in f and "ciphertext_sha256" not in f
        assert f["ciphertext_size"] == len(obj)
        assert f["ciphertext_blake3"] == blake3.blake3(obj).hexdigest()
        header = read_header(io.BytesIO(obj)).raw
        assert obj.startswith(header) and f["header_sha256"] == hashlib.sha256(header).hexdigest()
        assert f["segment_size"] == SEGMENT
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["manifest.json", "objects"]


def test_unknown_meta_key_refused(plain_dir, tmp_path, kek):
    with pytest.raises(ManifestError, match="unknown manifest meta"):
        make(plain_dir, tmp_path / "ckpt", kek, secret_key="x")
    assert_nothing_written(tmp_path / "ckpt")


def test_symlink_in_source_refused(plain_dir, tmp_path, kek):
    (plain_dir / "link").symlink_to(plain_dir / "empty.txt")
    with pytest.raises(ValueError, match="not a regular file"):
        make(plain_dir, tmp_path / "ckpt", kek)
    assert_nothing_written(tmp_path / "ckpt")


def test_existing_destination_refused(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    before = sorted(p.name for p in (tmp_path / "ckpt" / "objects").iterdir())
    with pytest.raises(FileExistsError):
        make(plain_dir, tmp_path / "ckpt", kek)
    assert sorted(p.name for p in (tmp_path / "ckpt" / "objects").iterdir()) == before


def test_wrong_key(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    with pytest.raises(KeyUnwrapError):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=os.urandom(32))
    assert_nothing_written(tmp_path / "out")


def test_flipped_bit_in_last_segment_leaves_nothing(plain_dir, tmp_path, kek):
    """Earlier files and segments decrypt fine; the failure still discards all output."""
    m = make(plain_dir, tmp_path / "ckpt", kek)
    big = next(f for f in m.files if f.path == "adapter_model.safetensors")
    obj = tmp_path / "ckpt" / big.object_name
    data = bytearray(obj.read_bytes())
    data[-3] ^= 0x80
    obj.write_bytes(bytes(data))
    with pytest.raises(SegmentAuthError) as e:
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert e.value.index == 3
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(IntegrityError, match="ciphertext BLAKE3 differs"):
        verify_objects(open_store(str(tmp_path / "ckpt")), m)


def test_file_swapped_from_another_checkpoint(plain_dir, tmp_path, kek):
    """Same run, same key, same path, another checkpoint: the header binds the checkpoint id."""
    m1 = make(plain_dir, tmp_path / "c1", kek)
    m2 = make(plain_dir, tmp_path / "c2", kek)
    e1 = next(f for f in m1.files if f.path == "adapter_model.safetensors")
    e2 = next(f for f in m2.files if f.path == "adapter_model.safetensors")
    shutil.copy(tmp_path / "c2" / e2.object_name, tmp_path / "c1" / e1.object_name)
    with pytest.raises(IntegrityError, match="header is not the one its manifest lists"):
        decrypt_checkpoint(tmp_path / "c1", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(IntegrityError):
        verify_objects(open_store(str(tmp_path / "c1")), m1)
    # the (unsigned) manifest edited to list the swapped file's digests: the header's context
    swapped = e1.__class__(**{**e2.__dict__})
    forged = Manifest(
        **{**m1.__dict__, "files": tuple(swapped if f is e1 else f for f in m1.files)}
    )
    (tmp_path / "c1" / MANIFEST_FILE).write_bytes(forged.canonical_bytes())
    (tmp_path / "c1" / e1.object_name).rename(tmp_path / "c1" / e2.object_name)
    with pytest.raises(ContextMismatchError, match=m2.checkpoint_id):
        decrypt_checkpoint(tmp_path / "c1", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_another_encryption_of_the_same_file_refused(plain_dir, tmp_path, kek):
    """A retry encrypts the same file again (same run, checkpoint id and path, new data key):
    authentic under the key and bound to the same context, but not the file the manifest lists.
    Decryption compares the header's SHA-256 with the manifest before using any key."""
    m1 = make(plain_dir, tmp_path / "c1", kek, checkpoint_id="ck-retried")
    m2 = make(plain_dir, tmp_path / "c2", kek, checkpoint_id="ck-retried")
    e1 = next(f for f in m1.files if f.path == "adapter_model.safetensors")
    e2 = next(f for f in m2.files if f.path == "adapter_model.safetensors")
    assert e1.header_sha256 != e2.header_sha256
    shutil.copy(tmp_path / "c2" / e2.object_name, tmp_path / "c1" / e1.object_name)
    with pytest.raises(IntegrityError, match="header is not the one its manifest lists"):
        decrypt_checkpoint(tmp_path / "c1", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(IntegrityError, match="ciphertext BLAKE3 differs"):
        verify_objects(open_store(str(tmp_path / "c1")), m1)


def test_files_swapped_within_checkpoint(tmp_path, kek):
    """Two files of one checkpoint exchanged (manifest rewritten to match): path binding."""
    src = tmp_path / "plain"
    src.mkdir()
    (src / "a.bin").write_bytes(b"A" * 100)
    (src / "b.bin").write_bytes(b"B" * 100)
    m = make(src, tmp_path / "ckpt", kek)
    a, b = m.files
    forged = Manifest(
        **{
            **m.__dict__,
            "files": (
                a.__class__(**{**a.__dict__, "path": "b.bin"}),
                b.__class__(**{**b.__dict__, "path": "a.bin"}),
            ),
        }
    )
    (tmp_path / "ckpt" / MANIFEST_FILE).write_bytes(forged.canonical_bytes())
    with pytest.raises(ContextMismatchError, match=r"a\.bin"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_missing_file(plain_dir, tmp_path, kek):
    m = make(plain_dir, tmp_path / "ckpt", kek)
    (tmp_path / "ckpt" / m.files[0].object_name).unlink()
    with pytest.raises(IntegrityError, match=f"missing file.*{m.files[0].path}"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_extra_file(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    (tmp_path / "ckpt" / "objects" / ("f" * 64)).write_bytes(b"smuggled")
    with pytest.raises(IntegrityError, match="extra file"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_manifest_digest_edited(plain_dir, tmp_path, kek):
    """Unsigned manifest edited consistently (canonical): the recorded plaintext size (bound
    in the authenticated header) no longer fits."""
    m = make(plain_dir, tmp_path / "ckpt", kek)
    f0 = m.files[0]
    edited = Manifest(
        **{
            **m.__dict__,
            "files": (f0.__class__(**{**f0.__dict__, "size": f0.size + 1}), *m.files[1:]),
        }
    )
    (tmp_path / "ckpt" / MANIFEST_FILE).write_bytes(edited.canonical_bytes())
    with pytest.raises(IntegrityError, match="digests differ"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_manifest_not_canonical(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    p = tmp_path / "ckpt" / MANIFEST_FILE
    p.write_bytes(json.dumps(json.loads(p.read_bytes()), indent=1).encode())
    with pytest.raises(ManifestError, match="canonical"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_manifest_path_traversal_refused(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    p = tmp_path / "ckpt" / MANIFEST_FILE
    d = json.loads(p.read_bytes())
    d["files"][0]["path"] = "../../etc/evil"
    p.write_bytes(canonical_json(d))
    with pytest.raises(ManifestError, match=r"'\.\.'"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")


def test_no_manifest_is_incomplete(plain_dir, tmp_path, kek):
    make(plain_dir, tmp_path / "ckpt", kek)
    (tmp_path / "ckpt" / MANIFEST_FILE).unlink()
    with pytest.raises(IncompleteCheckpointError):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert_nothing_written(tmp_path / "out")
