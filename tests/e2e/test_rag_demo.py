"""The RAG half of `coco-ai demo` on the real embedded stack: the index run is promoted, the
attested retrieval service answers the data owner's held-out question to an attested caller with
citations into the documents, and an unattested caller gets 401."""

from __future__ import annotations

import pytest

from coco_ai.devstack.demo import format_rag
from coco_ai.devstack.rag_demo import run_rag_demo
from coco_ai.workloads.rag_index.corpus import generate_repository

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def test_demo_indexes_serves_and_answers_an_attested_caller_only(e2e_stack):
    rag = run_rag_demo(e2e_stack.info)
    assert rag["state"] == "success", rag
    assert rag["index"]["version"] >= 1
    assert rag["index"]["metrics"]["ann_recall_at_10"] >= 0.95
    service = rag["service"]
    repository = generate_repository()
    question = repository.questions[0]
    assert service["question"] == question.question
    texts = {d.id: d for d in repository.documents}
    assert service["citations"] and all(c["doc_id"] in texts for c in service["citations"])
    assert all(c["title"] == texts[c["doc_id"]].title for c in service["citations"])
    # the answer is a sentence of the documents, cited as [doc#chunk]
    sentence, _, cite = service["answer"].rpartition(" [")
    first = service["citations"][0]
    assert cite == f"{first['doc_id']}#{first['chunk']}]"
    assert sentence in texts[first["doc_id"]].text
    assert service["unattested_caller_status"] == 401
    text = "\n".join(format_rag(rag))
    assert service["answer"] in text and "unattested caller got HTTP 401" in text
