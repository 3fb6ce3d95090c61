"""Object-store failures during a checkpoint transfer (coco_ai.crypto.transfer.copy_checkpoint):
the connection reset and 5xx mid multipart upload on moto's real S3 API server (behind the fault
proxy), a lost completion answer, and a full disk (a real tmpfs, mounted in a user namespace).
Each: the transfer recovers or fails closed, no manifest names incomplete objects, and no
multipart upload or staging bytes are left behind (a retry resumes them, or the sweep aborts)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid

import pytest

from coco_ai.crypto.errors import IncompleteCheckpointError
from coco_ai.crypto.transfer import copy_checkpoint, is_complete, read_manifest, verify_objects
from coco_ai.storage import open_store
from coco_ai.storage.store import PART_REUSED, PART_UPLOADED
from tests.faults.conftest import Stopwatch
from tests.faults.full_disk import in_mount_namespace, on_tmpfs
from tests.storage.conftest import MIB, recorder

pytestmark = pytest.mark.timeout(180)
PARTS = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}


def _part(number: int | None = None):
    """Matches S3 UploadPart requests (of one part number, or any)."""

    def match(method: str, target: str) -> bool:
        if method != "PUT" or "uploadId=" not in target:
            return False
        return number is None or f"partNumber={number}&" in target + "&"

    return match


def _complete(method: str, target: str) -> bool:
    return method == "POST" and "uploadId=" in target


@pytest.fixture
def bucket(s3_admin):
    name = f"faults-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


def _options(endpoint: str) -> dict:
    return {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        # botocore's own retries, bounded for the test (its default: 5 attempts, legacy mode)
        "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}},
    }


def _open_uploads(s3_admin, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _copy(ckpt_dir, uri: str, endpoint: str, events=None):
    return copy_checkpoint(
        ckpt_dir, uri, dst_options={**_options(endpoint), **PARTS}, on_progress=events
    )


@pytest.fixture(scope="module")
def fault_free_s(tmp_path_factory, moto_endpoint, s3_admin):
    """Seconds a fault-free transfer of the same checkpoint takes through the proxy (baseline)."""
    from urllib.parse import urlsplit

    from coco_ai.crypto.checkpoint import encrypt_checkpoint
    from tests.faults.proxy import FaultProxy

    base = tmp_path_factory.mktemp("baseline")
    (base / "plain").mkdir()
    (base / "plain" / "model.safetensors").write_bytes(os.urandom(12 * MIB))
    encrypt_checkpoint(
        base / "plain",
        base / "ckpt",
        kek=os.urandom(32),
        key_uri="kbs:///a/b/c",
        run_id="b",
        meta={},
    )
    s3_admin.create_bucket(Bucket="faults-baseline")
    parts = urlsplit(moto_endpoint)
    proxy = FaultProxy((parts.hostname, parts.port))
    try:
        clock = Stopwatch()
        _copy(base / "ckpt", "s3://faults-baseline/runs/b", proxy.url)
        return clock.elapsed()
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("fault", "inject"),
    [
        ("5xx ×2 on UploadPart", lambda proxy: proxy.fail(2, match=_part(2))),
        ("connection reset mid-part", lambda proxy: proxy.cut(1, match=_part(2))),
        ("5xx ×2 on CompleteMultipartUpload", lambda proxy: proxy.fail(2, match=_complete)),
    ],
    ids=["5xx-upload-part", "reset-mid-part", "5xx-complete"],
)
def test_transient_fault_mid_multipart_upload_recovers(
    ckpt_dir, bucket, s3_proxy, s3_admin, moto_endpoint, matrix, fault, inject, fault_free_s
):
    uri = f"s3://{bucket}/runs/transient"
    inject(s3_proxy)
    clock = Stopwatch()
    manifest = _copy(ckpt_dir, uri, s3_proxy.url)
    elapsed = clock.elapsed()
    assert any(s.fault for s in s3_proxy.seen), "the fault was never hit"
    verify_objects(open_store(uri, **_options(moto_endpoint)), manifest)
    assert _open_uploads(s3_admin, bucket) == []
    matrix(
        component="object store",
        fault=fault,
        step="checkpoint upload (S3 multipart)",
        outcome="recovered",
        recover_s=elapsed,
        baseline_s=fault_free_s,
        keys_left="n/a",
        artefacts_left="none (no open multipart upload)",
    )


def _fail_closed(ckpt_dir, uri, proxy, moto_endpoint):
    """Part 2 never gets through: the transfer fails, and a reader sees no checkpoint."""
    proxy.cut(100, match=_part(2))
    with pytest.raises(Exception) as err:  # botocore's error after its own retries
        _copy(ckpt_dir, uri, proxy.url)
    proxy.clear()
    assert not is_complete(uri, **_options(moto_endpoint))
    with pytest.raises(IncompleteCheckpointError):
        read_manifest(open_store(uri, **_options(moto_endpoint)))
    return err.value


def _retry_resumes_after_the_first_part(ckpt_dir, uri, via, moto_endpoint, s3_admin, bucket):
    """The transfer again (through ``via``): it reuses the part the failed one completed, sends
    the other two, completes, and leaves no multipart upload open."""
    events = recorder()
    manifest = _copy(ckpt_dir, uri, via, events)
    parts = {
        k: [e.part for e in events.events if e.kind == k] for k in (PART_REUSED, PART_UPLOADED)
    }
    assert parts == {PART_REUSED: [1], PART_UPLOADED: [2, 3]}
    verify_objects(open_store(uri, **_options(moto_endpoint)), manifest)
    assert _open_uploads(s3_admin, bucket) == []


def test_store_down_mid_upload_fails_closed_and_the_retry_resumes(
    ckpt_dir, bucket, s3_proxy, s3_admin, moto_endpoint, matrix
):
    uri = f"s3://{bucket}/runs/resume"
    _fail_closed(ckpt_dir, uri, s3_proxy, moto_endpoint)
    assert len(_open_uploads(s3_admin, bucket)) == 1  # kept for the retry to resume
    clock = Stopwatch()
    _retry_resumes_after_the_first_part(
        ckpt_dir, uri, s3_proxy.url, moto_endpoint, s3_admin, bucket
    )
    elapsed = clock.elapsed()
    matrix(
        component="object store",
        fault="connection reset on every try of one part (store unusable)",
        step="checkpoint upload (S3 multipart)",
        outcome="failed closed; the task's retry resumes (1 of 3 parts reused)",
        recover_s=elapsed,
        keys_left="n/a",
        artefacts_left="none after the retry",
    )


def test_abandoned_multipart_upload_is_swept(
    ckpt_dir, bucket, s3_proxy, s3_admin, moto_endpoint, matrix
):
    uri = f"s3://{bucket}/runs/abandoned"
    _fail_closed(ckpt_dir, uri, s3_proxy, moto_endpoint)
    ((key, initiated),) = [
        (u["Key"], u["Initiated"].timestamp())
        for u in s3_admin.list_multipart_uploads(Bucket=bucket)["Uploads"]
    ]
    store = open_store(uri, **_options(moto_endpoint))
    # moto reports one fixed Initiated date for every upload, so "now" is given relative to it
    young, old = initiated + 60, initiated + 7200
    assert store.abort_incomplete_uploads(older_than_s=3600, now=young) == []  # may resume yet
    assert _open_uploads(s3_admin, bucket) == [key]
    assert store.abort_incomplete_uploads(older_than_s=3600, now=old) == [key]
    assert _open_uploads(s3_admin, bucket) == []
    assert not is_complete(uri, **_options(moto_endpoint))
    matrix(
        component="object store",
        fault="upload abandoned after failing (never retried)",
        step="checkpoint upload (S3 multipart)",
        outcome="failed closed; swept by Store.abort_incomplete_uploads",
        recover_s=None,
        keys_left="n/a",
        artefacts_left="one open multipart upload until swept; none after",
    )


def test_lost_completion_answer_fails_closed_and_the_retry_finishes(
    ckpt_dir, bucket, s3_proxy, s3_admin, moto_endpoint, matrix
):
    """S3 completed the object but the answer was cut. botocore repeats the completion: moto
    accepts it; a store that answers NoSuchUpload fails the transfer without a manifest, and the
    retry finds the object verified and writes the manifest (both paths are asserted)."""
    uri = f"s3://{bucket}/runs/lost-answer"
    s3_proxy.cut_response(1, match=_complete)
    clock = Stopwatch()
    try:
        _copy(ckpt_dir, uri, s3_proxy.url)
        first = "recovered"  # the store accepted botocore's repeated completion
    except Exception:  # NoSuchUpload from the repeated completion (real S3 may answer so)
        first = "failed closed"
        assert not is_complete(uri, **_options(moto_endpoint))
        _copy(ckpt_dir, uri, s3_proxy.url)
    assert next(s.fault for s in s3_proxy.seen if _complete(s.method, s.target)) == "cut_response"
    manifest, _ = read_manifest(open_store(uri, **_options(moto_endpoint)))
    verify_objects(open_store(uri, **_options(moto_endpoint)), manifest)
    assert _open_uploads(s3_admin, bucket) == []
    matrix(
        component="object store",
        fault="connection cut after S3 completed the upload",
        step="checkpoint upload (S3 multipart)",
        outcome=first if first == "recovered" else "failed closed; the task's retry finishes",
        recover_s=clock.elapsed(),
        keys_left="n/a",
        artefacts_left="none",
    )


_FULL_DISK = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from coco_ai.crypto.transfer import copy_checkpoint, is_complete
    from coco_ai.storage import open_store
    src, mnt = sys.argv[1], sys.argv[2]  # mnt: an 8 MiB tmpfs (full_disk.on_tmpfs)
    dst = os.path.join(mnt, "ckpt")
    out = {}
    try:
        copy_checkpoint(src, dst)
        out["first"] = "completed"
    except OSError as exc:
        out["first"] = f"{type(exc).__name__}: errno {exc.errno} {exc.strerror}"
    out["complete_after_failure"] = is_complete(dst)
    out["left"] = sorted(
        os.path.relpath(os.path.join(d, f), dst) for d, _, fs in os.walk(dst) for f in fs
    )
    # Space is freed (the tmpfs grows): the retry resumes and completes.
    subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
    copy_checkpoint(src, dst)
    out["complete_after_retry"] = is_complete(dst)
    out["uploads_after_retry"] = open_store(dst).abort_incomplete_uploads(older_than_s=0)
    print(json.dumps(out))
    """
)


