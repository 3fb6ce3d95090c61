"""The federated workload's config: one shape for both roles, the party taken from the run's own
claims, and the recipe the data owner approves by digest."""

from __future__ import annotations

import copy

import pytest

from coco_ai.digest import Digest
from coco_ai.federated.identity import FederationIdentity
from coco_ai.kbs.resource_path import ResourcePath
from coco_ai.run_keys import DEFAULT_ROOT
from coco_ai.runs import RunInput, RunRefs, RunRefsError
from coco_ai.workloads.federated.config import (
    RECIPE_TABLES,
    ConfigError,
    FederatedConfig,
    config_for_run,
    recipe_for,
)
from coco_ai.workloads.finetune.config import recipe_digest

IMAGE = "registry.example/coco-ai/workload@sha256:" + "a" * 64
ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BASE = {"path": "/models/tiny", "digest": "sha256:" + "b" * 64}
SHARED = {
    "party": {"aggregator_id": "aggregator", "participants": ["dept-a", "dept-b"]},
    "trust": {"anchor_pem": ANCHOR},
    "min_participants": 2,
    "training": {"local_steps": 2, "learning_rate": None},
    "federation": {"rounds": 2, "allow_development_evidence": True},
}


def participant_config(**over) -> dict:
    cfg = {
        "run_id": "run-1",
        "staging_uri": "file:///staging/run-1",
        "checkpoint_key_uri": "kbs:///coco-ai-run/checkpoint-key/run-1",
        "run_key_root_uri": DEFAULT_ROOT.uri(),
        "party": {
            "federation": "northwind",
            "role": "participant",
            "participant_id": "dept-a",
            "aggregator_id": "aggregator",
            "participants": ["dept-a", "dept-b"],
        },
        "trust": {"anchor_pem": ANCHOR},
        "base_model": BASE,
        "dataset": {"uri": "file:///data/a.enc", "key_uri": "kbs:///owner-a/dataset/a"},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        elif value is None:
            cfg.pop(section)
        else:
            cfg[section] = value
    return cfg


def test_a_participant_config_round_trips_with_defaults() -> None:
    config = FederatedConfig.from_dict(participant_config())
    assert config.party.server_port == 8002 and config.federation.rounds == 3
    assert config.lora.dropout == 0.0  # FedAvg over adapters: no dropout noise in the average
    assert FederatedConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"dataset": None}, "dataset: a participant needs its data set"),
        ({"party__participant_id": "dept-z"}, "not among party.participants"),
        ({"party__participants": ["dept-a", "aggregator"]}, "the aggregator is not a participant"),
        ({"party__participants": ["dept-a", "dept-a"]}, "duplicate participant ids"),
        ({"party__participants": ["Dept A"]}, "is not a participant id"),
        ({"party__role": "observer"}, "party.role"),
        ({"party__federation": "../x"}, "party.federation"),
        ({"party__server_port": 0}, "party.server_port"),
        ({"party__server_host": "evil host"}, "party.server_host"),
        ({"min_participants": 3}, "more than the 2 participants"),
        ({"trust": {"anchor_pem": "not a cert"}}, "trust.anchor_pem"),
        ({"federation": {"allow_development_evidence": "yes"}}, "allow_development_evidence"),
        ({"federation": {"rounds": 0}}, "federation.rounds"),
        ({"training": {"local_steps": 0}}, "training.local_steps"),
        ({"shell": "rm -rf /"}, "shell: unknown field"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(over, match) -> None:
    with pytest.raises(ConfigError, match=match):
        FederatedConfig.from_dict(participant_config(**over))


def test_the_aggregator_takes_no_data_set_and_is_its_own_party() -> None:
    aggregator = {
        "role": "aggregator",
        "participant_id": "aggregator",
    }
    cfg = participant_config(dataset=None)
    cfg["party"].update(aggregator)
    assert FederatedConfig.from_dict(cfg).dataset is None
    with pytest.raises(ConfigError, match="the aggregator takes no data set"):
        FederatedConfig.from_dict(
            {**copy.deepcopy(cfg), "dataset": participant_config()["dataset"]}
        )
    cfg["party"]["participant_id"] = "other"
    with pytest.raises(ConfigError, match=r"the aggregator's is party\.aggregator_id"):
        FederatedConfig.from_dict(cfg)


def refs_for(role: str, participant_id: str, **party) -> RunRefs:
    inputs = {"base_model": RunInput(BASE["path"], Digest.parse(BASE["digest"]))}
    workload = "fl_aggregator"
    if role == "participant":
        workload = "fl_participant"
        inputs["dataset"] = RunInput(
            "file:///data/a.enc",
            Digest.parse("sha256:" + "c" * 64),
            ResourcePath("owner-a", "dataset", "a"),
        )
    claims = FederationIdentity(party.get("federation", "northwind"), role, participant_id).claims()
    return RunRefs.plan(
        workload=workload,
        module="coco_ai.workloads.federated",
        run_id="run-1",
        image=IMAGE,
        run_key_root=DEFAULT_ROOT,
        inputs=inputs,
        staging_root="file:///staging",
        kbs_url="https://kbs.example:8080",
        kbs_ca_pem=None,
        party_claims=claims,
    )


def test_the_party_comes_from_the_runs_own_claims() -> None:
    refs = refs_for("participant", "dept-a")
    assert refs.expected_claims()["io.coco-ai.fl-participant"] == "dept-a"
    assert refs.initdata().claim("io.coco-ai.fl-role") == "participant"
    assert RunRefs.from_xcom(refs.to_xcom()) == refs  # the claims travel in the XCom form
    config = FederatedConfig.from_dict(config_for_run(refs, SHARED))
    assert (config.party.federation, config.party.role, config.party.participant_id) == (
        "northwind",
        "participant",
        "dept-a",
    )
    assert config.dataset.key_uri == "kbs:///owner-a/dataset/a"
    # settings cannot name another party: the claims decide
    forged = copy.deepcopy(SHARED)
    forged["party"]["participant_id"] = "dept-b"
    assert FederatedConfig.from_dict(config_for_run(refs, forged)).party.participant_id == "dept-a"
    aggregator = FederatedConfig.from_dict(
        config_for_run(refs_for("aggregator", "aggregator"), SHARED)
    )
    assert aggregator.party.role == "aggregator" and aggregator.dataset is None


def test_party_claims_cannot_replace_the_runs_claims() -> None:
    with pytest.raises(RunRefsError, match="would replace the run's own"):
        RunRefs.plan(
            workload="fl_aggregator",
            module="coco_ai.workloads.federated",
            run_id="run-1",
            image=IMAGE,
            run_key_root=DEFAULT_ROOT,
            inputs={"base_model": RunInput(BASE["path"], Digest.parse(BASE["digest"]))},
            staging_root="file:///staging",
            kbs_url="https://kbs.example:8080",
            kbs_ca_pem=None,
            party_claims={"io.coco-ai.run-id": "another-run"},
        )
    data = refs_for("participant", "dept-a").to_xcom()
    data["party_claims"]["io.coco-ai.run-grant"] = "kbs:///x/y/z"
    with pytest.raises(RunRefsError, match="would replace the run's own"):
        RunRefs.from_xcom(data)
    # an XCom naming another party than the initdata it carries
    data = refs_for("participant", "dept-a").to_xcom()
    data["party_claims"]["io.coco-ai.fl-participant"] = "dept-b"
    with pytest.raises(RunRefsError, match="is not the initdata's"):
        RunRefs.from_xcom(data)


def test_the_approved_recipe_is_the_one_a_run_trains_with() -> None:
    refs = refs_for("aggregator", "aggregator")
    config = config_for_run(refs, SHARED)
    settings = {name: SHARED[name] for name in ("training", "federation")}
    assert recipe_digest(config, RECIPE_TABLES) == recipe_digest(
        recipe_for(settings), RECIPE_TABLES
    )
    other = recipe_for(
        {**settings, "federation": {"rounds": 3, "allow_development_evidence": True}}
    )
    assert recipe_digest(other, RECIPE_TABLES) != recipe_digest(config, RECIPE_TABLES)
