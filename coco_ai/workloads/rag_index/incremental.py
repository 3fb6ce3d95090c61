"""Incremental re-indexing: reuse an earlier index's embeddings for unchanged documents.

A document's embeddings are a function of its text and title, the chunker settings, the
embedding settings that change a vector (``max_seq_length``) and the embedder. When all of these
are the same as in the earlier index, its vectors (read back from the FAISS index, in
``chunks.jsonl`` order) are reused; every other document is chunked and embedded again, and a
document the earlier index has but the repository no longer has is dropped. The FAISS index is
then rebuilt over all vectors, so the result is the index a full build would give (up to float
rounding of batched embedding). The earlier index was decrypted under its own run's key, derived
from the run-key root inside this TEE: only an attested TEE of the data owner's could have
written it (coco_ai.workloads.rag_index.workload).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.workloads.rag_index.chunker import Chunk
from coco_ai.workloads.rag_index.corpus import Document
from coco_ai.workloads.rag_index.index import (
    CHUNKS_FILE,
    DOCUMENTS_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    INDEX_INFO_FILE,
    document_digest,
)

#: per-document outcome of an incremental build (documents.json ``status``)
REUSED, ADDED, CHANGED = "reused", "added", "changed"


class PreviousIndexError(ValueError):
    """The earlier index cannot be read as an index (the message says what is wrong)."""


@dataclass(frozen=True)
class PreviousIndex:
    """What an earlier index holds, per document: its digest, title and chunk vectors."""

    settings: dict[str, Any]  # embedder digest, chunker, max_seq_length: what a vector depends on
    documents: dict[str, dict[str, Any]]  # id -> {"sha256", "title"}
    chunks: dict[str, list[tuple[str, Any]]]  # id -> [(chunk text, vector)] in chunk order


@dataclass(frozen=True)
class ReusePlan:
    """Which chunks take an earlier vector; everything else is embedded anew."""

    reused: dict[int, Any]  # chunk position -> vector
    status: dict[str, str]  # document id -> reused | added | changed
    removed: list[str]  # ids in the earlier index and not in this repository
    reason: str  # why nothing was reused, when nothing was ("" otherwise)

    def counts(self) -> dict[str, int]:
        values = list(self.status.values())
        return {
            "documents_reused": values.count(REUSED),
            "documents_added": values.count(ADDED),
            "documents_changed": values.count(CHANGED),
            "documents_removed": len(self.removed),
        }


def vector_settings(embedder_digest: str, chunker: dict, embedding: dict) -> dict[str, Any]:
    """The settings a stored vector depends on (batch size does not change a vector)."""
    return {
        "embedder_digest": embedder_digest,
        "chunker": dict(chunker),
        "max_seq_length": embedding["max_seq_length"],
    }


def read_previous(index_dir: Path) -> PreviousIndex:
    """The earlier index in ``index_dir`` (decrypted, coco_ai.workloads.rag_index.index)."""
    import faiss

    try:
        info = json.loads((index_dir / INDEX_INFO_FILE).read_text(encoding="utf-8"))
        docs = json.loads((index_dir / DOCUMENTS_FILE).read_text(encoding="utf-8"))
        lines = (index_dir / CHUNKS_FILE).read_text(encoding="utf-8").splitlines()
        chunk_rows = [json.loads(line) for line in lines]
        index = faiss.read_index(str(index_dir / INDEX_FILE))
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: faiss's read error
        raise PreviousIndexError(f"not a readable index: {type(exc).__name__}: {exc}") from None
    if info.get("format") != INDEX_FORMAT:
        raise PreviousIndexError(f"index.json format is {info.get('format')!r}")
    if index.ntotal != len(chunk_rows):
        raise PreviousIndexError(
            f"{index.ntotal} vectors for {len(chunk_rows)} chunks in {CHUNKS_FILE}"
        )
    vectors = index.reconstruct_n(0, index.ntotal)
    chunks: dict[str, list[tuple[str, Any]]] = {}
    for row, vector in zip(chunk_rows, vectors, strict=True):
        chunks.setdefault(row["doc_id"], []).append((row["text"], vector))
    return PreviousIndex(
        settings=vector_settings(
            info.get("embedder_digest", ""), info.get("chunker", {}), info.get("embedding", {})
        ),
        documents={d["id"]: {"sha256": d["sha256"], "title": d["title"]} for d in docs},
        chunks=chunks,
    )


def plan_reuse(
    previous: PreviousIndex | None,
    documents: Sequence[Document],
    chunks: Sequence[Chunk],
    settings: dict[str, Any],
) -> ReusePlan:
    """The vectors of ``previous`` that ``chunks`` (of ``documents``, chunked with the same
    ``settings``) can take over; a full build when there is no previous index or any setting a
    vector depends on differs."""
    if previous is None:
        return ReusePlan({}, {d.id: ADDED for d in documents}, [], "no previous index")
    current = {d.id for d in documents}
    removed = sorted(set(previous.documents) - current)
    if previous.settings != settings:
        changed = sorted(k for k in settings if previous.settings.get(k) != settings[k])
        status = {d.id: (CHANGED if d.id in previous.documents else ADDED) for d in documents}
        return ReusePlan({}, status, removed, f"settings differ: {', '.join(changed)}")
    by_doc: dict[str, list[int]] = {}
    for position, chunk in enumerate(chunks):
        by_doc.setdefault(chunk.doc_id, []).append(position)
    reused: dict[int, Any] = {}
    status: dict[str, str] = {}
    for doc in documents:
        before = previous.documents.get(doc.id)
        if before is None:
            status[doc.id] = ADDED
            continue
        old = previous.chunks.get(doc.id, [])
        positions = by_doc.get(doc.id, [])
        same = (
            before["sha256"] == document_digest(doc)
            and before["title"] == doc.title
            and [text for text, _ in old] == [chunks[p].text for p in positions]
        )
        if not same:
            status[doc.id] = CHANGED
            continue
        status[doc.id] = REUSED
        for position, (_, vector) in zip(positions, old, strict=True):
            reused[position] = vector
    return ReusePlan(reused, status, removed, "")
