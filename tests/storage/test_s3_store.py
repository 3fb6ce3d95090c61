"""S3 against a real S3 API server on loopback (moto): multipart, interruption, retries."""

from __future__ import annotations

import pytest

from coco_ai.crypto.checkpoint import decrypt_checkpoint
from coco_ai.crypto.errors import IncompleteCheckpointError, IntegrityError
from coco_ai.crypto.manifest import MANIFEST_FILE
from coco_ai.crypto.transfer import (
    copy_checkpoint,
    is_complete,
    read_manifest,
    upload_checkpoint,
    verify_objects,
)
from coco_ai.storage import open_store
from coco_ai.storage.store import OBJECT_SKIPPED, OBJECT_WRITTEN, PART_REUSED, PART_UPLOADED

from .conftest import MIB, Crash, crash_at, recorder

pytestmark = pytest.mark.timeout(120)
PARTS = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}


def options(s3, **extra):
    return {**s3[1], **PARTS, **extra}


def big_object_key(ckpt_dir, prefix):
    m, _ = read_manifest(open_store(str(ckpt_dir)))
    big = next(e for e in m.files if e.path == "model.safetensors")
    return f"{prefix}/{big.object_name}", big


def test_upload_multipart_and_decrypt_from_s3(s3, ckpt_dir, plain_dir, tmp_path, kek):
    uri = f"{s3[0]}/runs/run-s"
    events = recorder()
    m = upload_checkpoint(ckpt_dir, uri, on_progress=events, **options(s3))
    assert [e.part for e in events.events if e.kind == PART_UPLOADED] == [1, 2, 3]
    assert is_complete(uri, **s3[1])
    verify_objects(open_store(uri, **s3[1]), m)
    decrypt_checkpoint(uri, tmp_path / "out", kek=kek, storage_options=s3[1])
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        plain_dir / "model.safetensors"
    ).read_bytes()


def test_upload_interrupted_half_way_then_retried(s3, ckpt_dir):
    bucket = s3[0].removeprefix("s3://")
    uri = f"{s3[0]}/runs/run-s"
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, uri, on_progress=crash_at(PART_UPLOADED, 2), **options(s3))
    # The store shows no complete checkpoint and no partial object, only an open upload.
    assert not is_complete(uri, **s3[1])
    with pytest.raises(IncompleteCheckpointError):
        read_manifest(open_store(uri, **s3[1]))
    key, big = big_object_key(ckpt_dir, "runs/run-s")
    listed = s3[2].list_objects_v2(Bucket=bucket, Prefix="runs/run-s/").get("Contents", [])
    assert f"runs/run-s/{MANIFEST_FILE}" not in {o["Key"] for o in listed}
    assert key not in {o["Key"] for o in listed}
    (upload,) = s3[2].list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert upload["Key"] == key

    events = recorder()
    m = upload_checkpoint(ckpt_dir, uri, on_progress=events, **options(s3))
    by_kind = {
        k: [e.part for e in events.events if e.kind == k] for k in (PART_REUSED, PART_UPLOADED)
    }
    assert by_kind == {PART_REUSED: [1, 2], PART_UPLOADED: [3]}
    assert "Uploads" not in s3[2].list_multipart_uploads(Bucket=bucket)
    assert s3[2].head_object(Bucket=bucket, Key=key)["ContentLength"] == big.ciphertext_size
    verify_objects(open_store(uri, **s3[1]), m)


def test_retry_after_crash_between_objects(s3, ckpt_dir):
    uri = f"{s3[0]}/runs/run-s"
    with pytest.raises(Crash):
        upload_checkpoint(ckpt_dir, uri, on_progress=crash_at(OBJECT_WRITTEN, 1), **options(s3))
    assert not is_complete(uri, **s3[1])
    events = recorder()
    m = upload_checkpoint(ckpt_dir, uri, on_progress=events, **options(s3))
    kinds = [e.kind for e in events.events]
    assert kinds.count(OBJECT_SKIPPED) == 1 and kinds.count(OBJECT_WRITTEN) == 1
    verify_objects(open_store(uri, **s3[1]), m)


def test_stale_part_with_other_bytes_is_resent(s3, ckpt_dir):
    """A leftover part whose bytes differ (ETag mismatch) is uploaded again, not reused."""
    bucket = s3[0].removeprefix("s3://")
    uri = f"{s3[0]}/runs/run-s"
    key, _ = big_object_key(ckpt_dir, "runs/run-s")
    upload_id = s3[2].create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3[2].upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"\0" * (5 * MIB)
    )
    events = recorder()
    m = upload_checkpoint(ckpt_dir, uri, on_progress=events, **options(s3))
    assert [e.part for e in events.events if e.kind == PART_REUSED] == []
    verify_objects(open_store(uri, **s3[1]), m)


def test_copy_staging_to_durable_is_idempotent(s3, ckpt_dir, tmp_path, kek):
    staging, durable = f"{s3[0]}/staging/run-s", f"{s3[0]}/durable/run-s"
    m = upload_checkpoint(ckpt_dir, staging, **options(s3))
    opts = options(s3)
    assert copy_checkpoint(staging, durable, src_options=opts, dst_options=opts) == m
    events = recorder()
    assert (
        copy_checkpoint(staging, durable, src_options=opts, dst_options=opts, on_progress=events)
        == m
    )
    assert events.events == []
    decrypt_checkpoint(durable, tmp_path / "out", kek=kek, storage_options=s3[1])


def test_copy_interrupted_then_retried(s3, ckpt_dir):
    staging, durable = f"{s3[0]}/staging/run-s", f"{s3[0]}/durable/run-s"
    opts = options(s3)
    upload_checkpoint(ckpt_dir, staging, **opts)
    with pytest.raises(Crash):
        copy_checkpoint(
            staging,
            durable,
            src_options=opts,
            dst_options=opts,
            on_progress=crash_at(PART_UPLOADED, 1),
        )
    assert not is_complete(durable, **s3[1])
    events = recorder()
    m = copy_checkpoint(staging, durable, src_options=opts, dst_options=opts, on_progress=events)
    assert [e.part for e in events.events if e.kind == PART_REUSED] == [1]
    verify_objects(open_store(durable, **s3[1]), m)


def test_tampered_staging_object_is_not_copied(s3, ckpt_dir):
    bucket = s3[0].removeprefix("s3://")
    staging, durable = f"{s3[0]}/staging/run-s", f"{s3[0]}/durable/run-s"
    opts = options(s3)
    upload_checkpoint(ckpt_dir, staging, **opts)
    key, _big = big_object_key(ckpt_dir, "staging/run-s")
    body = bytearray(s3[2].get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 1
    s3[2].put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(IntegrityError, match=r"expected BLAKE3$"):
        copy_checkpoint(staging, durable, src_options=opts, dst_options=opts)
    assert not is_complete(durable, **s3[1])
    # the failed multipart upload was aborted, nothing dangles
    assert "Uploads" not in s3[2].list_multipart_uploads(Bucket=bucket)
