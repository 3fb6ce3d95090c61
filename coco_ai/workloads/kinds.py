"""The confidential workloads the pipeline blocks can run, described as data.

A workload kind says what the generic blocks need to know and nothing more: the module the TEE
runs (``python -m <module> --config FILE``), the inputs key release pins (which of them need a
data key from Trustee, and how each one's digest is taken without any key), and how a run's
references plus its settings become the workload's validated config. A new confidential workload
is a module, an entry here and a DAG over the same operators — never a second chain of trust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coco_ai.runs import RunRefs
from coco_ai.storage import object_digest
from coco_ai.workloads.finetune.config import config_for_run as finetune_config
from coco_ai.workloads.models import model_digest
from coco_ai.workloads.rag_index.config import config_for_run as rag_index_config


@dataclass(frozen=True)
class WorkloadInput:
    name: str
    keyed: bool  # the TEE needs this input's data key, released by Trustee after attestation
    digest: Callable[[str], str]  # "sha256:<hex>" of the input at a URI, read without any key


@dataclass(frozen=True)
class WorkloadKind:
    name: str
    module: str
    inputs: tuple[WorkloadInput, ...]
    config: Callable[[RunRefs, Mapping[str, Any]], dict[str, Any]]


FINETUNE = WorkloadKind(
    name="finetune",
    module="coco_ai.workloads.finetune",
    inputs=(
        WorkloadInput("dataset", keyed=True, digest=object_digest),
        WorkloadInput("base_model", keyed=False, digest=model_digest),
    ),
    config=finetune_config,
)

# documents: the data owner's encrypted repository (one blob, docs/formats/rag.md), keyed;
# embedder: the sentence embedder's model directory, pinned by digest like a base model
RAG_INDEX = WorkloadKind(
    name="rag_index",
    module="coco_ai.workloads.rag_index",
    inputs=(
        WorkloadInput("documents", keyed=True, digest=object_digest),
        WorkloadInput("embedder", keyed=False, digest=model_digest),
    ),
    config=rag_index_config,
)

KINDS = {kind.name: kind for kind in (FINETUNE, RAG_INDEX)}


def workload_kind(name: str) -> WorkloadKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown workload {name!r}; known workloads: {', '.join(sorted(KINDS))}"
        ) from None
