"""Generative answers over retrieved chunks, and how good an answer is (exact match, token F1).

The metrics are SQuAD's: both strings are normalised (lower case, punctuation and the articles
a/an/the dropped, whitespace collapsed); exact match is 1 when the normalised strings are equal,
token F1 the harmonic mean of precision and recall over the multiset of normalised tokens.

:class:`Generator` answers with a causal LM through the fine-tune workload's own greedy decoder
(coco_ai.workloads.finetune.train.answer: the model's chat template, one left-padded batch, the
KV cache), either the question alone or :func:`rag_prompt` (the question after the top-k
chunks). torch is imported only when a generator is built, so the service's extractive default
does not load it for answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
#: the instruction before the retrieved chunks (the model must answer from them, in one sentence)
RAG_INSTRUCTION = (
    "Answer the question using only the documents below. Reply with the one sentence from the "
    "documents that answers it."
)
#: prompts answered per generate() call: bounds the padded batch's memory
GENERATE_BATCH = 8


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class AnswerScore:
    exact_match: float  # mean over the questions, in [0, 1]
    f1: float
    questions: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "exact_match": round(self.exact_match, 4),
            "f1": round(self.f1, 4),
            "n": self.questions,
        }


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> AnswerScore:
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references (need as many, >0)"
        )
    n = len(references)
    em = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True)) / n
    return AnswerScore(em, f1, n)


def rag_prompt(question: str, passages: Sequence[str]) -> str:
    """The user turn of a retrieval-augmented answer: instruction, numbered chunks, question."""
    documents = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    return f"{RAG_INSTRUCTION}\n\nDocuments:\n{documents}\n\nQuestion: {question}"


class Generator:
    """A loaded causal LM answering greedily with at most ``max_new_tokens`` tokens."""

    def __init__(self, model, tokenizer, runtime, *, max_new_tokens: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        max_new_tokens: int,
        device: str = "auto",
        precision: str = "auto",
    ) -> Generator:
        from coco_ai.workloads.finetune.train import load_model, select_runtime

        runtime = select_runtime(device, precision)
        model, tokenizer = load_model(model_dir, runtime)
        model.eval()
        return cls(model, tokenizer, runtime, max_new_tokens=max_new_tokens)

    def answer(self, prompts: Sequence[str]) -> list[str]:
        from coco_ai.workloads.finetune.train import answer

        out: list[str] = []
        for first in range(0, len(prompts), GENERATE_BATCH):
            batch = list(prompts[first : first + GENERATE_BATCH])
            out += answer(
                self.model,
                self.tokenizer,
                batch,
                self.runtime,
                max_new_tokens=self.max_new_tokens,
            )
        return out

    def answer_with(self, question: str, passages: Sequence[str]) -> str:
        return self.answer([rag_prompt(question, passages)])[0]
