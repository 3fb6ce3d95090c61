"""The RAG document repository (generation, parsing with limits), the chunker and the config."""

from __future__ import annotations

import json
import re

import pytest

from coco_ai.workloads.rag_index import corpus
from coco_ai.workloads.rag_index.chunker import chunk_document, chunk_documents
from coco_ai.workloads.rag_index.config import (
    ChunkerSettings,
    ConfigError,
    RagIndexConfig,
    recipe_digest,
)
from coco_ai.workloads.rag_index.corpus import (
    Document,
    RepositoryError,
    generate_repository,
    parse_repository,
    to_jsonl,
)


def test_generation_is_reproducible_and_answers_live_in_one_document_only() -> None:
    repo = generate_repository(20, seed=5)
    assert repo == generate_repository(20, seed=5)
    assert repo != generate_repository(20, seed=6)
    assert len(repo.documents) == 20
    assert len(repo.questions) == 20 * corpus.FACTS_PER_DOCUMENT
    assert {d.kind for d in repo.documents} == set(corpus.DOCUMENT_KINDS)
    texts = {d.id: d.text for d in repo.documents}
    for q in repo.questions:
        holders = [doc_id for doc_id, text in texts.items() if q.answer in text]
        assert holders == [q.doc_id]
        # held out: the question's wording is in no document
        assert not any(q.question in text for text in texts.values())


def test_capacity_is_enforced() -> None:
    with pytest.raises(ValueError, match=r"documents must be in \[1, "):
        generate_repository(corpus.capacity() + 1)
    assert len(generate_repository(corpus.capacity()).documents) == corpus.capacity()


def test_jsonl_round_trip() -> None:
    repo = generate_repository(6, seed=1)
    assert parse_repository(to_jsonl(repo)) == repo


def _doc(**fields) -> dict:
    return {"type": "document", "id": "d1", "kind": "manual", "title": "T", "text": "x y"} | fields


_QUESTION = {"type": "question", "question": "q?", "answer": "y", "doc_id": "d1"}


def _lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe" + _lines(_doc(), _QUESTION), "repository is not UTF-8 (byte offset 0)"),
        (_lines(_doc(), _QUESTION) + b"{nope\n", "record on line 3: not valid JSON"),
        (_lines([1, 2]), "record on line 1: expected a JSON object"),
        (_lines({"type": "memo"}), "record on line 1: 'type' must be 'document' or 'question'"),
        (_lines(_doc(extra=1), _QUESTION), "record on line 1: unknown field 'extra'"),
        (_lines({"type": "document", "id": "d1"}), "record on line 1: missing field 'kind'"),
        (_lines(_doc(text="  \n "), _QUESTION), "record on line 1: 'text' must be a non-empty"),
        (_lines(_doc(text=7), _QUESTION), "record on line 1: 'text' must be a non-empty"),
        (
            _lines(_doc(text="a" * (corpus.MAX_DOCUMENT_CHARS + 1)), _QUESTION),
            f"'text' longer than {corpus.MAX_DOCUMENT_CHARS} characters",
        ),
        (_lines(_doc(id="../etc"), _QUESTION), "record on line 1: 'id' is not a document id"),
        (_lines(_doc(kind="memo"), _QUESTION), "'kind' must be one of manual, ticket, runbook"),
        (_lines(_doc(), _doc(), _QUESTION), "document id 'd1' appears twice"),
        (_lines(_doc(), _QUESTION | {"doc_id": "d2"}), "question 1: doc_id 'd2' names no document"),
        (_lines(_QUESTION), "repository holds no documents"),
        (_lines(_doc()), "repository holds no evaluation questions"),
        (b"\n\n", "repository holds no documents"),
    ],
    ids=[
        "non-utf8", "bad-json", "not-object", "bad-type", "unknown-field", "missing-field",
        "empty-text", "text-not-string", "huge-document", "bad-id", "bad-kind", "duplicate-id",
        "question-unknown-doc", "no-documents", "no-questions", "empty",
    ],
)  # fmt: skip
def test_bad_repositories_are_refused_without_echoing_content(data, message) -> None:
    with pytest.raises(RepositoryError) as info:
        parse_repository(data)
    assert message in str(info.value)
    assert "x y" not in str(info.value)  # the document text is never in a message


def test_document_count_limit(monkeypatch) -> None:
    monkeypatch.setattr(corpus, "MAX_DOCUMENTS", 2)
    docs = [_doc(id=f"d{i}") for i in range(3)]
    with pytest.raises(RepositoryError, match="more than 2 documents"):
        parse_repository(_lines(*docs, _QUESTION))


# ---- chunker ----------------------------------------------------------------------------------


def test_windows_overlap_and_cite_exact_offsets() -> None:
    words = [f"w{i}" for i in range(25)]
    text = " ".join(words[:10]) + "\n\n" + " ".join(words[10:])
    doc = Document("d1", "manual", "Title", text)
    chunks = list(chunk_document(doc, ChunkerSettings(max_words=10, overlap_words=3)))
    # windows start every 7 words: 0-9, 7-16, 14-23, 21-24 (the last reaches the end)
    assert [c.text.split() for c in chunks] == [
        words[0:10],
        words[7:17],
        words[14:24],
        words[21:25],
    ]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.embed_text == c.text
    assert "\n\n" in chunks[1].text  # original spacing is kept within a chunk


