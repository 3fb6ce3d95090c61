"""Confidential federated fine-tuning: attest, plan every party, train together in TEEs, verify
who contributed, promote the global adapter, revoke.

Several data owners improve one model without pooling data. The aggregator (NVFlare server) and
each participant (NVFlare client) run in their own TEE (``fl_aggregator`` / ``fl_participant``
workloads of coco_ai.workloads.federated). Each party's initdata names this run and its place in
the data owner's federation; Trustee releases a party its mTLS credentials (provisioned by the
data owner with ``coco-ai federation provision``, never by Airflow) and a participant its own
data owner's data-set key only to that identity; peers verify each other's attestation at
registration and every ``verify_frequency_s``. The aggregator signs the global adapter with a
contribution record (per round: who contributed which update, from which data set, attested by
which token), and promotion verifies every listed participant's token too.

The participant list comes from the trigger form; it can only narrow the federation the data
owner provisioned (a party without credentials in Trustee cannot join).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, conf, task

from coco_ai_airflow.keys import KeyReleaseOperator
from coco_ai_airflow.pipeline import (
    attestation_gate,
    encrypted_upload,
    revoke_keys,
    tee_params,
)
from coco_ai_airflow.promotion import AttestedModelPromotionOperator
from coco_ai_airflow.workload import ConfidentialWorkloadOperator


def _setting(option: str) -> str:
    return conf.get("coco_ai", option)


#: Each promotion emits an event here carrying references only (registry version, digests).
PROMOTED_FEDERATED = Asset(name="coco_ai_promoted_federated", uri="x-coco-ai://models/federated")

FEDERATION, PARTIES, TRAIN, PROMOTE = ("Federation", "Participants", "Training", "Promotion gate")

PARAMS = {
    "federation": Param(
        "",
        type="string",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        title="Federation",
        description="The data owner's federation id (coco-ai federation provision --federation): "
        "its parties' credentials are in Trustee under kbs:///coco-ai-fl/<federation>/.",
        section=FEDERATION,
    ),
    "aggregator_id": Param(
        "aggregator",
        type="string",
        pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$",
        title="Aggregator id",
        description="The aggregator's participant id in the federation.",
        section=FEDERATION,
    ),
    "server_host": Param(
        "localhost",
        type="string",
        title="Aggregator address",
        description="Host name participants dial (a name in the aggregator's certificate: "
        "coco-ai federation provision --aggregator-host).",
        section=FEDERATION,
    ),
    "server_port": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=65535,
        title="Aggregator port",
        description="Empty: a free loopback port (local execution mode).",
        section=FEDERATION,
    ),
    "participants": Param(
        [],
        type="array",
        minItems=1,
        items={
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"},
                "dataset_uri": {"type": "string", "minLength": 1},
                "dataset_key_uri": {"type": "string", "pattern": r"^kbs:///[^/]+/[^/]+/[^/]+$"},
            },
            "required": ["id", "dataset_uri", "dataset_key_uri"],
            "additionalProperties": False,
        },
        title="Participants",
        description="Each participant's id, its encrypted data set and its data owner's key "
        "(only that participant's TEE obtains it).",
        section=PARTIES,
    ),
    "min_participants": Param(
        2,
        type="integer",
        minimum=1,
        maximum=1000,
        title="Quorum",
        description="Fewer attested participants, or fewer accepted updates in any round, fail "
        "the run closed. Promotion also holds it to the data owner's floor.",
        section=PARTIES,
    ),
    "base_model": Param(
        _setting("base_model"),
        type="string",
        title="Base model",
        description="Hugging Face model directory every party loads; pinned by digest.",
        section=TRAIN,
    ),
    "rounds": Param(3, type="integer", minimum=1, maximum=1000, title="Rounds", section=TRAIN),
    "local_steps": Param(
        4, type="integer", minimum=1, maximum=10000, title="Local steps per round", section=TRAIN
    ),
    "learning_rate": Param(
        2e-3, type="number", exclusiveMinimum=0, maximum=1, title="Learning rate", section=TRAIN
    ),
    "allow_development_evidence": Param(
        False,
        type="boolean",
        title="Development evidence among peers",
        description="Let peers accept Trustee's sample evidence (the local emulator). Part of the "
        "approved recipe: a production owner policy never approves a run that sets it.",
        section=TRAIN,
    ),
    **tee_params(_setting("default_tee"), "federation parties"),
    "max_eval_loss": Param(
        None,
        type=["null", "number"],
        minimum=0,
        title="Maximum eval loss",
        description="Promote only if the participants' held-out loss after the last round is at "
        "most this. Empty: the data owner's threshold. May only tighten it.",
        section=PROMOTE,
    ),
}


def _participant_ids(params: dict[str, Any]) -> list[str]:
    ids = [p["id"] for p in params["participants"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"participants: duplicate ids in {ids}")
    if params["aggregator_id"] in ids:
        raise ValueError("participants: the aggregator is not a participant")
    if params["min_participants"] > len(ids):
        raise ValueError(
            f"min_participants {params['min_participants']} is more than the {len(ids)} "
            "participants named"
        )
    return ids


@task
def federation_settings(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings every party shares: the aggregator's address, the participant list, the
    attestation trust anchor and signer (the owner policy's, verified with the owner's key),
    the quorum and the recipe."""
    from coco_ai.net import free_loopback_port
    from coco_ai_airflow._settings import owner_policy

    params = params or {}
    policy = owner_policy().policy
    return {
        "party": {
            "aggregator_id": params["aggregator_id"],
            "participants": _participant_ids(params),
            "server_host": params["server_host"],
            "server_port": params["server_port"] or free_loopback_port(),
        },
        "trust": {"anchor_pem": policy.trust_anchor_pem, "signer_pem": policy.token_signer_pem},
        "min_participants": params["min_participants"],
        "training": {
            "local_steps": params["local_steps"],
            "learning_rate": params["learning_rate"],
        },
        "federation": {
            "rounds": params["rounds"],
            "min_gpus": params["gpu_count"],
            "allow_development_evidence": params["allow_development_evidence"],
        },
    }


