"""Encryption straight into a store (no local ciphertext): S3 (moto's server) and local."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import blake3
import pytest

from coco_ai.crypto.checkpoint import decrypt_checkpoint, encrypt_checkpoint_to_store
from coco_ai.crypto.errors import IntegrityError
from coco_ai.crypto.manifest import MANIFEST_FILE, OBJECTS_DIR, file_context
from coco_ai.crypto.stream import encrypt_to_writer
from coco_ai.crypto.transfer import is_complete, read_manifest, verify_objects
from coco_ai.storage import ObjectIntegrityError, open_store
from coco_ai.storage.hashing import HASH_NAMES
from coco_ai.storage.store import CHUNK_WRITTEN, OBJECT_WRITTEN, PART_UPLOADED

from .conftest import KEY_URI, MIB, Crash, crash_at, recorder

pytestmark = pytest.mark.timeout(120)
PARTS = {"multipart_threshold": 5 * MIB, "part_size": 5 * MIB}
CTX = file_context("run-s", "c1", "model.safetensors")


class SlowSource(io.RawIOBase):
    """A seekable source that cannot be mapped (read through `readinto`), records the order of
    its reads and of uploads, and takes a little time per read: reads are where encryption
    stands (each segment is read, then sealed), so the log shows what overlapped."""

    def __init__(self, data: bytes, log: list, delay: float = 0.08) -> None:
        self._f = io.BytesIO(data)
        self._log = log
        self._delay = delay
        self._read_any = False
        self.change_on_rewind = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if pos == 0 and whence == 0 and self.change_on_rewind and self._read_any:
            buf = self._f.getbuffer()
            buf[len(buf) // 2] ^= 1  # the file changed between the two passes
            del buf
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        threading.Event().wait(self._delay)
        n = self._f.readinto(b)
        self._read_any = True
        if n:
            self._log.append(("read", self._f.tell()))
        return n


def s3_store(s3, **extra):
    return open_store(f"{s3[0]}/runs/run-s", **{**s3[1], **PARTS, **extra})


def test_parts_are_sent_while_later_segments_are_encrypted(s3):
    data = os.urandom(12 * MIB)
    log: list = []

    def on_progress(ev):
        if ev.kind == PART_UPLOADED:
            log.append(("part", ev.part))

    store = s3_store(s3)
    r = encrypt_to_writer(
        SlowSource(data, log),
        lambda size, digest: store.open_writer(
            f"{OBJECTS_DIR}/{digest}",
            size,
            digest=digest,
            algorithm="blake3",
            on_progress=on_progress,
        ),
        kek=os.urandom(32),
        key_uri=KEY_URI,
        context=CTX,
        segment_size=1 * MIB,
    )
    # Pass 2 starts where the reads restart from the beginning of the source.
    reads = [i for i, e in enumerate(log) if e[0] == "read"]
    second_pass = next(i for i in reads if i > reads[0] and log[i][1] == 1 * MIB)
    parts = [i for i, e in enumerate(log) if e[0] == "part"]
    assert [log[i][1] for i in parts] == [1, 2, 3]
    # part 1 was uploaded while the source was still being read (= encrypted) in pass 2
    assert second_pass < parts[0] < reads[-1]
    name = f"{OBJECTS_DIR}/{r.ciphertext_digest}"
    assert store.size(name) == r.ciphertext_size
    assert store.digest(name, "blake3") == r.ciphertext_digest


def test_source_changed_between_passes_commits_nothing(s3):
    bucket = s3[0].removeprefix("s3://")
    src = SlowSource(os.urandom(12 * MIB), [], delay=0)
    src.change_on_rewind = True
    store = s3_store(s3)
    with pytest.raises(IntegrityError, match="source changed while it was encrypted"):
        encrypt_to_writer(
            src,
            lambda size, digest: store.open_writer(
                f"{OBJECTS_DIR}/{digest}", size, digest=digest, algorithm="blake3"
            ),
            kek=os.urandom(32),
            key_uri=KEY_URI,
            context=CTX,
            segment_size=1 * MIB,
        )
    assert s3[2].list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert "Uploads" not in s3[2].list_multipart_uploads(Bucket=bucket)


def test_checkpoint_to_s3_then_verify_and_decrypt(s3, plain_dir, tmp_path, kek):
    uri = f"{s3[0]}/runs/run-s"
    events = recorder()
    m = encrypt_checkpoint_to_store(
        plain_dir,
        uri,
        kek=kek,
        key_uri=KEY_URI,
        run_id="run-s",
        meta={},
        on_progress=events,
        storage_options={**s3[1], **PARTS},
    )
    assert m.version == 5 and all(f.header_sha256 for f in m.files) and is_complete(uri, **s3[1])
    assert [e.part for e in events.events if e.kind == PART_UPLOADED] == [1, 2, 3]
    assert sum(e.kind == OBJECT_WRITTEN for e in events.events) == 2
    verify_objects(open_store(uri, **s3[1]), m)
    decrypt_checkpoint(uri, tmp_path / "out", kek=kek, storage_options=s3[1])
    for name in ("model.safetensors", "adapter_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (plain_dir / name).read_bytes()
    assert "Uploads" not in s3[2].list_multipart_uploads(Bucket=s3[0].removeprefix("s3://"))


def test_crash_mid_upload_leaves_no_object_and_no_manifest(s3, plain_dir, kek):
    bucket = s3[0].removeprefix("s3://")
    uri = f"{s3[0]}/runs/run-s"
    with pytest.raises(Crash):
        encrypt_checkpoint_to_store(
            plain_dir,
            uri,
            kek=kek,
            key_uri=KEY_URI,
            run_id="run-s",
            meta={},
            on_progress=crash_at(CHUNK_WRITTEN, 4),
            storage_options={**s3[1], **PARTS},
        )
    assert not is_complete(uri, **s3[1])
    keys = [o["Key"] for o in s3[2].list_objects_v2(Bucket=bucket).get("Contents", [])]
    # Files run two at a time: the small one may have been committed, complete; the big one
    # (crashed) must not be there at all.
    objects = [k for k in keys if "/objects/" in k]
    assert len(objects) <= 1
    for key in objects:
        body = s3[2].get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) < MIB and blake3.blake3(body).hexdigest() == key.rsplit("/", 1)[1]
    assert f"runs/run-s/{MANIFEST_FILE}" not in keys
    assert "Uploads" not in s3[2].list_multipart_uploads(Bucket=bucket)


def test_retry_after_a_crash_replaces_the_earlier_objects(s3, plain_dir, tmp_path, kek):
    """Objects of a failed try are unreferenced (new keys on retry); the retry removes them, so
    the location holds exactly its manifest's objects and passes keyless verification."""
    uri = f"{s3[0]}/runs/run-s"
    args = dict(kek=kek, key_uri=KEY_URI, run_id="run-s", meta={})
    options = {**s3[1], **PARTS}
    with pytest.raises(Crash):
        encrypt_checkpoint_to_store(
            plain_dir, uri, **args, on_progress=crash_at(OBJECT_WRITTEN, 1),
            storage_options=options,
        )  # fmt: skip
    store = open_store(uri, **s3[1])
    assert len(store.list(OBJECTS_DIR)) == 1 and not is_complete(uri, **s3[1])
    m = encrypt_checkpoint_to_store(plain_dir, uri, **args, storage_options=options)
    assert store.list(OBJECTS_DIR) == sorted(e.object_name for e in m.files)
    verify_objects(store, read_manifest(store)[0])


