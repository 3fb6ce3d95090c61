"""A real S3 API (moto's server) on loopback for the storage tests, one bucket per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from coco_ai.crypto.checkpoint import encrypt_checkpoint

KEY_URI = "kbs:///coco-ai/checkpoint/run-s"
MIB = 1024 * 1024


class Crash(Exception):
    """Stands for the process dying at a chosen point of an upload."""


def crash_at(kind: str, count: int = 1):
    """A progress callback that raises on the `count`-th event of `kind`; records all events."""
    events = []

    def on_progress(ev):
        events.append(ev)
        if ev.kind == kind and sum(e.kind == kind for e in events) == count:
            raise Crash(f"crash after {kind} #{count}")

    on_progress.events = events
    return on_progress


def recorder():
    events = []

    def on_progress(ev):
        events.append(ev)

    on_progress.events = events
    return on_progress


@pytest.fixture
def s3(moto_endpoint, s3_admin):
    """(bucket URI, storage options, boto3 client) for a fresh bucket."""
    options = {
        "endpoint_url": moto_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    client = s3_admin
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}", options, client


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    """A 12 MiB weights file (three 5 MiB multipart parts once encrypted) and a small file."""
    d = tmp_path / "plain"
    d.mkdir()
    (d / "model.safetensors").write_bytes(os.urandom(12 * MIB))
    (d / "adapter_config.json").write_bytes(b'{"r": 8}')
    return d


@pytest.fixture
def ckpt_dir(plain_dir: Path, tmp_path: Path, kek: bytes) -> Path:
    encrypt_checkpoint(
        plain_dir, tmp_path / "ckpt", kek=kek, key_uri=KEY_URI, run_id="run-s", meta={}
    )
    return tmp_path / "ckpt"
