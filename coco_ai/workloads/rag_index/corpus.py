"""The confidential document repository: generation, parsing with limits, and its evaluation set.

The generated repository is Northwind Aerospace's internal documents — equipment manuals, support
tickets and operations runbooks — built from the same seeded facts as the fine-tune data set
(coco_ai.workloads.dataset): ticket queues, hostnames, escalation rules, lab locations and so on.
Each fact is stated in exactly one document, among filler prose, and asked by one held-out
question (a phrasing that appears in no document) whose answer is that document. No pretrained
model knows these values, so a correct answer can only come from retrieval.

Format (docs/formats/rag.md): UTF-8 JSON Lines, one object per line, either a document
``{"type": "document", "id", "kind", "title", "text"}`` or an evaluation question
``{"type": "question", "question", "answer", "doc_id"}``. Standard library only. Error messages
name the line and field, never the content (it is confidential).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace

from coco_ai.workloads.dataset import FACT_TEMPLATES, Example, FactTemplate

# Limits the workload enforces (documented in docs/formats/rag.md): bounded memory inside the TEE
MAX_REPOSITORY_BYTES = 256 << 20  # the encrypted blob, checked before decryption
MAX_DOCUMENTS = 100_000
MAX_DOCUMENT_CHARS = 1 << 20  # one document's text
MAX_TITLE_CHARS = 512
MAX_QUESTIONS = 10_000
MAX_QUESTION_CHARS = 2048
DOCUMENT_KINDS = ("manual", "ticket", "runbook")
_DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DOC_ID_RULE = "[A-Za-z0-9._-], at most 128, not starting with . - _"

FACTS_PER_DOCUMENT = 3
DEFAULT_DOCUMENTS = 30


class RepositoryError(ValueError):
    """The repository is malformed, over a limit or inconsistent; the message names the line."""


@dataclass(frozen=True)
class Document:
    id: str
    kind: str  # manual | ticket | runbook
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    question: str
    answer: str  # the sentence of the document that answers it
    doc_id: str  # the document that holds the answer


@dataclass(frozen=True)
class Repository:
    documents: tuple[Document, ...]
    questions: tuple[Question, ...]


# ---- generation -------------------------------------------------------------------------------

_FILLER = {
    "manual": (
        "This manual is controlled; print copies are uncontrolled and expire after 30 days.",
        "Read the safety notes in section 1 before working on any equipment described here.",
        "Figures are not to scale. Torque values are given in newton-metres.",
        "Report errors in this manual to the technical publications team.",
        "Keep the area clear of foreign objects and debris at all times.",
    ),
    "ticket": (
        "Customer reported the issue during the morning stand-up.",
        "Priority was confirmed with the requester by phone.",
        "Attached logs were reviewed; no personal data is included.",
        "Work notes were updated and the requester was informed.",
        "Closing this ticket after confirmation from the requester.",
    ),
    "runbook": (
        "Follow the steps in order and record each one in the shift log.",
        "If any step fails, stop and contact the on-call engineer before continuing.",
        "This runbook is reviewed every quarter by the owning team.",
        "Verify monitoring is green before declaring the procedure complete.",
        "Do not share screenshots of internal dashboards outside the company.",
    ),
}
_TITLES = {
    "manual": "Northwind {topic} handbook, revision {rev}",
    "ticket": "Ticket NWT-{num}: question about {topic}",
    "runbook": "Runbook: {topic} procedures",
}


def capacity() -> int:
    """The largest number of documents :func:`generate_repository` can produce."""
    return sum(len(t.subjects) for t in FACT_TEMPLATES) // FACTS_PER_DOCUMENT


def generate_repository(n: int = DEFAULT_DOCUMENTS, seed: int = 0) -> Repository:
    """``n`` documents of ``FACTS_PER_DOCUMENT`` facts each, with one held-out question per fact.

    The same ``(n, seed)`` always gives the same repository."""
    if not 1 <= n <= capacity():
        raise ValueError(f"documents must be in [1, {capacity()}], got {n}")
    rng = random.Random(seed)  # noqa: S311 (reproducible synthetic data, not security)
    facts: list[tuple[FactTemplate, str]] = [(t, s) for t in FACT_TEMPLATES for s in t.subjects]
    rng.shuffle(facts)
    documents: list[Document] = []
    questions: list[Question] = []
    for i in range(n):
        kind = DOCUMENT_KINDS[i % len(DOCUMENT_KINDS)]
        doc_id = f"nw-{kind}-{i + 1:04d}"
        chosen = facts[i * FACTS_PER_DOCUMENT : (i + 1) * FACTS_PER_DOCUMENT]
        paragraphs = []
        for template, subject in chosen:
            answer = template.answer(rng, subject)  # type: ignore[operator]
            filler = rng.sample(_FILLER[kind], 2)
            paragraphs.append(f"{filler[0]} {answer} {filler[1]}")
            questions.append(
                Question(rng.choice(template.questions).format(s=subject), answer, doc_id)
            )
        topic = chosen[0][1]
        title = _TITLES[kind].format(
            topic=topic, rev=rng.randint(2, 9), num=rng.randint(10000, 99999)
        )
        documents.append(Document(doc_id, kind, title, "\n\n".join(paragraphs)))
    return Repository(tuple(documents), tuple(questions))


def revise_repository(
    n: int = DEFAULT_DOCUMENTS, seed: int = 0, *, changed: int = 0, removed: int = 0, added: int = 0
) -> Repository:
    """A later version of ``generate_repository(n, seed)``: its first ``changed`` documents
    edited (a sentence appended), the next ``removed`` ones dropped with their questions, and
    ``added`` new documents (those ``generate_repository(n + added, seed)`` adds) at the end."""
    if changed + removed > n:
        raise ValueError(f"cannot change {changed} and remove {removed} of {n} documents")
    grown = generate_repository(n + added, seed)
    dropped = {d.id for d in grown.documents[changed : changed + removed]}
    documents = [
        replace(d, text=d.text + "\n\nRevised: the procedure was re-validated.")
        if i < changed
        else d
        for i, d in enumerate(grown.documents)
        if d.id not in dropped
    ]
    questions = tuple(q for q in grown.questions if q.doc_id not in dropped)
    return Repository(tuple(documents), questions)


def finetune_examples(repository: Repository) -> list[Example]:
    """The fine-tune records that teach the repository's generated facts without its held-out
    questions: for each question, the other phrasings of its fact, answered by its answer
    sentence. What a data owner fine-tuning on these documents would train on; the held-out
    phrasing stays unseen, so a fine-tuned model answering it has generalised. Questions that
    are not generated phrasings (a real repository's) contribute nothing."""
    asked = {
        q.format(s=subject): (template, subject)
        for template in FACT_TEMPLATES
        for subject in template.subjects
        for q in template.questions
    }
    out: list[Example] = []
    for question in repository.questions:
        if question.question not in asked:
            continue
        template, subject = asked[question.question]
        for phrasing in template.questions:
            text = phrasing.format(s=subject)
            if text != question.question:
                out.append(Example(text, question.answer))
    return out


def to_jsonl(repository: Repository) -> bytes:
    lines = [
        {"type": "document", "id": d.id, "kind": d.kind, "title": d.title, "text": d.text}
        for d in repository.documents
    ] + [
        {"type": "question", "question": q.question, "answer": q.answer, "doc_id": q.doc_id}
        for q in repository.questions
    ]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines).encode("utf-8")


