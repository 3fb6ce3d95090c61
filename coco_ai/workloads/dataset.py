"""The confidential instruction data set: generation, parsing/validation and the train/eval split.

The generated data set is the internal support knowledge of a fictional company, Northwind
Aerospace: ticket queues, internal hostnames, escalation rules, on-call hand-overs, lab locations,
extensions, retention rules, code names. Every value is drawn from a seeded RNG, so no pretrained
model can know it. Each fact is asked in several phrasings with one canonical answer, and the split
holds out some phrasings of every fact: the eval split tests the same facts with unseen wording.

Standard library only. Records are JSON Lines of exactly ``{"instruction": str, "response": str}``.
Error messages name the line and field, never the content (the content is confidential).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import NamedTuple

MAX_FIELD_CHARS = 8192
# aad context every encrypted data set is bound to (with its key URI): a checkpoint file or any
# other blob under the same key cannot be passed off as a data set
DATASET_AAD = {"type": "coco-ai/dataset-jsonl", "version": 1}
MIN_TRAIN_EXAMPLES = 4
MIN_EVAL_EXAMPLES = 2
DEFAULT_EXAMPLES = 400
PHRASINGS_PER_FACT = 5


class DatasetError(ValueError):
    """The data set is malformed or too small; the message names the record and field."""


class Example(NamedTuple):
    instruction: str
    response: str


# ---- generation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactTemplate:
    """One kind of fact: its subjects, the phrasings that ask it, and how its answer is drawn."""

    subjects: tuple[str, ...]
    questions: tuple[str, ...]  # PHRASINGS_PER_FACT phrasings with {s}
    answer: object  # callable(rng, subject) -> str


def _host(rng: random.Random, stem: str) -> str:
    site = rng.choice(("wic", "tls", "bri", "mtl"))
    return f"{stem}-{rng.randint(10, 99)}.{site}.nwa.internal"


def _code(rng: random.Random, prefix: str) -> str:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
    return f"{prefix}-{letters}{rng.randint(100, 999)}"


_TEAMS = (
    "Platform SRE", "Flight Software", "Avionics Test", "Network Operations", "Identity & Access",
    "Ground Systems", "Data Platform", "Workplace IT", "Security Operations", "Lab Infrastructure",
)  # fmt: skip
_TOOLS = ("PagerDuty", "the NOC bridge line", "OpsGenie", "the #nwa-incident channel")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_ROLES = (
    "the duty manager", "the site reliability lead", "the director of IT operations",
    "the chief information security officer", "the program safety officer",
)  # fmt: skip
_BUILDINGS = ("Hangar 3", "Building 7", "Building 12", "the Kestrel Annex", "Building 21")
_PEOPLE = (
    "Ines Okafor", "Tomasz Reyes", "Priya Lindqvist", "Marco Haddad", "Yuki Brennan",
    "Daniel Achterberg", "Sofia Marchetti", "Kwame Laurent", "Hannah Idris", "Leo Varga",
)  # fmt: skip


def _ticket(rng: random.Random, s: str) -> str:
    return (
        f"File {s} tickets in the {_code(rng, 'NWA')} queue; "
        f"the {rng.choice(_TEAMS)} team triages it within {rng.choice((2, 4, 8, 24))} hours."
    )


def _hostname(rng: random.Random, s: str) -> str:
    stem = "".join(w[0] for w in s.split()).lower() + rng.choice(("srv", "app", "svc", "node"))
    return f"The {s} runs on {_host(rng, stem)}, port {rng.choice((443, 8443, 9443, 7070))}."


def _escalation(rng: random.Random, s: str) -> str:
    first, second = rng.sample(range(5, 46, 5), 2)
    return (
        f"For {s} incidents, page the {rng.choice(_TEAMS)} on-call through {rng.choice(_TOOLS)}; "
        "if nobody "
        f"acknowledges within {min(first, second)} minutes, escalate to {rng.choice(_ROLES)}."
    )


def _handover(rng: random.Random, s: str) -> str:
    hour = rng.choice(("08:00", "09:30", "10:00", "14:00", "16:30"))
    return (
        f"The {s} rotation hands over every {rng.choice(_DAYS)} at {hour} UTC; "
        f"the rota owner is {rng.choice(_PEOPLE)}."
    )


def _location(rng: random.Random, s: str) -> str:
    return (
        f"The {s} is in {rng.choice(_BUILDINGS)}, room {rng.randint(1, 4)}{rng.randint(10, 60)}; "
        f"entry needs badge level {rng.choice(('B2', 'B3', 'C1', 'C2', 'D1'))}."
    )


def _extension(rng: random.Random, s: str) -> str:
    return f"Call the {s} on extension {rng.randint(4000, 7999)} (staffed {rng.choice(_HOURS)})."


_HOURS = ("07:00-19:00 UTC", "24/7", "08:00-17:00 local time", "06:00-22:00 UTC")


def _retention(rng: random.Random, s: str) -> str:
    return (
        f"{s[0].upper()}{s[1:]} are kept for {rng.choice((2, 3, 5, 7, 10, 15))} years "
        f"in the {rng.choice(('Vault', 'Archive-7', 'ColdStore', 'RecordsHub'))} system, "
        f"then destroyed under rule {_code(rng, 'RET')}."
    )


def _codename(rng: random.Random, s: str) -> str:
    program = rng.choice(
        ("next-generation flight control computer", "satellite ground-station refresh",
         "hydrogen fuel-cell test rig", "cabin telemetry upgrade", "composite wing spar line",
         "autonomous taxi demonstrator", "radar altimeter redesign", "supplier portal rebuild")
    )  # fmt: skip
    lead = rng.choice(_PEOPLE)
    return f"{s} is the internal code name for the {program}; its program lead is {lead}."


def _freeze(rng: random.Random, s: str) -> str:
    day = rng.randint(1, 20)
    return (
        f"Changes to the {s} are frozen from the {day}th to the {day + rng.randint(3, 8)}th "
        f"of every month; exceptions need approval code {_code(rng, 'CAB')}."
    )


FACT_TEMPLATES = (
    FactTemplate(
        ("laptop hardware", "VPN access", "badge access", "CAD licence", "payroll correction",
         "wind-tunnel booking", "export-control review", "printer", "SSO password reset",
         "expense report", "parking permit", "lab safety incident", "software install",
         "shared-drive quota", "travel booking", "telemetry data request"),
        ("What ticket queue do I use for {s} at Northwind?",
         "Where should I file a {s} ticket?",
         "Which queue handles {s} requests?",
         "I have a {s} problem. Where do I raise a ticket?",
         "At Northwind Aerospace, what is the queue code for {s}?"),
        _ticket,
    ),
    FactTemplate(
        ("build farm", "flight-data archive", "telemetry dashboard", "licence server",
         "engineering wiki", "artifact mirror", "git server", "HR portal", "time-tracking service",
         "test-bench scheduler", "simulation cluster", "PLM vault", "certificate authority",
         "log search", "metrics store", "requirements tracker"),
        ("What is the internal hostname of the {s}?",
         "Which host serves Northwind's {s}?",
         "Where does the {s} live on the internal network?",
         "I need to connect to the {s}. Which host and port?",
         "Give me the address of the Northwind {s}."),
        _hostname,
    ),
    FactTemplate(
        ("Sev-1 build farm", "Sev-1 flight-data archive", "Sev-2 VPN", "Sev-1 identity provider",
         "Sev-2 telemetry ingest", "Sev-1 ground-station link", "Sev-2 simulation cluster",
         "Sev-1 payroll", "Sev-2 email", "Sev-1 test-bench network", "Sev-2 licence server",
         "Sev-1 security"),
        ("Who do I page for a {s} incident?",
         "How is a {s} incident escalated?",
         "What is the escalation path for a {s} outage?",
         "We have a {s} incident. Who gets paged and when do we escalate?",
         "Describe Northwind's escalation rule for {s} incidents."),
        _escalation,
    ),
    FactTemplate(
        tuple(f"{t} on-call" for t in _TEAMS),
        ("When does the {s} rotation hand over?",
         "What day and time does the {s} shift change?",
         "Who owns the {s} rota and when is handover?",
         "Tell me the handover schedule for the {s}.",
         "At what time is the weekly {s} handover?"),
        _handover,
    ),
    FactTemplate(
        ("anechoic chamber", "avionics integration lab", "composites lab", "clean room",
         "hydraulics test bay", "EMC test lab", "flight simulator suite", "metrology lab",
         "battery test cell", "secure briefing room", "rapid prototyping shop", "server room"),
        ("Where is the {s}?",
         "In which building and room is the {s}?",
         "How do I get into the {s}?",
         "What badge level do I need for the {s}, and where is it?",
         "Where can I find Northwind's {s}?"),
        _location,
    ),
    FactTemplate(
        ("IT service desk", "badge office", "payroll desk", "export-control office",
         "travel desk", "facilities helpdesk", "security control room", "lab safety officer",
         "records office", "benefits team", "procurement desk", "NOC"),
        ("What is the phone extension of the {s}?",
         "How do I call the {s}?",
         "Which extension reaches the {s}?",
         "I need to phone the {s}. What number do I dial?",
         "What are the {s}'s extension and hours?"),
        _extension,
    ),
    FactTemplate(
        ("flight test recordings", "export licence files", "badge access logs",
         "supplier contracts", "personnel files", "incident reports", "VPN connection logs",
         "engineering change orders", "payroll records", "calibration certificates"),
        ("How long are {s} retained?",
         "What is the retention period for {s}?",
         "Where are {s} archived and for how long?",
         "When can {s} be destroyed?",
         "What does Northwind's records policy say about {s}?"),
        _retention,
    ),
    FactTemplate(
        ("Project Kestrel", "Project Halcyon", "Project Ironbark", "Project Meridian",
         "Project Sable", "Project Tamarack", "Project Wren", "Project Corvid", "Project Basalt",
         "Project Lumen"),
        ("What is {s}?",
         "What does the code name {s} refer to?",
         "Who leads {s} and what is it about?",
         "Can you explain what {s} is at Northwind?",
         "Tell me about {s}."),
        _codename,
    ),
    FactTemplate(
        ("ERP system", "identity provider", "build farm", "flight-data archive",
         "ground-station network", "PLM vault", "payroll system", "core network"),
        ("When is the change freeze for the {s}?",
         "Which days can I not change the {s}?",
         "What is the monthly freeze window for the {s}?",
         "I need to deploy to the {s}. When is it frozen?",
         "How do I get an exception to the {s} change freeze?"),
        _freeze,
    ),
)  # fmt: skip


def capacity() -> int:
    """The largest number of examples :func:`generate_examples` can produce."""
    return sum(len(t.subjects) for t in FACT_TEMPLATES) * PHRASINGS_PER_FACT


def generate_examples(n: int = DEFAULT_EXAMPLES, seed: int = 0) -> list[Example]:
    """``n`` examples (whole facts, ``PHRASINGS_PER_FACT`` phrasings each; the last fact may be
    cut short); the same ``(n, seed)`` always gives the same list."""
    if not 1 <= n <= capacity():
        raise ValueError(f"examples must be in [1, {capacity()}], got {n}")
    rng = random.Random(seed)  # noqa: S311 (reproducible synthetic data, not security)
    facts = [(t, s) for t in FACT_TEMPLATES for s in t.subjects]
    rng.shuffle(facts)
    out: list[Example] = []
    for template, subject in facts:
        answer = template.answer(rng, subject)  # type: ignore[operator]
        phrasings = list(template.questions)
        rng.shuffle(phrasings)
        for q in phrasings:
            if len(out) == n:
                return out
            out.append(Example(q.format(s=subject), answer))
    return out


def corpus_text(examples: list[Example]) -> list[str]:
    """Text lines to train a tokenizer on."""
    return [line for e in examples for line in (e.instruction, e.response)]


# ---- JSONL ------------------------------------------------------------------------------------


def to_jsonl(examples: list[Example]) -> bytes:
    lines = (
        json.dumps({"instruction": e.instruction, "response": e.response}, ensure_ascii=False)
        for e in examples
    )
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_jsonl(data: bytes) -> list[Example]:
    """Parse and validate records; blank lines are skipped. Raises :class:`DatasetError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"data set is not UTF-8 (byte offset {exc.start})") from None
    out: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"record on line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"record on line {lineno}: expected a JSON object")
        extra = sorted(set(record) - {"instruction", "response"})
        if extra:
            raise DatasetError(f"record on line {lineno}: unknown field {extra[0]!r}")
        for name in ("instruction", "response"):
            value = record.get(name)
            if value is None:
                raise DatasetError(f"record on line {lineno}: missing field {name!r}")
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"record on line {lineno}: {name!r} must be a non-empty string")
            if len(value) > MAX_FIELD_CHARS:
                raise DatasetError(
                    f"record on line {lineno}: {name!r} longer than {MAX_FIELD_CHARS} characters"
                )
        out.append(Example(record["instruction"], record["response"]))
    if not out:
        raise DatasetError("data set holds no records")
    return out


# ---- split ------------------------------------------------------------------------------------


def split_examples(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out phrasings, not facts: records sharing a response are one fact; from every fact
    with at least two phrasings, ``round(eval_fraction * phrasings)`` (at least one, never all)
    go to eval. Deterministic for a seed. Raises :class:`DatasetError` if either side is too small.
    """
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.response, []).append(e)
    rng = random.Random(seed)  # noqa: S311 (reproducible synthetic data, not security)
    train: list[Example] = []
    held: list[Example] = []
    for group in groups.values():
        members = list(group)
        rng.shuffle(members)
        k = (
            0
            if len(members) < 2
            else min(len(members) - 1, max(1, round(eval_fraction * len(members))))
        )
        held.extend(members[:k])
        train.extend(members[k:])
    if len(train) < MIN_TRAIN_EXAMPLES or len(held) < MIN_EVAL_EXAMPLES:
        raise DatasetError(
            f"too few examples for the split: {len(examples)} records give {len(train)} train / "
            f"{len(held)} eval with eval_fraction {eval_fraction}; need at least "
            f"{MIN_TRAIN_EXAMPLES} train and {MIN_EVAL_EXAMPLES} eval (eval needs facts asked "
            "in two or more phrasings)"
        )
    rng.shuffle(train)
    return train, held
