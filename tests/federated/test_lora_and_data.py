"""The non-IID split and the participant's check of the global adapter it is sent."""

from __future__ import annotations

import numpy as np
import pytest

from coco_ai.federated.data import split_by_topic, topic_of
from coco_ai.workloads.dataset import Example, generate_examples


def test_split_by_topic_gives_each_participant_disjoint_topics() -> None:
    examples = generate_examples(120, seed=7)
    split = split_by_topic(examples, ["dept-a", "dept-b", "dept-c"])
    assert sum(len(v) for v in split.values()) == len(examples)
    topics = {p: {topic_of(e) for e in records} for p, records in split.items()}
    assert all(topics.values())
    assert not (topics["dept-a"] & topics["dept-b"] or topics["dept-b"] & topics["dept-c"])
    assert not topics["dept-a"] & topics["dept-c"]
    with pytest.raises(ValueError, match="not one of the generated"):
        topic_of(Example("What is the answer?", "42"))
    with pytest.raises(ValueError, match="no participants"):
        split_by_topic(examples, [])


def test_participant_refuses_a_malformed_global_adapter(tmp_path) -> None:
    import torch

    from coco_ai.federated.lora import adapter_weights, load_adapter_weights
    from coco_ai.workloads.finetune.config import LoraSettings
    from coco_ai.workloads.finetune.train import add_lora, load_model, select_runtime
    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(1)
    examples = generate_examples(60, seed=3)
    model_dir = build_tiny_model(tmp_path / "tiny", "1m", [e.instruction for e in examples])
    model, _ = load_model(model_dir, select_runtime("cpu", "fp32"))
    model = add_lora(model, LoraSettings(dropout=0.0), seed=0)
    weights = adapter_weights(model)
    name = next(k for k in weights if "lora_B" in k)
    moved = {k: v + 0.5 for k, v in weights.items()}
    load_adapter_weights(model, moved)
    assert np.allclose(adapter_weights(model)[name], moved[name])
    wrong_shape = {**weights, name: np.zeros((1, 1), dtype=np.float32)}
    with pytest.raises(ValueError, match="names and shapes"):
        load_adapter_weights(model, wrong_shape)
    missing = {k: v for k, v in weights.items() if k != name}
    with pytest.raises(ValueError, match="names and shapes"):
        load_adapter_weights(model, missing)
    poisoned = {**weights, name: np.full_like(weights[name], np.nan)}
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_adapter_weights(model, poisoned)
    # A refused adapter changed nothing.
    assert np.allclose(adapter_weights(model)[name], moved[name])
