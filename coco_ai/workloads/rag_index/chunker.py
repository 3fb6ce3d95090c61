"""The chunker: documents into overlapping word windows, each citable by document and offsets.

A word is a maximal run of non-whitespace characters. A document's words are cut into windows
of at most ``max_words`` words; consecutive windows share ``overlap_words`` words, so a sentence
cut at one window's end is whole in the next. A chunk's text is the document text between its
first and last word (original spacing and line breaks kept) and its citation is
``(doc_id, index, start, end)``, character offsets into the document text. With ``title_prefix``
the text that is embedded (not the stored chunk) starts with the document title and a line
break, so a chunk keeps the context its title gives. Deterministic; standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from coco_ai.workloads.rag_index.config import ChunkerSettings
from coco_ai.workloads.rag_index.corpus import Document

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    index: int  # position among the document's chunks, from 0
    start: int  # character offsets of the chunk in the document text
    end: int
    text: str  # the document text[start:end]
    embed_text: str  # what is embedded: text, after the title when title_prefix is set


def chunk_document(doc: Document, settings: ChunkerSettings) -> Iterator[Chunk]:
    spans = [m.span() for m in _WORD.finditer(doc.text)]
    step = settings.max_words - settings.overlap_words
    first = 0
    index = 0
    while first < len(spans):
        last = min(first + settings.max_words, len(spans)) - 1
        start, end = spans[first][0], spans[last][1]
        text = doc.text[start:end]
        embed = f"{doc.title}\n{text}" if settings.title_prefix else text
        yield Chunk(doc.id, index, start, end, text, embed)
        if last == len(spans) - 1:
            return
        first += step
        index += 1


def chunk_documents(docs: Iterable[Document], settings: ChunkerSettings) -> list[Chunk]:
    return [chunk for doc in docs for chunk in chunk_document(doc, settings)]