def test_title_prefix_is_embedded_not_stored() -> None:
    doc = Document("d1", "ticket", "Ticket NWT-1", "one two three")
    (chunk,) = chunk_document(doc, ChunkerSettings(max_words=8, overlap_words=0, title_prefix=True))
    assert chunk.text == "one two three"
    assert chunk.embed_text == "Ticket NWT-1\none two three"


def test_every_document_gets_a_chunk_and_every_word_is_covered() -> None:
    repo = generate_repository(10, seed=2)
    settings = ChunkerSettings(max_words=16, overlap_words=4)
    chunks = chunk_documents(repo.documents, settings)
    for doc in repo.documents:
        mine = [c for c in chunks if c.doc_id == doc.id]
        assert mine and not doc.text[: mine[0].start].strip()  # from the first word on
        covered = set()
        for c in mine:
            assert len(c.text.split()) <= settings.max_words
            covered.update(
                m.start() for m in re.finditer(r"\S+", doc.text) if c.start <= m.start() < c.end
            )
        assert covered == {m.start() for m in re.finditer(r"\S+", doc.text)}


# ---- config -----------------------------------------------------------------------------------

_BASE = {
    "run_id": "run-1",
    "staging_uri": "file:///tmp/staging/run-1",
    "checkpoint_key_uri": "kbs:///coco-ai-run/checkpoint-key/run-1",
    "run_key_root_uri": "kbs:///coco-ai/run-key-root/v1",
    "repository": {"uri": "file:///tmp/repo.enc", "key_uri": "kbs:///default/rag/northwind"},
    "embedder": {"path": "/models/minilm", "digest": "sha256:" + "a" * 64},
}


def test_config_defaults_and_recipe_digest() -> None:
    cfg = RagIndexConfig.from_dict(_BASE)
    d = cfg.to_dict()
    assert d["chunker"] == {"max_words": 32, "overlap_words": 8, "title_prefix": False}
    assert d["index"]["engine"] == "faiss-hnsw"
    digest = recipe_digest(d)
    assert digest.startswith("sha256:")
    assert recipe_digest({**d, "run_id": "run-2"}) == digest  # the recipe, not the run
    changed = RagIndexConfig.from_dict({**_BASE, "evaluation": {"k": 3}}).to_dict()
    assert recipe_digest(changed) != digest


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"chunker": {"max_words": 10, "overlap_words": 10}},
         "chunker.overlap_words: 10 must be less than chunker.max_words (10)"),
        ({"chunker": {"title_prefix": "yes"}}, "chunker.title_prefix: expected true or false"),
        ({"chunker": {"max_words": 4}}, "chunker.max_words: 4 is out of range [8, 512]"),
        ({"index": {"engine": "annoy"}},
         "index.engine: 'annoy' is not one of faiss-hnsw, faiss-flat"),
        ({"embedder": {"path": "/m", "digest": "md5:00"}},
         "embedder.digest: 'md5:00' is not a digest"),
        ({"repository": {"uri": "x", "key_uri": "http://x"}}, "repository.key_uri:"),
        ({"evaluation": {"k": 0}}, "evaluation.k: 0 is out of range [1, 100]"),
        ({"lora": {}}, "lora: unknown field"),
    ],
    ids=["overlap", "bool", "max-words", "engine", "digest", "key-uri", "k", "unknown"],
)  # fmt: skip
def test_config_errors_name_the_field(override, message) -> None:
    with pytest.raises(ConfigError) as info:
        RagIndexConfig.from_dict({**_BASE, **override})
    assert message in str(info.value)


# ---- data-owner CLI ---------------------------------------------------------------------------


def test_rag_generate_and_encrypt_cli(tmp_path, capsys) -> None:
    import secrets

    from coco_ai.cli import main as coco_ai
    from coco_ai.crypto import decrypt_blob
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

    src, dst = tmp_path / "repo.jsonl", tmp_path / "repo.enc"
    assert coco_ai(["rag", "generate", "--out", str(src), "--documents", "5", "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(src),
        "documents": 5,
        "questions": 5 * corpus.FACTS_PER_DOCUMENT,
    }
    key = secrets.token_bytes(32)
    (tmp_path / "k").write_bytes(key)
    uri = "kbs:///default/rag/northwind"
    assert coco_ai(["rag", "encrypt", "--key-file", str(tmp_path / "k"), "--key-uri", uri,
                    str(src), str(dst)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["documents"] == 5 and printed["dataset_digest"].startswith("sha256:")
    plain = decrypt_blob(dst.read_bytes(), kek=key, aad_context=REPOSITORY_AAD, key_uri=uri)
    assert parse_repository(plain) == generate_repository(5, seed=2)

    src.write_bytes(_lines(_doc()))  # no questions: the workload would refuse it, so does this
    assert coco_ai(["rag", "encrypt", "--key-file", str(tmp_path / "k"), "--key-uri", uri,
                    str(src), str(tmp_path / "o")]) == 2  # fmt: skip
    assert "holds no evaluation questions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
