"""Object storage behind one small interface: local files by default, S3 in production.

Reads go through fsspec (`file://`, `s3://` via s3fs, or any other fsspec protocol). Writes are
atomic per object: an object is either absent or complete, never partial, on every backend:

- local: bytes go to `<root>/.uploads/<name>`, then `os.replace` into place; a crashed upload is
  resumed from the bytes already in `.uploads/` (every write is verified by digest at the end);
- S3: small objects are one PUT; large ones a multipart upload that a retry finds again
  (`ListMultipartUploads`) and completes, reusing every part whose ETag (MD5) and size match;
- other fsspec protocols: temporary object, then move.

Each `put_stream` hashes what it reads and refuses to commit if the digest (SHA-256 by default,
or BLAKE3: `coco_ai.storage.hashing`) differs from the expected one; callers then re-read the
committed object (`digest`) to verify the store.

`open_writer` is the push-style counterpart for bytes produced on the fly (encryption straight
into a store): the same atomicity and digest check, no resume (the producer cannot replay), and
on S3 each part is sent by a background thread while the next one is being filled.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import fsspec

from coco_ai.storage.errors import ObjectIntegrityError
from coco_ai.storage.hashing import HASH_NAMES, new_hash
from coco_ai.storage.views import read_views

CHUNK_SIZE = 8 * 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for all but the last part
MAX_PARTS = 10_000
UPLOADS_DIR = ".uploads"


@dataclass(frozen=True)
class ProgressEvent:
    """What an upload just did; `kind` is one of the constants below."""

    kind: str
    name: str
    part: int = 0
    nbytes: int = 0


OBJECT_SKIPPED = "object-skipped"  # already in the store with the right digest
CHUNK_WRITTEN = "chunk-written"  # local: one chunk appended
CHUNK_RESUMED = "chunk-resumed"  # local: bytes already in .uploads/ kept
PART_UPLOADED = "part-uploaded"  # S3 multipart: part sent
PART_REUSED = "part-reused"  # S3 multipart: part already uploaded by an earlier try
OBJECT_WRITTEN = "object-written"  # committed and verified

ProgressCallback = Callable[[ProgressEvent], None]


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"object name {name!r} must be a relative path without '.' or '..'")
    return name


class Store:
    """A directory-like prefix in an object store. Names are relative POSIX paths."""

    def __init__(self, uri: str, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.uri = uri
        self._fs = fs
        self._root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def _path(self, name: str) -> str:
        return f"{self._root}/{_check_name(name)}"

    # --- reads -------------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self._fs.isfile(self._path(name))

    def size(self, name: str) -> int:
        return int(self._fs.size(self._path(name)))

    def read_bytes(self, name: str) -> bytes:
        return self._fs.cat_file(self._path(name))

    def open(self, name: str) -> BinaryIO:
        """A seekable binary reader with `readinto` (bounded read-ahead buffer)."""
        return self._fs.open(self._path(name), "rb", block_size=CHUNK_SIZE)

    def list(self, prefix: str) -> list[str]:
        """Names of the objects directly under `prefix` (a directory name), sorted."""
        base = self._path(prefix)
        if not self._fs.isdir(base):
            return []
        out = []
        for info in self._fs.ls(base, detail=True):
            if info["type"] == "file":
                out.append(f"{prefix}/{posixpath.basename(info['name'].rstrip('/'))}")
        return sorted(out)

    def digest(self, name: str, algorithm: str = "sha256") -> str:
        """The digest (hex) of the stored object in `algorithm`, re-read from the store in
        bounded chunks."""
        return self.digests(name, (algorithm,))[algorithm]

    def digests(self, name: str, algorithms: tuple[str, ...]) -> dict[str, str]:
        """The object's digest in each of `algorithms` (hex), from one read of its bytes."""
        hashes = {a: new_hash(a, threads=True) for a in algorithms}
        buf = memoryview(bytearray(CHUNK_SIZE))
        with self.open(name) as f:
            for view in read_views(f, itertools.repeat(CHUNK_SIZE), buf):
                for h in hashes.values():
                    h.update(view)
                if len(view) < CHUNK_SIZE:
                    break
        return {a: h.hexdigest() for a, h in hashes.items()}

    # --- writes ------------------------------------------------------------------------------

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write a small object atomically (replaces an existing one)."""
        tmp = self._path(f"{UPLOADS_DIR}/{name}.{os.urandom(6).hex()}")
        self._fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        self._fs.pipe_file(tmp, data)
        self._fs.mv(tmp, self._path(name))

    def put_stream(
        self,
        name: str,
        src: BinaryIO,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Write `size` bytes from the seekable `src` to `name`, committing only if their
        `algorithm` digest is `digest`. Resumes an earlier interrupted write of the same name
        where it can."""
        staging = self._path(f"{UPLOADS_DIR}/{name}")
        self._fs.makedirs(posixpath.dirname(staging), exist_ok=True)
        h = new_hash(algorithm, threads=True)
        with self._fs.open(staging, "wb") as out:
            _copy_hashing(src, out, size, h, name, on_progress)
        if h.hexdigest() != digest:
            self._fs.rm(staging)
            raise _digest_mismatch(name, algorithm)
        self._fs.mv(staging, self._path(name))

    def delete(self, name: str) -> None:
        if self._fs.exists(self._path(name)):
            self._fs.rm(self._path(name))

    def abort_incomplete_uploads(
        self, older_than_s: float, *, now: float | None = None
    ) -> list[str]:
        """Remove what interrupted uploads left under this prefix and did not touch for
        ``older_than_s`` seconds (the bytes a retry would resume from); the names removed.

        An upload that is only paused is resumed by the retry of its transfer; one whose run
        was abandoned is never resumed and would keep its bytes (and on S3, its bill) forever.
        Call this from a cleanup job with a bound longer than any transfer's retries.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        base = self._path(UPLOADS_DIR)
        if not self._fs.isdir(base):
            return []
        removed = []
        for path in sorted(self._fs.find(base)):
            if self._fs.modified(path).timestamp() <= cutoff:
                self._fs.rm(path)
                removed.append(posixpath.relpath(path, self._root))
        return removed

    def open_writer(
        self,
        name: str,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
        hash_check: bool = True,
    ) -> ObjectWriter:
        """A writer for exactly `size` bytes pushed with `write`; `commit` makes `name` appear
        only if their `algorithm` digest is `digest`, `abort` (or leaving a `with` block by an
        exception) leaves nothing. Memory stays bounded whatever the size. `hash_check=False`
        skips the digest (only for a producer that proves its bytes otherwise, as
        `encrypt_to_writer` does with the segment tags of its two passes)."""
        expected = _check(digest, algorithm, hash_check)
        staging = self._path(f"{UPLOADS_DIR}/{name}.{os.urandom(6).hex()}")
        self._fs.makedirs(posixpath.dirname(staging), exist_ok=True)
        f = self._fs.open(staging, "wb")

        def finish(ok: bool) -> None:
            f.close()
            if ok:
                self._fs.mv(staging, self._path(name))
            elif self._fs.exists(staging):
                self._fs.rm(staging)

        return ObjectWriter(name, size, expected, f.write, finish, on_progress)


class ObjectWriter:
    """Push-style atomic write of one object: `write` the bytes, then `commit` or `abort`.

    `commit` refuses (and aborts) unless exactly `size` bytes were written, with the digest
    `expected` = (algorithm, hex) unless that is None (the producer vouches). `write` is called
    from one thread at a time."""

    def __init__(
        self,
        name: str,
        size: int,
        expected: tuple[str, str] | None,
        sink: Callable[[Any], Any],
        finish: Callable[[bool], None],
        on_progress: ProgressCallback | None,
    ) -> None:
        self.name = name
        self.size = size
        self._expected = expected
        self._sink = sink
        self._finish = finish
        self._on_progress = on_progress
        self._hash = new_hash(expected[0]) if expected is not None else None
        self._written = 0
        self._done = False

    def write(self, data: Any) -> None:
        n = len(data)
        if self._written + n > self.size:
            raise ObjectIntegrityError(
                f"{self.name}: more than the declared {self.size} bytes written"
            )
        if self._hash is not None:
            self._hash.update(data)
        self._sink(data)
        self._written += n
        if self._on_progress:
            self._on_progress(ProgressEvent(CHUNK_WRITTEN, self.name, 0, n))

    def commit(self) -> None:
        if self._written != self.size:
            self.abort()
            raise ObjectIntegrityError(
                f"{self.name}: {self._written} bytes written, {self.size} declared"
            )
        if self._expected is not None and self._hash.hexdigest() != self._expected[1]:
            self.abort()
            raise _digest_mismatch(self.name, self._expected[0], "bytes written")
        self._done = True
        self._finish(True)
        if self._on_progress:
            self._on_progress(ProgressEvent(OBJECT_WRITTEN, self.name, 0, self.size))

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._finish(False)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def _check(digest: str, algorithm: str, hash_check: bool) -> tuple[str, str] | None:
    """What an ObjectWriter checks at commit: (algorithm, digest), or None without a check."""
    new_hash(algorithm)  # an unknown algorithm fails here, before anything is written
    return (algorithm, digest) if hash_check else None


def _digest_mismatch(name: str, algorithm: str, what: str = "source bytes") -> Exception:
    return ObjectIntegrityError(
        f"{name}: {what} do not hash to the expected {HASH_NAMES[algorithm]}"
    )


def _copy_hashing(
    src: BinaryIO,
    out: BinaryIO,
    size: int,
    h: Any,
    name: str,
    on_progress: ProgressCallback | None,
    start: int = 0,
) -> None:
    buf = memoryview(bytearray(min(CHUNK_SIZE, max(size, 1))))
    done = start
    part = 0
    while done < size:
        want = min(len(buf), size - done)
        n = src.readinto(buf[:want])
        if not n:
            raise ObjectIntegrityError(f"{name}: source ended {size - done} bytes early")
        h.update(buf[:n])
        out.write(buf[:n])
        done += n
        part += 1
        if on_progress:
            on_progress(ProgressEvent(CHUNK_WRITTEN, name, part, n))


class _LocalStore(Store):
    """Local directory: resumable through `.uploads/`, committed with an atomic rename."""

    def put_stream(
        self,
        name: str,
        src: BinaryIO,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
    ) -> None:
        final = self._path(name)
        staging = self._path(f"{UPLOADS_DIR}/{name}")
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        origin = src.tell()
        have = os.path.getsize(staging) if os.path.exists(staging) else 0
        if have > size:  # cannot be a prefix of this content
            os.remove(staging)
            have = 0
        h = new_hash(algorithm, threads=True)
        # The kept prefix is re-hashed from the source, so the check below covers the source.
        _hash_prefix(src, have, h, name)
        if have and on_progress:
            on_progress(ProgressEvent(CHUNK_RESUMED, name, 0, have))
        with open(staging, "ab") as out:
            _copy_hashing(src, out, size, h, name, on_progress, start=have)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != digest:
            os.remove(staging)
            raise _digest_mismatch(name, algorithm)
        if have and self.digest(f"{UPLOADS_DIR}/{name}", algorithm) != digest:
            # The kept prefix was not this content (e.g. corrupted by the crash): start over.
            os.remove(staging)
            src.seek(origin)
            self.put_stream(
                name, src, size, digest=digest, algorithm=algorithm, on_progress=on_progress
            )
            return
        os.replace(staging, final)

    def open_writer(
        self,
        name: str,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
        hash_check: bool = True,
    ) -> ObjectWriter:
        expected = _check(digest, algorithm, hash_check)
        final = self._path(name)
        staging = self._path(f"{UPLOADS_DIR}/{name}.{os.urandom(6).hex()}")
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        f = open(staging, "wb")  # noqa: SIM115  (closed by finish)

        def finish(ok: bool) -> None:
            try:
                if ok:
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                f.close()
            if ok:
                os.replace(staging, final)
            elif os.path.exists(staging):
                os.remove(staging)

        return ObjectWriter(name, size, expected, f.write, finish, on_progress)

    def put_bytes(self, name: str, data: bytes) -> None:
        final = self._path(name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.{os.urandom(6).hex()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def _hash_prefix(src: BinaryIO, n: int, h: Any, name: str) -> None:
    buf = memoryview(bytearray(min(CHUNK_SIZE, max(n, 1))))
    left = n
    while left:
        got = src.readinto(buf[: min(len(buf), left)])
        if not got:
            raise ObjectIntegrityError(f"{name}: source shorter than the partial upload")
        h.update(buf[:got])
        left -= got


class _S3Store(Store):
    """S3 via s3fs for reads; boto3 for PUT and resumable multipart uploads."""

    def __init__(
        self,
        uri: str,
        fs: fsspec.AbstractFileSystem,
        root: str,
        client: Any,
        *,
        multipart_threshold: int,
        part_size: int,
    ) -> None:
        super().__init__(uri, fs, root)
        self._client = client
        self._bucket, _, self._prefix = root.partition("/")
        self._threshold = multipart_threshold
        self._part_size = part_size

    def _key(self, name: str) -> str:
        return posixpath.join(self._prefix, _check_name(name)) if self._prefix else name

    def put_bytes(self, name: str, data: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=self._key(name), Body=data)
        self._fs.invalidate_cache()

    def delete(self, name: str) -> None:
        self._client.delete_object(Bucket=self._bucket, Key=self._key(name))
        self._fs.invalidate_cache()

    def put_stream(
        self,
        name: str,
        src: BinaryIO,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
    ) -> None:
        h = new_hash(algorithm, threads=True)
        if size < self._threshold:
            data = src.read(size)
            h.update(data)
            if len(data) != size or h.hexdigest() != digest:
                raise _digest_mismatch(name, algorithm)
            self.put_bytes(name, data)
            return
        self._put_multipart(name, src, size, (algorithm, digest), h, on_progress)
        self._fs.invalidate_cache()

    def open_writer(
        self,
        name: str,
        size: int,
        *,
        digest: str,
        algorithm: str = "sha256",
        on_progress: ProgressCallback | None = None,
        hash_check: bool = True,
    ) -> ObjectWriter:
        expected = _check(digest, algorithm, hash_check)
        key = self._key(name)
        if size < self._threshold:
            buf = bytearray()

            def finish_small(ok: bool) -> None:
                if ok:
                    self.put_bytes(name, bytes(buf))

            return ObjectWriter(
                name,
                size,
                expected,
                buf.extend,
                finish_small,
                on_progress,
            )
        upload = _PartUploader(self._client, self._bucket, key, name, on_progress)
        parts = _PartBuffer(max(self._part_size, -(-size // MAX_PARTS)), upload.send)

        def finish(ok: bool) -> None:
            if ok:
                parts.flush()
            upload.finish(ok)
            self._fs.invalidate_cache()

        return ObjectWriter(name, size, expected, parts.write, finish, on_progress)

    def abort_incomplete_uploads(
        self, older_than_s: float, *, now: float | None = None
    ) -> list[str]:
        """Abort the unfinished multipart uploads under this prefix initiated more than
        ``older_than_s`` seconds ago (S3 ``ListMultipartUploads``); the keys aborted."""
        cutoff = (time.time() if now is None else now) - older_than_s
        prefix = f"{self._prefix}/" if self._prefix else ""
        aborted = []
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() <= cutoff:
                    self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(upload["Key"])
        return sorted(aborted)

    def _find_upload(self, key: str) -> str | None:
        """The newest unfinished multipart upload of `key`, left by an interrupted try."""
        found: list[dict] = []
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._bucket, Prefix=key
        )
        for page in pages:
            found += [u for u in page.get("Uploads", []) if u["Key"] == key]
        if not found:
            return None
        return max(found, key=lambda u: u["Initiated"])["UploadId"]

    def _uploaded_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        parts: dict[int, tuple[str, int]] = {}
        pages = self._client.get_paginator("list_parts").paginate(
            Bucket=self._bucket, Key=key, UploadId=upload_id
        )
        for page in pages:
            for p in page.get("Parts", []):
                parts[p["PartNumber"]] = (p["ETag"].strip('"'), p["Size"])
        return parts

    def _put_multipart(
        self,
        name: str,
        src: BinaryIO,
        size: int,
        expected: tuple[str, str],
        h: Any,
        on_progress: ProgressCallback | None,
    ) -> None:
        """Upload in parts, hashing with `h`; complete only if its digest is `expected`
        (algorithm, hex)."""
        key = self._key(name)
        part_size = max(self._part_size, -(-size // MAX_PARTS))
        upload_id = self._find_upload(key)
        existing = self._uploaded_parts(key, upload_id) if upload_id else {}
        if upload_id is None:
            upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=key)[
                "UploadId"
            ]
        done: list[dict[str, Any]] = []
        for number, offset in enumerate(range(0, size, part_size), start=1):
            data = src.read(min(part_size, size - offset))
            if len(data) != min(part_size, size - offset):
                raise ObjectIntegrityError(f"{name}: source ended early at part {number}")
            h.update(data)
            # MD5 is S3's part ETag; it only decides whether to resend a part. Integrity is
            # the digest checked before completing and again by re-reading the object.
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if existing.get(number) == (md5, len(data)):
                etag, kind = md5, PART_REUSED
            else:
                etag = self._client.upload_part(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )["ETag"].strip('"')
                kind = PART_UPLOADED
            done.append({"PartNumber": number, "ETag": f'"{etag}"'})
            if on_progress:
                on_progress(ProgressEvent(kind, name, number, len(data)))
        if h.hexdigest() != expected[1]:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
            raise _digest_mismatch(name, expected[0])
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
        )


class _PartBuffer:
    """Collects written bytes into parts of `part_size`; two buffers, so one can be uploading
    while the next one fills."""

    def __init__(self, part_size: int, send: Callable[[Any, Callable[[], None]], None]) -> None:
        self._bufs = [bytearray(part_size), bytearray(part_size)]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for b in self._bufs:
            self._free.put(b)
        self._send = send
        self._cur = self._free.get()
        self._fill = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), len(self._cur) - self._fill)
            self._cur[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(self._cur):
                self.flush()

    def flush(self) -> None:
        if self._fill:
            buf, n = self._cur, self._fill
            # a full part goes as is (no copy); it is reused only after its upload returned
            self._send(buf if n == len(buf) else bytes(buf[:n]), lambda: self._free.put(buf))
            self._cur, self._fill = self._free.get(), 0


class _PartUploader:
    """One multipart upload whose parts are sent in order by a background thread."""

    def __init__(
        self, client: Any, bucket: str, key: str, name: str, on_progress: ProgressCallback | None
    ) -> None:
        self._client, self._bucket, self._key, self._name = client, bucket, key, name
        self._on_progress = on_progress
        self._id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self._parts: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="coco-ai-upload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            body, release = item
            if self._error is None:
                try:
                    number = len(self._parts) + 1
                    etag = self._client.upload_part(
                        Bucket=self._bucket,
                        Key=self._key,
                        UploadId=self._id,
                        PartNumber=number,
                        Body=body,
                    )["ETag"]
                    self._parts.append({"PartNumber": number, "ETag": etag})
                    if self._on_progress:
                        self._on_progress(
                            ProgressEvent(PART_UPLOADED, self._name, number, len(body))
                        )
                except BaseException as exc:  # handed to the writer's thread
                    self._error = exc
            del body
            release()

    def send(self, body: bytes | bytearray, release: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((body, release))

    def finish(self, ok: bool) -> None:
        self._queue.put(None)
        self._thread.join()
        if ok and self._error is None:
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._id,
                MultipartUpload={"Parts": self._parts},
            )
            return
        self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id)
        if ok:
            raise self._error


def _s3_client(options: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = options.get("endpoint_url") or client_kwargs.pop("endpoint_url", None)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=options.get("key"),
        aws_secret_access_key=options.get("secret"),
        aws_session_token=options.get("token"),
        region_name=client_kwargs.pop("region_name", None) or "us-east-1",
        # s3fs's option for botocore (e.g. {"retries": {...}}): writes retry as reads do
        config=Config(**options["config_kwargs"]) if options.get("config_kwargs") else None,
    )


def split_object_uri(uri: str) -> tuple[str, str]:
    """``(parent URI, last name)`` of an object or directory URI such as ``s3://b/p/x``.

    Raises ValueError when there is no parent to open as a store or no name in it.
    """
    parent, _, name = str(uri).rstrip("/").rpartition("/")
    if not parent or not name or parent.endswith((":", ":/", "://")):
        raise ValueError(f"{uri!r} is not an object URI (a parent location and a name)")
    return parent, name


def object_digest(uri: str, **storage_options: Any) -> str:
    """``sha256:<hex>`` of the object at ``uri``, read back from its store in bounded chunks."""
    parent, name = split_object_uri(uri)
    return "sha256:" + open_store(parent, **storage_options).digest(name, "sha256")


def open_store(
    uri: str,
    *,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
    **storage_options: Any,
) -> Store:
    """Open `uri` (a local path, `file://…`, `s3://bucket/prefix`, or another fsspec URL).

    `storage_options` go to fsspec (for S3: `endpoint_url`, `key`, `secret`, `client_kwargs`);
    the S3 multipart settings only matter for `s3://`.
    """
    uri = str(uri)
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file"):
        path = os.path.abspath(urlsplit(uri).path if scheme else uri)
        return _LocalStore(f"file://{path}", fsspec.filesystem("file"), path)
    if scheme in ("s3", "s3a"):
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise ValueError("S3 part size must be >= 5 MiB and <= the multipart threshold")
        fs = fsspec.filesystem(
            "s3", skip_instance_cache=True, use_listings_cache=False, **storage_options
        )
        root = uri.split("://", 1)[1].rstrip("/")
        if not root:
            raise ValueError(f"S3 URI {uri!r} names no bucket")
        return _S3Store(
            f"s3://{root}",
            fs,
            root,
            _s3_client(storage_options),
            multipart_threshold=multipart_threshold,
            part_size=part_size,
        )
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    return Store(uri, fs, root)
