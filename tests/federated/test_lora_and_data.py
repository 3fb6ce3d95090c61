"""The non-IID split and the participant's check of the global adapter it is sent."""

from __future__ import annotations

import numpy as np
import pytest

from coco_ai.workloads.dataset import Example, generate_examples
from coco_ai.workloads.federated.data import split_by_topic, topic_of


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


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(1)
    examples = generate_examples(60, seed=3)
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny", "1m", [e.instruction for e in examples]
    )


def test_participant_refuses_a_malformed_global_adapter(tiny_model_dir) -> None:
    from coco_ai.workloads.federated.job import adapter_weights, load_adapter_weights
    from coco_ai.workloads.finetune.config import LoraSettings
    from coco_ai.workloads.finetune.train import add_lora, load_model, select_runtime

    model, _ = load_model(tiny_model_dir, select_runtime("cpu", "fp32"))
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


def test_aggregator_refuses_bad_updates(tiny_model_dir) -> None:
    """Wrong shape, NaN, an absurd norm or no step count: the update becomes a BAD_TASK_DATA
    reply (left out of the average); a good update and an already failed result pass as they are."""
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import make_reply

    from coco_ai.workloads.federated.job import AdapterUpdateCheck

    check = AdapterUpdateCheck(str(tiny_model_dir), max_norm=100.0)
    layout = check.layout()
    good = {k: np.full(shape, 0.01, dtype=np.float32) for k, shape in layout.items()}
    name = next(iter(layout))

    def update(data, steps=2):
        return DXO(DataKind.WEIGHTS, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})

    ctx = FLContext()
    ok = update(good).to_shareable()
    assert check.process(ok, ctx) is ok
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert check.process(failed, ctx) is failed
    bad = {
        "shape": update({**good, name: np.zeros((1, 1), dtype=np.float32)}),
        "missing": update({k: v for k, v in good.items() if k != name}),
        "nan": update({**good, name: np.full(layout[name], np.inf, dtype=np.float32)}),
        "norm": update({k: v * 1e6 for k, v in good.items()}),
        "steps": update(good, steps=0),
        "kind": DXO(DataKind.METRICS, data={"loss": 1.0}),
    }
    for what, dxo in bad.items():
        reply = check.process(dxo.to_shareable(), ctx)
        assert reply.get_return_code() == ReturnCode.BAD_TASK_DATA, what
    assert "exceeds 100" in check.problem(bad["norm"].to_shareable())
    # the good update sent again (an earlier round's, or another party's copy): refused
    replayed = check.process(update({k: v.copy() for k, v in good.items()}).to_shareable(), ctx)
    assert replayed.get_return_code() == ReturnCode.BAD_TASK_DATA
    fresh = update({k: v + 0.001 for k, v in good.items()}).to_shareable()
    assert check.process(fresh, ctx) is fresh  # a new update still passes
