"""Local (file://) store: atomic objects, content-addressed idempotent uploads, crash resume."""

from __future__ import annotations

import os

import pytest

from coco_ai.crypto.checkpoint import decrypt_checkpoint
from coco_ai.crypto.errors import IncompleteCheckpointError, IntegrityError, ManifestError
from coco_ai.crypto.manifest import MANIFEST_FILE
from coco_ai.crypto.transfer import (
    copy_checkpoint,
    is_complete,
    read_manifest,
    upload_checkpoint,
    verify_objects,
)
from coco_ai.storage import open_store
from coco_ai.storage.store import (
    CHUNK_RESUMED,
    CHUNK_SIZE,
    CHUNK_WRITTEN,
    OBJECT_SKIPPED,
    OBJECT_WRITTEN,
)

from .conftest import Crash, crash_at, recorder


def test_store_basics(tmp_path):
    store = open_store(f"file://{tmp_path}/s")
    store.put_bytes("a/b.txt", b"hello")
    assert store.exists("a/b.txt") and store.read_bytes("a/b.txt") == b"hello"
    assert store.list("a") == ["a/b.txt"] and store.size("a/b.txt") == 5
    assert store.list("absent") == []
    for bad in ("../x", "/abs", "a/./b", ""):
        with pytest.raises(ValueError):
            store.put_bytes(bad, b"x")


def test_upload_then_retry_is_a_no_op(ckpt_dir, tmp_path):
    dst = tmp_path / "durable"
    m = upload_checkpoint(ckpt_dir, dst)
    assert is_complete(str(dst))
    verify_objects(open_store(str(dst)), m)
    stamps = {p: p.stat().st_mtime_ns for p in (dst / "objects").iterdir()}
    events = recorder()
    assert upload_checkpoint(ckpt_dir, dst, on_progress=events) == m
    assert events.events == []
    assert {p: p.stat().st_mtime_ns for p in (dst / "objects").iterdir()} == stamps


def test_interrupted_mid_object_then_resumed(ckpt_dir, tmp_path, plain_dir, kek):
    dst = tmp_path / "durable"
    # objects go in path order: the small config (one chunk), then 8 MiB of the big one, death
    crash = crash_at(CHUNK_WRITTEN, 2)
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, dst, on_progress=crash)
    assert not is_complete(str(dst))
    with pytest.raises(IncompleteCheckpointError):
        read_manifest(open_store(str(dst)))
    m, _ = read_manifest(open_store(str(ckpt_dir)))
    big = next(e for e in m.files if e.path == "model.safetensors")
    assert not (dst / big.object_name).exists()  # never a partial object under its name
    assert (dst / ".uploads" / big.object_name).stat().st_size == CHUNK_SIZE

    events = recorder()
    assert upload_checkpoint(ckpt_dir, dst, on_progress=events) == m
    resumed = [e for e in events.events if e.kind == CHUNK_RESUMED]
    assert len(resumed) == 1 and resumed[0].nbytes == CHUNK_SIZE
    verify_objects(open_store(str(dst)), m)
    decrypt_checkpoint(dst, tmp_path / "out", kek=kek)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        plain_dir / "model.safetensors"
    ).read_bytes()


def test_interrupted_between_objects_then_resumed(ckpt_dir, tmp_path):
    dst = tmp_path / "durable"
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, dst, on_progress=crash_at(OBJECT_WRITTEN, 1))
    assert not is_complete(str(dst))
    events = recorder()
    m = upload_checkpoint(ckpt_dir, dst, on_progress=events)
    kinds = [e.kind for e in events.events]
    assert kinds.count(OBJECT_SKIPPED) == 1 and kinds.count(OBJECT_WRITTEN) == 1
    verify_objects(open_store(str(dst)), m)


def test_garbage_partial_upload_is_redone(ckpt_dir, tmp_path):
    """A partial whose bytes are not the source's prefix (torn write) is detected and redone."""
    dst = tmp_path / "durable"
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, dst, on_progress=crash_at(CHUNK_WRITTEN, 2))
    (partial,) = (dst / ".uploads" / "objects").iterdir()
    partial.write_bytes(os.urandom(partial.stat().st_size))
    m = upload_checkpoint(ckpt_dir, dst)
    verify_objects(open_store(str(dst)), m)


def test_tampered_source_is_not_copied(ckpt_dir, tmp_path):
    m, _ = read_manifest(open_store(str(ckpt_dir)))
    obj = ckpt_dir / m.files[0].object_name
    data = bytearray(obj.read_bytes())
    data[0] ^= 1
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"expected BLAKE3$"):
        copy_checkpoint(ckpt_dir, tmp_path / "durable")
    assert not (tmp_path / "durable" / MANIFEST_FILE).exists()
    assert not (tmp_path / "durable" / m.files[0].object_name).exists()


def test_copy_refuses_to_overwrite_another_checkpoint(ckpt_dir, tmp_path, plain_dir, kek):
    from coco_ai.crypto.checkpoint import encrypt_checkpoint

    other = encrypt_checkpoint(
        plain_dir, tmp_path / "other", kek=kek, key_uri="kbs:///a/b/c", run_id="r2", meta={}
    )
    upload_checkpoint(tmp_path / "other", tmp_path / "durable")
    with pytest.raises(ManifestError, match="different checkpoint"):
        copy_checkpoint(ckpt_dir, tmp_path / "durable")
    assert read_manifest(open_store(str(tmp_path / "durable")))[0] == other


def test_copy_of_incomplete_source(ckpt_dir, tmp_path):
    (ckpt_dir / MANIFEST_FILE).unlink()
    with pytest.raises(IncompleteCheckpointError):
        copy_checkpoint(ckpt_dir, tmp_path / "durable")
    assert not (tmp_path / "durable").exists()


def test_destination_object_damaged_before_retry(ckpt_dir, tmp_path):
    """An object already at the destination with wrong bytes is replaced, not trusted."""
    dst = tmp_path / "durable"
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, dst, on_progress=crash_at(OBJECT_WRITTEN, 1))
    (done,) = (dst / "objects").iterdir()
    done.write_bytes(b"bit rot")
    events = recorder()
    m = upload_checkpoint(ckpt_dir, dst, on_progress=events)
    assert [e.kind for e in events.events].count(OBJECT_SKIPPED) == 0
    verify_objects(open_store(str(dst)), m)


def test_other_fsspec_protocols_use_the_generic_store(ckpt_dir, tmp_path, kek, plain_dir):
    """Any fsspec URL works (here the in-memory filesystem): same guarantees, same layout."""
    uri = f"memory://ckpt-{os.urandom(4).hex()}/run-s"
    m = upload_checkpoint(ckpt_dir, uri)
    assert is_complete(uri)
    verify_objects(open_store(uri), m)
    decrypt_checkpoint(uri, tmp_path / "out", kek=kek)
    assert (tmp_path / "out" / "adapter_config.json").read_bytes() == (
        plain_dir / "adapter_config.json"
    ).read_bytes()