# ---- parsing ----------------------------------------------------------------------------------

_FIELDS = {
    "document": {"type", "id", "kind", "title", "text"},
    "question": {"type", "question", "answer", "doc_id"},
}


def parse_repository(data: bytes) -> Repository:
    """Parse and validate a repository's plaintext. Raises :class:`RepositoryError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RepositoryError(f"repository is not UTF-8 (byte offset {exc.start})") from None
    documents: list[Document] = []
    questions: list[Question] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"record on line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RepositoryError(f"{where}: expected a JSON object")
        kind = record.get("type")
        if kind not in _FIELDS:
            raise RepositoryError(f"{where}: 'type' must be 'document' or 'question'")
        extra = sorted(set(record) - _FIELDS[kind])
        if extra:
            raise RepositoryError(f"{where}: unknown field {extra[0]!r}")
        missing = sorted(_FIELDS[kind] - set(record))
        if missing:
            raise RepositoryError(f"{where}: missing field {missing[0]!r}")
        if kind == "document":
            documents.append(_document(record, where))
            if len(documents) > MAX_DOCUMENTS:
                raise RepositoryError(f"more than {MAX_DOCUMENTS} documents")
        else:
            questions.append(_question(record, where))
            if len(questions) > MAX_QUESTIONS:
                raise RepositoryError(f"more than {MAX_QUESTIONS} questions")
    if not documents:
        raise RepositoryError("repository holds no documents")
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise RepositoryError(f"document id {dup!r} appears twice")
    if not questions:
        raise RepositoryError("repository holds no evaluation questions")
    known = set(ids)
    for n, q in enumerate(questions, start=1):
        if q.doc_id not in known:
            raise RepositoryError(f"question {n}: doc_id {q.doc_id!r} names no document")
    return Repository(tuple(documents), tuple(questions))


def _text(record: dict, name: str, where: str, limit: int) -> str:
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise RepositoryError(f"{where}: {name!r} must be a non-empty string")
    if len(value) > limit:
        raise RepositoryError(f"{where}: {name!r} longer than {limit} characters")
    return value


def _doc_id(record: dict, name: str, where: str) -> str:
    value = record[name]
    if not isinstance(value, str) or not _DOC_ID.match(value):
        raise RepositoryError(f"{where}: {name!r} is not a document id ({DOC_ID_RULE})")
    return value


def _document(record: dict, where: str) -> Document:
    if record["kind"] not in DOCUMENT_KINDS:
        raise RepositoryError(f"{where}: 'kind' must be one of {', '.join(DOCUMENT_KINDS)}")
    return Document(
        _doc_id(record, "id", where),
        record["kind"],
        _text(record, "title", where, MAX_TITLE_CHARS),
        _text(record, "text", where, MAX_DOCUMENT_CHARS),
    )


def _question(record: dict, where: str) -> Question:
    return Question(
        _text(record, "question", where, MAX_QUESTION_CHARS),
        _text(record, "answer", where, MAX_DOCUMENT_CHARS),
        _doc_id(record, "doc_id", where),
    )
