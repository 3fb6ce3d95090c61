"""The confidential workloads the pipeline blocks can run, described as data.

A workload kind says what the generic blocks need to know and nothing more: the module the TEE
runs (``python -m <module> --config FILE``), the inputs key release pins (which of them need a
data key from Trustee, how each one's digest is taken without any key, and which manifest field
carries it), how a run's references plus its settings become the workload's validated config,
and how its output is promoted (:class:`PromotionRules`: recipe tables, the public config's
references to the inputs, metric thresholds and the champion metric). A new confidential
workload is a module, an entry here and a DAG over the same operators — never a second chain of
trust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coco_ai.runs import RunRefs
from coco_ai.storage import object_digest
from coco_ai.workloads.federated.config import RECIPE_TABLES as FEDERATED_RECIPE
from coco_ai.workloads.federated.config import config_for_run as federated_config
from coco_ai.workloads.finetune.config import RECIPE_TABLES as FINETUNE_RECIPE
from coco_ai.workloads.finetune.config import config_for_run as finetune_config
from coco_ai.workloads.models import model_digest
from coco_ai.workloads.rag_index.config import RECIPE_TABLES as RAG_INDEX_RECIPE
from coco_ai.workloads.rag_index.config import config_for_run as rag_index_config

#: the two input-digest fields of the signed manifest (coco_ai.crypto.manifest)
MANIFEST_INPUT_FIELDS = ("dataset_digest", "base_model_digest")


@dataclass(frozen=True)
class WorkloadInput:
    name: str
    keyed: bool  # the TEE needs this input's data key, released by Trustee after attestation
    digest: Callable[[str], str]  # "sha256:<hex>" of the input at a URI, read without any key
    manifest_field: str  # the manifest field the TEE signs this input's digest in
    label: str  # what a refusal calls it ("data set", "embedder")
    #: (table, field) of the public config naming the digest, when the config names it
    config_digest: tuple[str, str] | None = None


@dataclass(frozen=True)
class Threshold:
    """A promotion threshold the owner policy may set and a run may only tighten."""

    name: str  # in the owner policy and the run's parameters
    minimum: bool  # True: a floor (tightening raises it); False: a ceiling (tightening lowers it)
    #: the manifest metric it bounds; None: a derived rule of promotion.rego (relative
    #: improvement, computed from two metrics)
    metric: str | None
    default: float | None = None  # applied when the owner policy names none


@dataclass(frozen=True)
class PromotionRules:
    """How an output of the kind is judged at promotion (coco_ai.promotion)."""

    recipe_tables: tuple[str, ...]  # the config tables the owner approves by digest
    recipe_label: str  # what a refusal calls the recipe
    thresholds: tuple[Threshold, ...]
    champion_metric: str  # compared with the served version's (the champion rule)
    higher_is_better: bool

    def threshold(self, name: str) -> Threshold | None:
        return next((t for t in self.thresholds if t.name == name), None)


@dataclass(frozen=True)
class WorkloadKind:
    name: str
    module: str
    inputs: tuple[WorkloadInput, ...]
    config: Callable[[RunRefs, Mapping[str, Any]], dict[str, Any]]
    promotion: PromotionRules


FINETUNE = WorkloadKind(
    name="finetune",
    module="coco_ai.workloads.finetune",
    inputs=(
        WorkloadInput(
            "dataset",
            keyed=True,
            digest=object_digest,
            manifest_field="dataset_digest",
            label="data set",
        ),
        WorkloadInput(
            "base_model",
            keyed=False,
            digest=model_digest,
            manifest_field="base_model_digest",
            label="base model",
            config_digest=("base_model", "digest"),
        ),
    ),
    config=finetune_config,
    promotion=PromotionRules(
        recipe_tables=FINETUNE_RECIPE,
        recipe_label="training recipe",
        thresholds=(
            Threshold("max_eval_loss", minimum=False, metric="eval_loss"),
            Threshold("min_relative_improvement", minimum=True, metric=None),
        ),
        champion_metric="eval_loss",
        higher_is_better=False,
    ),
)

# documents: the data owner's encrypted repository (one blob, docs/formats/rag.md), keyed;
# embedder: the sentence embedder's model directory, pinned by digest like a base model
RAG_INDEX = WorkloadKind(
    name="rag_index",
    module="coco_ai.workloads.rag_index",
    inputs=(
        WorkloadInput(
            "documents",
            keyed=True,
            digest=object_digest,
            manifest_field="dataset_digest",
            label="document repository",
        ),
        WorkloadInput(
            "embedder",
            keyed=False,
            digest=model_digest,
            manifest_field="base_model_digest",
            label="embedder",
            config_digest=("embedder", "digest"),
        ),
    ),
    config=rag_index_config,
    promotion=PromotionRules(
        recipe_tables=RAG_INDEX_RECIPE,
        recipe_label="indexing recipe",
        thresholds=(
            Threshold("min_hit_rate_at_1", minimum=True, metric="hit_rate_at_1"),
            Threshold("min_hit_rate_at_k", minimum=True, metric="hit_rate_at_k"),
            Threshold("min_mrr_at_k", minimum=True, metric="mrr_at_k"),
            # an approximate index that loses more than 5 % of the exact top-10 is a broken one
            Threshold(
                "min_ann_recall_at_10", minimum=True, metric="ann_recall_at_10", default=0.95
            ),
        ),
        champion_metric="hit_rate_at_k",
        higher_is_better=True,
    ),
)

_BASE_MODEL = WorkloadInput(
    "base_model",
    keyed=False,
    digest=model_digest,
    manifest_field="base_model_digest",
    label="base model",
    config_digest=("base_model", "digest"),
)
_FEDERATED_PROMOTION = PromotionRules(
    recipe_tables=FEDERATED_RECIPE,
    recipe_label="federation recipe",
    thresholds=(
        # the participants' held-out loss after the last round, weighted by their steps
        Threshold("max_eval_loss", minimum=False, metric="eval_loss"),
        # the quorum: accepted updates in the round that had the fewest
        Threshold("min_participants", minimum=True, metric="min_round_participants"),
    ),
    champion_metric="eval_loss",
    higher_is_better=False,
)

# Federated fine-tuning (coco_ai.workloads.federated): one module, one TEE per party. The
# aggregator's output — the global adapter with its contribution record — is what is promoted;
# a participant (its data owner's keyed data set) stages nothing, so its rules never apply.
FL_AGGREGATOR = WorkloadKind(
    name="fl_aggregator",
    module="coco_ai.workloads.federated",
    inputs=(_BASE_MODEL,),
    config=federated_config,
    promotion=_FEDERATED_PROMOTION,
)
FL_PARTICIPANT = WorkloadKind(
    name="fl_participant",
    module="coco_ai.workloads.federated",
    inputs=(
        WorkloadInput(
            "dataset",
            keyed=True,
            digest=object_digest,
            manifest_field="dataset_digest",
            label="data set",
        ),
        _BASE_MODEL,
    ),
    config=federated_config,
    promotion=_FEDERATED_PROMOTION,
)

KINDS = {kind.name: kind for kind in (FINETUNE, RAG_INDEX, FL_AGGREGATOR, FL_PARTICIPANT)}


def workload_kind(name: str) -> WorkloadKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown workload {name!r}; known workloads: {', '.join(sorted(KINDS))}"
        ) from None