@task
def participant_parties(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each participant's key-release arguments: its inputs and its place in the federation."""
    params = params or {}
    _participant_ids(params)
    return [
        {
            "inputs": {
                "dataset": {"uri": p["dataset_uri"], "key_uri": p["dataset_key_uri"]},
                "base_model": {"uri": params["base_model"]},
            },
            "party": {
                "federation": params["federation"],
                "role": "participant",
                "participant_id": p["id"],
            },
        }
        for p in params["participants"]
    ]


with DAG(
    dag_id="confidential_federated_finetune",
    description="Federated LoRA fine-tune across attested TEEs (NVFlare), credentials from "
    "Trustee, promotion on proof of who contributed",
    doc_md=__doc__,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    max_active_runs=1,  # one federation run at a time (the aggregator's port, the peers' load)
    default_args={"retry_delay": timedelta(seconds=15)},
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["confidential-computing", "coco", "federated"],
) as dag:
    gate = attestation_gate()
    settings = federation_settings()
    parties = participant_parties()
    key_release = KeyReleaseOperator(
        task_id="key_release",
        retries=2,
        workload="fl_aggregator",
        inputs={"base_model": {"uri": "{{ params.base_model }}"}},
        party={
            "federation": "{{ params.federation }}",
            "role": "aggregator",
            "participant_id": "{{ params.aggregator_id }}",
        },
        doc_md="""Pins the base model, builds the aggregator's initdata (this run, its place in
the federation, the run-key root and grant) and grants the run to it: only the aggregator's TEE
derives the run's key, which encrypts the global adapter.""",
    )
    participant_release = KeyReleaseOperator.partial(
        task_id="participant_release",
        workload="fl_participant",
        grant=False,
        doc_md="""One per participant: pins its encrypted data set and the base model and builds
its initdata (this run, its identity, its data owner's key). No grant: Trustee releases the
participant its own data-set key and credentials on its attestation alone.""",
    ).expand_kwargs(parties)
    aggregator = ConfidentialWorkloadOperator(
        task_id="aggregator",
        run_refs=key_release.output,
        tee="{{ params.tee }}",
        gpu_count="{{ params.gpu_count }}",
        settings=settings,
        doc_md="""The aggregator in its TEE: NVFlare server, quorum, FedAvg over the LoRA
adapter with every update checked, then the global adapter encrypted under the run's key and
signed with the contribution record. Progress per round in this log.""",
    )
    participants = ConfidentialWorkloadOperator.partial(
        task_id="participant",
        tee="{{ params.tee }}",
        gpu_count="{{ params.gpu_count }}",
        settings=settings,
        doc_md="""A participant in its TEE: its own data set decrypted in memory, NVFlare client
training the global adapter on it each round; only adapter updates leave, over mutual TLS to
the attested aggregator.""",
    ).expand(run_refs=participant_release.output)
    upload = encrypted_upload(aggregator, key_release, "global adapter")
    attested_promotion = AttestedModelPromotionOperator(
        task_id="attested_promotion",
        checkpoint=upload.output,
        run_refs=key_release.output,
        min_gpus="{{ params.gpu_count }}",
        thresholds={
            "max_eval_loss": "{{ params.max_eval_loss }}",
            "min_participants": "{{ params.min_participants }}",
        },
        outlets=[PROMOTED_FEDERATED],
        doc_md="""Verifies the aggregator's chain as for any model, and the contribution record:
every listed participant's EAR token genuine and affirming, naming this run, this federation and
that participant, its data set approved by the data owner, and the record the one the aggregator
signed. Then signs and registers the global adapter.""",
    )
    revoke = revoke_keys()
    revoke.is_teardown = True

    gate >> [settings, parties]
    [settings, key_release] >> aggregator
    [settings, participant_release] >> participants
    gate >> key_release
    aggregator >> upload >> attested_promotion >> revoke
    [gate, key_release, participant_release, aggregator, participants, upload] >> revoke
