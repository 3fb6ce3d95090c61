"""The `confidential_rag_index` DAG as the dag-processor sees it: the fine-tune's pipeline shape
on the same operators, a rag_index key release, its Asset trigger and its trigger form."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset, TriggerRule
from airflow.sdk.exceptions import ParamValidationError

from coco_ai.workloads.kinds import RAG_INDEX
from coco_ai_airflow.keys import KeyReleaseOperator
from coco_ai_airflow.promotion import (
    AttestedModelPromotionOperator,
    ServedVersionOperator,
    narrowing,
)
from coco_ai_airflow.workload import ConfidentialWorkloadOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"
PIPELINE = [
    "attestation_gate",
    "key_release",
    "confidential_rag_index",
    "encrypted_checkpoint_upload",
    "attested_promotion",
]


@pytest.fixture(scope="module")
def bag():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def dag(bag):
    return bag.dags["confidential_rag_index"]


def test_the_pipeline_is_the_fine_tunes_on_the_same_operators(dag, bag):
    finetune = bag.dags["confidential_finetune"]
    assert set(dag.task_dict) == {*PIPELINE, "revoke_keys", "served_index"}
    for upstream, downstream in itertools.pairwise(PIPELINE):
        assert {downstream, "revoke_keys"} <= dag.task_dict[upstream].downstream_task_ids
    assert dag.task_dict["revoke_keys"].downstream_task_ids == set()
    # position by position, the same operator classes (the workload step is named per kind)
    kinds = [type(t).__name__ for t in dag.topological_sort() if t.task_id != "served_index"]
    assert kinds == [type(t).__name__ for t in finetune.topological_sort()]
    assert isinstance(dag.task_dict["confidential_rag_index"], ConfidentialWorkloadOperator)
    assert isinstance(dag.task_dict["attested_promotion"], AttestedModelPromotionOperator)


def test_revocation_always_runs_and_never_hides_a_failure(dag):
    revoke = dag.task_dict["revoke_keys"]
    assert revoke.trigger_rule == TriggerRule.ALL_DONE and revoke.is_teardown
    for task_id in PIPELINE:
        assert dag.task_dict[task_id].trigger_rule == TriggerRule.ALL_SUCCESS
    retries = {t.task_id: t.retries for t in dag.tasks}
    assert retries["confidential_rag_index"] == 0 and retries["attested_promotion"] == 0


def test_key_release_pins_the_rag_index_inputs(dag):
    release = dag.task_dict["key_release"]
    assert isinstance(release, KeyReleaseOperator)
    assert release.workload == RAG_INDEX.name
    assert set(release.inputs) == {spec.name for spec in RAG_INDEX.inputs}
    assert release.inputs["documents"] == {
        "uri": "{{ params.documents_uri }}",
        "key_uri": "{{ params.documents_key_uri }}",
    }


def test_triggered_by_new_repository_versions_and_emits_the_promoted_index(dag):
    # [coco_ai] reindex_cron is empty by default: only Asset events (and REST/UI) start runs
    assert dag.timetable.asset_condition == Asset(
        name="coco_ai_rag_documents", uri="x-coco-ai://datasets/rag-documents"
    )
    assert dag.max_active_runs == 16  # [coco_ai] max_active_runs, as the fine-tune's
    promotion = dag.task_dict["attested_promotion"]
    assert [o.name for o in promotion.outlets] == ["coco_ai_promoted_index"]


def test_the_promotion_thresholds_are_the_kinds(dag):
    promotion = dag.task_dict["attested_promotion"]
    names = {t.name for t in RAG_INDEX.promotion.thresholds}
    assert set(promotion.thresholds) <= names
    # the form's empty values keep the owner's; a number narrows
    assert narrowing("1", {n: None for n in promotion.thresholds}, "rag_index") == {"min_gpus": 1}


def test_every_form_field_is_titled_and_sectioned_and_defaults_validate(dag):
    schemas = {name: dag.params.get_param(name).schema for name in dag.params}
    assert set(schemas) == {
        "documents_uri",
        "documents_key_uri",
        "embedder",
        "max_words",
        "overlap_words",
        "incremental",
        "engine",
        "ef_search",
        "eval_k",
        "tee",
        "gpu_count",
        "min_hit_rate_at_k",
        "min_ann_recall_at_10",
    }
    for name, schema in schemas.items():
        assert schema.get("title") and schema.get("section"), name
    copy.deepcopy(dag.params).validate()
    for task in dag.tasks:
        assert task.doc_md and len(task.doc_md) > 80, task.task_id


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tee", "sgx"),
        ("gpu_count", 9),
        ("max_words", 4),
        ("engine", "lancedb"),
        ("documents_key_uri", "kbs:///a/../b"),
        ("min_ann_recall_at_10", 1.5),
        ("eval_k", "five"),
    ],
)
def test_form_rejects_bad_values(dag, name, value):
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=name):
        params[name] = value  # validated on assignment, as the trigger form and REST API do


def test_the_workload_settings_are_recipe_tables_and_carry_no_secret(dag):
    workload = dag.task_dict["confidential_rag_index"]
    # the recipe tables the owner approves, and the earlier index to build on (references only)
    assert set(workload.settings) <= {*RAG_INDEX.promotion.recipe_tables, "previous_index"}
    assert workload.env_vars in (None, [], {}) and not workload.secrets
    assert dag.render_template_as_native_obj


def test_the_served_index_is_offered_to_the_workload_for_incremental_reuse(dag):
    served = dag.task_dict["served_index"]
    assert isinstance(served, ServedVersionOperator) and served.workload == RAG_INDEX.name
    assert served.enabled == "{{ params.incremental }}"
    assert served.downstream_task_ids == {"confidential_rag_index"}
    workload = dag.task_dict["confidential_rag_index"]
    previous = workload.settings["previous_index"]
    assert previous.operator is served  # its XCom, resolved when the workload renders
    assert dag.params["incremental"] is True