def test_full_disk_fails_closed_and_the_retry_resumes(ckpt_dir, tmp_path, matrix):
    """A real ENOSPC: the destination is an 8 MiB tmpfs (mounted in a user namespace, no root
    needed) and the checkpoint is 12 MiB."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    clock = Stopwatch()
    proc = in_mount_namespace(
        on_tmpfs(mnt, "8m", [sys.executable, "-c", _FULL_DISK, str(ckpt_dir), str(mnt)])
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["first"].startswith("OSError: errno 28"), result  # ENOSPC
    assert result["complete_after_failure"] is False
    assert "manifest.json" not in result["left"]
    assert any(p.startswith(".uploads/") for p in result["left"]), result["left"]
    assert result["complete_after_retry"] is True
    assert result["uploads_after_retry"] == []
    matrix(
        component="object store",
        fault="store full (ENOSPC on an 8 MiB tmpfs)",
        step="checkpoint upload (local store)",
        outcome="failed closed; the retry after freeing space resumes",
        recover_s=clock.elapsed(),
        keys_left="n/a",
        artefacts_left="partial bytes in .uploads/ until the retry resumes them (or the sweep)",
    )


@pytest.mark.parametrize("damage", ["manifest missing", "object missing"])
def test_partially_written_checkpoint_is_never_uploaded(
    ckpt_dir, bucket, s3_admin, moto_endpoint, matrix, damage
):
    """Staging holds a checkpoint a crash left half-written: the upload refuses it before
    writing anything, and the destination stays empty."""
    from coco_ai.crypto.errors import IntegrityError
    from coco_ai.crypto.manifest import MANIFEST_FILE, OBJECTS_DIR

    if damage == "manifest missing":
        (ckpt_dir / MANIFEST_FILE).unlink()
        expected = IncompleteCheckpointError
    else:
        next((ckpt_dir / OBJECTS_DIR).iterdir()).unlink()
        expected = IntegrityError
    uri = f"s3://{bucket}/runs/partial"
    with pytest.raises(expected):
        _copy(ckpt_dir, uri, moto_endpoint)
    assert s3_admin.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert _open_uploads(s3_admin, bucket) == []
    matrix(
        component="object store",
        fault=f"partially written checkpoint in staging ({damage})",
        step="checkpoint upload",
        outcome="failed closed before writing",
        recover_s=None,
        keys_left="n/a",
        artefacts_left="none at the destination",
    )


# The upload task's process, killed outright (SIGKILL: the OOM killer, a lost worker) or reaching
# its execution_timeout (Airflow's own SIGALRM timeout, as the Task SDK's runner applies it; the
# process then exits 3) right after its first part reached the store: the same transfer a task's
# attempt runs.
_INTERRUPTED_MID_UPLOAD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout
    from coco_ai.crypto.transfer import copy_checkpoint
    from coco_ai.storage.store import PART_UPLOADED

    src, uri, options, how = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]

    def progress(event):
        if event.kind == PART_UPLOADED and event.part == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            with timeout(1):  # the deadline passes while the next part is on its way
                time.sleep(600)

    try:
        copy_checkpoint(src, uri, dst_options=options, on_progress=progress)
    except AirflowTaskTimeout:
        sys.exit(3)
    """
)


