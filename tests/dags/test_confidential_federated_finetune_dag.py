"""The `confidential_federated_finetune` DAG as the dag-processor sees it: the same generic
operators as the fine-tune (gate, key release, confidential workload, upload, promotion, revoke),
the participants fanned out by dynamic task mapping, and its trigger form."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule
from airflow.sdk.exceptions import ParamValidationError

from coco_ai.workloads.kinds import FL_AGGREGATOR, FL_PARTICIPANT
from coco_ai_airflow.keys import KeyReleaseOperator, KeyRevokeOperator
from coco_ai_airflow.promotion import AttestedModelPromotionOperator, narrowing
from coco_ai_airflow.workload import ConfidentialWorkloadOperator

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "confidential_federated_finetune"
PARTICIPANTS = [
    {
        "id": f"dept-{c}",
        "dataset_uri": f"file:///data/{c}.enc",
        "dataset_key_uri": f"kbs:///o/k/{c}",
    }
    for c in "abc"
]


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def params(dag, **over) -> dict:
    """The run's params as the trigger form would give them: the form's defaults, a federation
    and three participants."""
    form = copy.deepcopy(dag.params)
    form["federation"] = "northwind"
    form["participants"] = PARTICIPANTS
    for name, value in over.items():
        form[name] = value  # valid for the form: the task's own checks are under test
    return {name: form.get_param(name).value for name in form}


def test_the_pipeline_runs_every_party_on_the_generic_operators(dag) -> None:
    tasks = dag.task_dict
    assert isinstance(tasks["key_release"], KeyReleaseOperator)
    assert tasks["key_release"].workload == FL_AGGREGATOR.name and tasks["key_release"].grant
    assert tasks["key_release"].party["role"] == "aggregator"
    # one planned key release and one TEE per participant, by dynamic task mapping
    release, participant = tasks["participant_release"], tasks["participant"]
    assert release.operator_class is KeyReleaseOperator
    assert release.partial_kwargs["workload"] == FL_PARTICIPANT.name
    assert release.partial_kwargs["grant"] is False  # the run's key is the aggregator's alone
    assert participant.operator_class is ConfidentialWorkloadOperator
    assert isinstance(tasks["aggregator"], ConfidentialWorkloadOperator)
    assert isinstance(tasks["attested_promotion"], AttestedModelPromotionOperator)
    # the aggregator and the participants run side by side, after their own key release
    assert tasks["key_release"].downstream_task_ids >= {"aggregator"}
    assert release.downstream_task_ids >= {"participant"}
    assert "participant" not in tasks["aggregator"].upstream_task_ids
    assert tasks["aggregator"].downstream_task_ids == {
        "encrypted_checkpoint_upload",
        "revoke_keys",
    }
    assert tasks["encrypted_checkpoint_upload"].downstream_task_ids >= {"attested_promotion"}


def test_revocation_always_runs_after_every_party(dag) -> None:
    revoke = dag.task_dict["revoke_keys"]
    assert isinstance(revoke, KeyRevokeOperator)
    assert revoke.trigger_rule == TriggerRule.ALL_DONE and revoke.is_teardown
    assert revoke.upstream_task_ids >= {
        "attestation_gate",
        "key_release",
        "participant_release",
        "aggregator",
        "participant",
        "encrypted_checkpoint_upload",
        "attested_promotion",
    }
    assert dag.task_dict["aggregator"].retries == 0
    assert dag.task_dict["attested_promotion"].retries == 0


def test_participant_plans_name_each_party_and_its_own_data(dag) -> None:
    plans = dag.task_dict["participant_parties"].python_callable(params(dag))
    assert [p["party"]["participant_id"] for p in plans] == ["dept-a", "dept-b", "dept-c"]
    for plan, given in zip(plans, PARTICIPANTS, strict=True):
        assert plan["party"] == {
            "federation": "northwind",
            "role": "participant",
            "participant_id": given["id"],
        }
        assert plan["inputs"]["dataset"] == {
            "uri": given["dataset_uri"],
            "key_uri": given["dataset_key_uri"],
        }
        assert set(plan["inputs"]) == {spec.name for spec in FL_PARTICIPANT.inputs}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"participants": [*PARTICIPANTS, PARTICIPANTS[0]]}, "duplicate ids"),
        ({"aggregator_id": "dept-a"}, "the aggregator is not a participant"),
        ({"min_participants": 4}, "more than the 3 participants"),
    ],
)
def test_bad_participant_lists_fail_before_anything_starts(dag, over, match) -> None:
    with pytest.raises(ValueError, match=match):
        dag.task_dict["participant_parties"].python_callable(params(dag, **over))


def test_the_quorum_and_loss_are_promotion_thresholds(dag) -> None:
    promotion = dag.task_dict["attested_promotion"]
    names = {t.name for t in FL_AGGREGATOR.promotion.thresholds}
    assert set(promotion.thresholds) == names == {"max_eval_loss", "min_participants"}
    assert narrowing("1", {"max_eval_loss": None, "min_participants": "3"}, FL_AGGREGATOR.name) == {
        "min_participants": 3.0,
        "min_gpus": 1,
    }


def test_every_form_field_is_titled_and_sectioned(dag) -> None:
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        assert schema.get("title") and schema.get("section"), name
    for task in dag.tasks:
        assert task.doc_md and len(task.doc_md) > 60, task.task_id
    assert dag.max_active_runs == 1 and dag.render_template_as_native_obj


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("federation", "../etc"),
        ("aggregator_id", "Server"),
        ("participants", [{"id": "Dept A", "dataset_uri": "x", "dataset_key_uri": "kbs:///a/b/c"}]),
        ("participants", [{"id": "a", "dataset_uri": "x", "dataset_key_uri": "http://k"}]),
        ("participants", [{"id": "a", "dataset_uri": "x"}]),
        (
            "participants",
            [{"id": "a", "dataset_uri": "x", "dataset_key_uri": "kbs:///a/b/c", "key": 1}],
        ),
        ("participants", []),
        ("min_participants", 0),
        ("server_port", 70000),
        ("rounds", 0),
        ("tee", "sgx"),
    ],
)
def test_form_rejects_bad_values(dag, name, value) -> None:
    form = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=name):
        form[name] = value
