"""The vector index: FAISS inside the TEE process, its files kept in our encrypted checkpoint.

FAISS (faiss-cpu) is a library, not a server: the index lives in this process's memory and is
written as files into the workload's private temp dir, which the checkpoint format then
encrypts (docs/ARCHITECTURE.md, "Choices"). An index directory holds:

    index.faiss     the FAISS index (faiss.write_index): HNSW or flat, inner product
    chunks.jsonl    one line per vector, in vector order: doc_id, index, start, end, text
    documents.json  the documents indexed: id, kind, title, SHA-256 of the text, chunk count,
                    and how this build got its vectors (status: reused | added | changed)
    index.json      engine, FAISS version, dimension, metric, counts, settings, metrics and,
                    when incremental, the earlier index and the ids it had that were dropped

Vectors are unit length, so inner product = cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.workloads.rag_index.chunker import Chunk
from coco_ai.workloads.rag_index.config import IndexSettings
from coco_ai.workloads.rag_index.corpus import Document

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"
DOCUMENTS_FILE = "documents.json"
INDEX_INFO_FILE = "index.json"
INDEX_FORMAT = "coco-ai/rag-index"
INDEX_FORMAT_VERSION = 1


def build_index(vectors, settings: IndexSettings):
    """A FAISS index over ``vectors`` (n x dim float32, unit rows) with the given settings."""
    import faiss

    dim = vectors.shape[1]
    if settings.engine == "faiss-flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
    index.add(vectors)
    return index


def search(index, queries, k: int):
    """Top-``k`` (scores, vector ids) per query row; ids are -1 where fewer than k exist."""
    return index.search(queries, min(k, index.ntotal))


def exact_search(vectors, queries, k: int):
    """The exact top-``k`` by inner product: the baseline an approximate index is measured on."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, min(k, flat.ntotal))


def recall_vs_exact(approx_ids, exact_ids) -> float:
    """Mean fraction of each query's exact top-k that the approximate top-k also returns."""
    total = 0.0
    for got, want in zip(approx_ids, exact_ids, strict=True):
        wanted = {int(i) for i in want if i >= 0}
        total += len(wanted & {int(i) for i in got if i >= 0}) / max(len(wanted), 1)
    return total / max(len(exact_ids), 1)


@dataclass(frozen=True)
class Retrieval:
    hit_rate_at_1: float
    hit_rate_at_k: float
    mrr_at_k: float  # mean reciprocal rank of the first chunk from the answer's document


def retrieval_quality(chunk_ids, chunks: Sequence[Chunk], answer_docs: Sequence[str]) -> Retrieval:
    """Hit rate@1, hit rate@k and MRR@k of per-question ranked chunk ids against the documents
    that hold each question's answer."""
    hits1 = hitsk = rr = 0.0
    for ranked, doc_id in zip(chunk_ids, answer_docs, strict=True):
        docs = [chunks[int(i)].doc_id for i in ranked if i >= 0]
        if doc_id in docs:
            rank = docs.index(doc_id) + 1
            hitsk += 1
            hits1 += rank == 1
            rr += 1 / rank
    n = max(len(answer_docs), 1)
    return Retrieval(hits1 / n, hitsk / n, rr / n)


def document_digest(doc: Document) -> str:
    """``sha256:`` of the document's UTF-8 text (what a later re-index compares to skip it)."""
    return text_digest(doc.text)


def text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_index_dir(
    out: Path,
    index,
    chunks: Sequence[Chunk],
    documents: Sequence[Document],
    status: Mapping[str, str],
    info: dict[str, Any],
) -> None:
    """The index directory (module docstring) in ``out``, a private plaintext dir."""
    import faiss

    faiss.write_index(index, str(out / INDEX_FILE))
    with (out / CHUNKS_FILE).open("w", encoding="utf-8") as f:
        for c in chunks:
            record = {"doc_id": c.doc_id, "index": c.index, "start": c.start, "end": c.end}
            f.write(json.dumps({**record, "text": c.text}, ensure_ascii=False) + "\n")
    per_doc: dict[str, int] = {}
    for c in chunks:
        per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
    docs = [
        {
            "id": d.id,
            "kind": d.kind,
            "title": d.title,
            "sha256": document_digest(d),
            "chunks": per_doc.get(d.id, 0),
            "status": status[d.id],
        }
        for d in documents
    ]
    (out / DOCUMENTS_FILE).write_text(json.dumps(docs, ensure_ascii=False, indent=1))
    header = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION}
    (out / INDEX_INFO_FILE).write_text(json.dumps({**header, **info}, indent=1, sort_keys=True))


def faiss_version() -> str:
    import faiss

    return faiss.__version__
