from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from coco_ai.workloads.models import ModelError, model_digest, model_listing


def test_digest_is_the_sha256_of_the_documented_listing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.json").write_bytes(b"{}")
    (tmp_path / "sub" / "a.bin").write_bytes(b"\x00" * 10)
    listing = model_listing(tmp_path).decode()
    h_b, h_a = hashlib.sha256(b"{}").hexdigest(), hashlib.sha256(b"\x00" * 10).hexdigest()
    assert listing == f"{h_b} 2 b.json\n{h_a} 10 sub/a.bin\n"
    assert model_digest(tmp_path) == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def test_digest_changes_when_a_file_changes(tiny_model: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    base = model_digest(copy)
    assert base == model_digest(tiny_model)  # location-independent
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    flipped = model_digest(copy)
    assert flipped != base
    (copy / "extra.txt").write_text("x")
    assert model_digest(copy) not in (base, flipped)
    (copy / "extra.txt").rename(copy / "extra2.txt")
    assert len({base, flipped, model_digest(copy)}) == 3


def test_digest_of_missing_or_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        model_digest(tmp_path / "nope")
    with pytest.raises(ModelError, match="holds no files"):
        model_digest(tmp_path)


def test_tiny_model_is_small_and_loads(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) <= 10_000_000
    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    text = "Where is the anechoic chamber?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
