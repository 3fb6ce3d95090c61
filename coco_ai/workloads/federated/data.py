"""A non-IID split of the generated Northwind data set: each participant (department) sees only
its own topics (fact kinds), so no single participant knows every kind of fact."""

from __future__ import annotations

from collections.abc import Sequence

from coco_ai.workloads.dataset import FACT_TEMPLATES, Example


def topic_of(example: Example) -> int:
    """Index in FACT_TEMPLATES of the fact kind ``example`` asks about."""
    for index, template in enumerate(FACT_TEMPLATES):
        for subject in template.subjects:
            if any(example.instruction == q.format(s=subject) for q in template.questions):
                return index
    raise ValueError("example is not one of the generated data set's questions")


def split_by_topic(
    examples: Sequence[Example], participant_ids: Sequence[str]
) -> dict[str, list[Example]]:
    """Topic ``i`` goes to participant ``i mod n``: disjoint topics, every example placed once."""
    if not participant_ids:
        raise ValueError("no participants to split the data set across")
    out: dict[str, list[Example]] = {p: [] for p in participant_ids}
    for example in examples:
        out[participant_ids[topic_of(example) % len(participant_ids)]].append(example)
    return out
