"""Fixtures for the checkpoint format tests: keys, a sample checkpoint source, a token CA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coco_ai.kbs.jwe import TeeKeyPair

from .helpers import SEGMENT, TokenIssuer, write_tree


@pytest.fixture(scope="session")
def attestation() -> TokenIssuer:
    return TokenIssuer.create()


@pytest.fixture
def tee_key() -> TeeKeyPair:
    return TeeKeyPair.generate()


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    """A small adapter-like directory: a multi-segment file, a nested file, an empty file."""
    return write_tree(
        tmp_path / "plain",
        {
            "adapter_model.safetensors": os.urandom(3 * SEGMENT + 123),
            "config/adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
            "empty.txt": b"",
        },
    )