@pytest.mark.parametrize("how", ["kill", "timeout"])
def test_upload_process_interrupted_mid_transfer_and_its_retry_resumes(
    ckpt_dir, bucket, s3_admin, moto_endpoint, matrix, how
):
    import subprocess

    uri = f"s3://{bucket}/runs/interrupted"
    options = {**_options(moto_endpoint), **PARTS}
    clock = Stopwatch()
    argv = [str(ckpt_dir), uri, json.dumps(options), how]
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_MID_UPLOAD, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == (-9 if how == "kill" else 3), proc.stderr
    # a reader sees no checkpoint; the started multipart upload is kept for the retry
    assert not is_complete(uri, **_options(moto_endpoint))
    with pytest.raises(IncompleteCheckpointError):
        read_manifest(open_store(uri, **_options(moto_endpoint)))
    assert len(_open_uploads(s3_admin, bucket)) == 1
    # the task's next attempt
    _retry_resumes_after_the_first_part(
        ckpt_dir, uri, moto_endpoint, moto_endpoint, s3_admin, bucket
    )
    elapsed = clock.elapsed()
    matrix(
        component="Airflow",
        fault=(
            "upload task process killed (SIGKILL) after its first part"
            if how == "kill"
            else "upload task's execution_timeout passed after its first part"
        ),
        step="checkpoint upload (S3 multipart)",
        outcome="failed closed (no manifest, nothing readable); the retry resumes (1 of 3 parts "
        "reused)",
        recover_s=elapsed,
        keys_left="n/a (the upload holds no key)",
        artefacts_left="one open multipart upload until the retry (or the sweep)",
    )
