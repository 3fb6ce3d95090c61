"""The `confidential_finetune` DAG as the dag-processor sees it: imports, shape, rules, form."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset, AssetOrTimeSchedule, TriggerRule
from airflow.sdk.exceptions import ParamValidationError

DAGS = Path(__file__).resolve().parents[2] / "dags"
PIPELINE = [
    "attestation_gate",
    "key_release",
    "confidential_finetune",
    "encrypted_checkpoint_upload",
    "attested_promotion",
]


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags["confidential_finetune"]


def test_tasks_form_the_pipeline_in_order(dag):
    assert set(dag.task_dict) == {*PIPELINE, "revoke_keys"}
    for upstream, downstream in itertools.pairwise(PIPELINE):
        assert downstream in dag.task_dict[upstream].downstream_task_ids
    # every pipeline task feeds revocation, which feeds nothing
    for task_id in PIPELINE:
        assert "revoke_keys" in dag.task_dict[task_id].downstream_task_ids
    assert dag.task_dict["revoke_keys"].downstream_task_ids == set()


def test_revocation_always_runs_and_never_hides_a_failure(dag):
    revoke = dag.task_dict["revoke_keys"]
    assert revoke.trigger_rule == TriggerRule.ALL_DONE
    # a teardown leaf is ignored for the run state, so a failed promotion fails the run
    assert revoke.is_teardown
    for task_id in PIPELINE:
        assert dag.task_dict[task_id].trigger_rule == TriggerRule.ALL_SUCCESS


def test_retries_only_where_a_second_try_is_safe(dag):
    retries = {t.task_id: t.retries for t in dag.tasks}
    assert retries == {
        "attestation_gate": 2,  # read-only
        "key_release": 2,  # the grant is written to a path fixed by the run id: idempotent
        "confidential_finetune": 0,
        "encrypted_checkpoint_upload": 2,  # content-addressed, manifest last
        "attested_promotion": 0,
        "revoke_keys": 2,  # tombstone + delete: a retry repeats both harmlessly
    }


def test_every_task_is_documented_in_the_ui(dag):
    for task in dag.tasks:
        assert task.doc_md and len(task.doc_md) > 80, task.task_id
    assert dag.doc_md


def test_schedule_combines_dataset_asset_and_cron(dag):
    # [coco_ai] retrain_cron defaults to a weekly cron: asset events OR the clock start runs
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 3 * * 1"
    assert dag.timetable.asset_condition == Asset(
        name="coco_ai_training_data", uri="x-coco-ai://datasets/training"
    )
    # several runs at once: each has its own keys; promotions take the registry lock
    assert dag.max_active_runs == 16
    promotion = dag.task_dict["attested_promotion"]
    assert [o.name for o in promotion.outlets if isinstance(o, Asset)] == ["coco_ai_promoted_model"]


def test_trigger_form_has_titles_sections_and_a_tee_choice(dag):
    schemas = {name: dag.params.get_param(name).schema for name in dag.params}
    expected = {
        "base_model",
        "dataset_uri",
        "dataset_key_uri",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "epochs",
        "max_steps",
        "tee",
        "gpu_count",
        "max_eval_loss",
        "min_relative_improvement",
    }
    assert set(schemas) == expected
    for name, schema in schemas.items():
        assert schema.get("title"), name
        assert schema.get("section"), name
    assert schemas["tee"]["enum"] == ["tdx", "snp", "sample"]
    assert set(schemas["tee"]["values_display"]) == {"tdx", "snp", "sample"}
    assert schemas["gpu_count"]["type"] == "integer"
    assert schemas["lora_r"]["minimum"] == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tee", "sgx"),
        ("gpu_count", 9),
        ("lora_r", 0),
        ("lora_dropout", 0.95),
        ("dataset_key_uri", "kbs:///a/../b"),
        ("epochs", "three"),
    ],
)
def test_form_rejects_bad_values(dag, name, value):
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=name):
        params[name] = value  # validated on assignment, as the trigger form and REST API do


def test_defaults_validate(dag):
    copy.deepcopy(dag.params).validate()


def test_templates_carry_references_only(dag):
    """What the pipeline hands from task to task is rendered from params and XCom references."""
    finetune = dag.task_dict["confidential_finetune"]
    assert finetune.tee == "{{ params.tee }}"
    assert finetune.env_vars in (None, [], {})
    assert not finetune.secrets
    assert dag.render_template_as_native_obj
