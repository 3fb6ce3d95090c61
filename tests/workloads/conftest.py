"""Shared fixtures: one tiny model (built once per session) and the generated data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from coco_ai.workloads.dataset import Example, corpus_text, generate_examples

TEST_EXAMPLES = 120  # 24 facts x 5 phrasings: enough to learn something in a few CPU steps


@pytest.fixture(scope="session")
def examples() -> list[Example]:
    return generate_examples(TEST_EXAMPLES, seed=7)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, examples) -> Path:
    import torch

    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(2)  # the box is shared
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-1m", "1m", corpus_text(examples)
    )