def test_refuses_a_destination_holding_a_checkpoint(s3, plain_dir, kek):
    uri = f"{s3[0]}/runs/run-s"
    args = dict(kek=kek, key_uri=KEY_URI, run_id="run-s", meta={}, storage_options=s3[1])
    encrypt_checkpoint_to_store(plain_dir, uri, **args)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        encrypt_checkpoint_to_store(plain_dir, uri, **args)


def test_unsigned_then_signed_by_the_caller(tmp_path, plain_dir, kek):
    """`write_manifest=False` leaves the commit point to the signer: objects, no manifest."""
    m = encrypt_checkpoint_to_store(
        plain_dir, tmp_path / "ckpt", kek=kek, key_uri=KEY_URI, run_id="r", meta={},
        write_manifest=False,
    )  # fmt: skip
    store = open_store(str(tmp_path / "ckpt"))
    assert not is_complete(str(tmp_path / "ckpt"))
    assert sorted(store.list(OBJECTS_DIR)) == sorted(e.object_name for e in m.files)
    store.put_bytes(MANIFEST_FILE, m.canonical_bytes())
    verify_objects(store, read_manifest(store)[0])
    decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        plain_dir / "model.safetensors"
    ).read_bytes()
    assert not [p for p in (tmp_path / "ckpt" / ".uploads").rglob("*") if p.is_file()]


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_local_writer_refuses_wrong_bytes(tmp_path, algorithm):
    store = open_store(str(tmp_path / "s"))
    w = store.open_writer("objects/x", 3, digest="0" * 64, algorithm=algorithm)
    w.write(b"abc")
    with pytest.raises(ObjectIntegrityError, match=f"expected {HASH_NAMES[algorithm]}$"):
        w.commit()
    with (
        pytest.raises(ObjectIntegrityError, match="more than the declared"),
        store.open_writer("objects/y", 2, digest="0" * 64, algorithm=algorithm) as w2,
    ):
        w2.write(b"abc")
    # the right digest of the other algorithm does not pass either
    other = {"sha256": blake3.blake3, "blake3": hashlib.sha256}[algorithm](b"abc").hexdigest()
    w3 = store.open_writer("objects/z", 3, digest=other, algorithm=algorithm)
    w3.write(b"abc")
    with pytest.raises(ObjectIntegrityError, match=f"expected {HASH_NAMES[algorithm]}$"):
        w3.commit()
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        store.open_writer("objects/w", 3, digest="0" * 32, algorithm="md5")
    assert not any(store.exists(f"objects/{n}") for n in "xyzw")
    assert not [p for p in (tmp_path / "s" / ".uploads").rglob("*") if p.is_file()]


def test_cli_encrypts_straight_into_s3_and_decrypts_back(s3, plain_dir, tmp_path, kek, monkeypatch):
    from coco_ai.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3[1]["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3[1]["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    key = tmp_path / "kek.bin"
    key.write_bytes(kek)
    uri = f"{s3[0]}/cli"
    endpoint = ["--endpoint-url", s3[1]["endpoint_url"]]
    common = ["--key-file", str(key), *endpoint]
    enc = ["checkpoint", "encrypt", *common, "--key-uri", KEY_URI, str(plain_dir), uri]
    assert main(enc) == 0
    assert is_complete(uri, **s3[1])
    assert main(["checkpoint", "verify", *endpoint, uri]) == 0
    assert main(["checkpoint", "decrypt", *common, uri, str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        plain_dir / "model.safetensors"
    ).read_bytes()
