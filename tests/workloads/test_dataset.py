from __future__ import annotations

import json
from pathlib import Path

import pytest

from coco_ai.cli import main as coco_ai
from coco_ai.workloads.dataset import (
    PHRASINGS_PER_FACT,
    DatasetError,
    Example,
    capacity,
    generate_examples,
    parse_jsonl,
    split_examples,
    to_jsonl,
)


def test_generation_is_deterministic_per_seed() -> None:
    a = to_jsonl(generate_examples(200, seed=1))
    assert a == to_jsonl(generate_examples(200, seed=1))
    assert a != to_jsonl(generate_examples(200, seed=2))
    assert parse_jsonl(a) == generate_examples(200, seed=1)


def test_each_fact_has_several_phrasings_and_distinct_facts_differ() -> None:
    ex = generate_examples(capacity(), seed=0)
    by_answer: dict[str, set[str]] = {}
    for e in ex:
        by_answer.setdefault(e.response, set()).add(e.instruction)
    assert all(len(qs) == PHRASINGS_PER_FACT for qs in by_answer.values())
    assert len(by_answer) * PHRASINGS_PER_FACT == len(ex)
    assert len({e.instruction for e in ex}) == len(ex)  # no question is ambiguous
    with pytest.raises(ValueError, match="examples must be in"):
        generate_examples(capacity() + 1)


def test_split_holds_out_phrasings_not_facts() -> None:
    ex = generate_examples(200, seed=3)
    train, held = split_examples(ex, 0.2, seed=0)
    assert len(train) + len(held) == len(ex)
    assert len(held) == 200 // PHRASINGS_PER_FACT  # one phrasing per fact
    train_answers = {e.response for e in train}
    train_questions = {e.instruction for e in train}
    assert all(e.response in train_answers for e in held)
    assert not any(e.instruction in train_questions for e in held)
    assert split_examples(ex, 0.2, seed=0) == (train, held)
    assert split_examples(ex, 0.2, seed=1) != (train, held)


def test_too_few_examples_for_the_split() -> None:
    with pytest.raises(DatasetError, match="too few examples for the split"):
        split_examples(generate_examples(6, seed=0), 0.2, seed=0)
    singles = [Example(f"q{i}", f"a{i}") for i in range(50)]  # no fact asked twice: no eval
    with pytest.raises(DatasetError, match="0 eval"):
        split_examples(singles, 0.2, seed=0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"instruction": "q"}', "line 2: missing field 'response'"),
        ('{"instruction": "q", "response": "  "}', "line 2: 'response' must be a non-empty"),
        ('{"instruction": 3, "response": "a"}', "line 2: 'instruction' must be a non-empty"),
        ('{"instruction": "q", "response": "a", "x": 1}', "line 2: unknown field 'x'"),
    ],
)
def test_malformed_records_name_the_line_not_the_content(line: str, message: str) -> None:
    good = json.dumps({"instruction": "secret question", "response": "secret answer"})
    with pytest.raises(DatasetError, match=message) as info:
        parse_jsonl(f"{good}\n{line}\n".encode())
    assert "secret" not in str(info.value)


def test_empty_and_non_utf8() -> None:
    with pytest.raises(DatasetError, match="no records"):
        parse_jsonl(b"\n\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        parse_jsonl(b"\xff\xfe")


def test_cli_generate(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d.jsonl"
    assert (
        coco_ai(["dataset", "generate", "--out", str(out), "--examples", "50", "--seed", "4"]) == 0
    )
    assert out.read_bytes() == to_jsonl(generate_examples(50, seed=4))
    assert json.loads(capsys.readouterr().out)["records"] == 50
    assert coco_ai(["dataset", "generate", "--out", str(out), "--examples", "0"]) == 2
