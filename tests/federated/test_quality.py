"""Federation beats every participant alone on a global held-out set (issue 14, "Data and
quality"): the generated Northwind data split non-IID by topic across three departments, the
federation run as FedAvg in NVFlare's simulator (the same job config as the real federation),
each department trained alone by the same trainer for the same rounds x local steps."""

from __future__ import annotations

import numpy as np
import pytest

from coco_ai.workloads.dataset import corpus_text, generate_examples
from coco_ai.workloads.federated.data import topic_of
from coco_ai.workloads.federated.job import LoraTrainer
from coco_ai.workloads.federated.quality import (
    compare_federated_with_solo,
    evaluate_adapter,
    global_split,
    initial_adapter,
    train_alone,
    write_site_data,
)

PARTICIPANTS = ("dept-a", "dept-b", "dept-c")
#: The federation's global held-out loss must be at least this much (nats per response token)
#: below the best solo participant's. Seeds 0-2 of this setting give 0.12-0.23 (a FedAvg
#: emulation of the same trainer and the simulator agree); the runs are deterministic (fixed
#: seeds, fp32 on CPU), so the margin guards against a federation that only matches a solo run.
MIN_MARGIN = 0.05


@pytest.fixture(scope="module")
def northwind(tmp_path_factory):
    import torch

    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(1)
    examples = generate_examples(120, seed=0)
    model = build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "tiny-1m", "1m", corpus_text(examples)
    )
    return model, examples


def test_global_split_holds_out_every_topic_and_splits_the_rest_by_topic(northwind) -> None:
    _, examples = northwind
    split = global_split(examples, PARTICIPANTS, seed=0)
    trained = [e for records in split.sites.values() for e in records]
    assert sorted(trained + split.held_out) == sorted(examples)
    assert not {e.instruction for e in trained} & {e.instruction for e in split.held_out}
    # every held-out phrasing asks about a fact some participant trains on (another phrasing)
    assert {e.response for e in split.held_out} <= {e.response for e in trained}
    topics = {site: {topic_of(e) for e in records} for site, records in split.sites.items()}
    assert all(topics.values())
    assert not topics["dept-a"] & topics["dept-b"] and not topics["dept-b"] & topics["dept-c"]
    assert not topics["dept-a"] & topics["dept-c"]
    assert {topic_of(e) for e in split.held_out} == set().union(*topics.values())


def test_solo_training_moves_the_adapter_and_lowers_the_loss_on_its_own_topics(
    northwind, tmp_path
) -> None:
    model, examples = northwind
    split = global_split(examples, PARTICIPANTS, seed=0)
    data = write_site_data(split, tmp_path / "data")
    initial = initial_adapter(model, seed=0)
    trainer = LoraTrainer(str(model), str(data), local_steps=4, learning_rate=1e-2, seed=0)
    trained = train_alone(trainer, "dept-a", initial, rounds=2)
    assert trained.keys() == initial.keys()
    assert any(not np.array_equal(trained[k], initial[k]) for k in initial)
    own = {topic_of(e) for e in split.sites["dept-a"]}
    own_held_out = [e for e in split.held_out if topic_of(e) in own]
    assert evaluate_adapter(model, trained, own_held_out) < evaluate_adapter(
        model, initial, own_held_out
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_federation_beats_every_participant_alone_on_the_global_held_out_set(
    northwind, tmp_path
) -> None:
    model, examples = northwind
    report = compare_federated_with_solo(
        model,
        examples,
        PARTICIPANTS,
        tmp_path,
        rounds=6,
        local_steps=10,
        learning_rate=1e-2,
        seed=0,
        timeout_s=500,
    )
    print(report.as_dict())
    assert report.federated < report.initial
    for site, loss in report.solo.items():
        assert report.federated <= loss - MIN_MARGIN, (site, report.as_dict())
