"""`confidential_federated_finetune` on a real embedded stack: a REST-triggered federation of an
aggregator and three participants, each a local TEE process beside its own guest-components
emulator, to a promoted global adapter whose contribution record `coco-ai verify` re-checks; and
no data-set key, run key, credential key or training record anywhere Airflow keeps anything.

On the session stack, whose scheduler has the slots for the four parties at once."""

from __future__ import annotations

import json

import pytest
from conftest import find_secrets, follow_run, log_files, metadata_db_findings

from coco_ai.devstack.stack import (
    FEDERATED_DAG_ID,
    FEDERATION,
    FEDERATION_AGGREGATOR,
    FEDERATION_PARTICIPANTS,
)
from coco_ai.federated.identity import AGGREGATOR, FederationIdentity
from coco_ai.runs import RunRefs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]
ROUNDS = 2


@pytest.fixture(scope="module")
def fl_run(e2e_stack):
    from coco_ai.devstack.federated_demo import federated_conf

    info = e2e_stack.info
    conf = federated_conf(info, rounds=ROUNDS, local_steps=2)
    client = info.client()
    try:
        run = client.trigger(FEDERATED_DAG_ID, conf, note="e2e: federated REST")
    finally:
        client.close()
    return follow_run(e2e_stack, run["dag_run_id"], dag_id=FEDERATED_DAG_ID, timeout_s=900)


def test_a_federation_promotes_a_global_adapter_with_its_contributors(e2e_stack, fl_run) -> None:
    states = {t: ti["state"] for t, ti in fl_run.tasks.items()}
    assert fl_run.state == "success", states
    assert set(states.values()) == {"success"}, states
    info = e2e_stack.info
    client = info.client()
    try:
        promoted = client.xcom(FEDERATED_DAG_ID, fl_run.run_id, "attested_promotion")
    finally:
        client.close()
    assert promoted["workload"] == "fl_aggregator"
    assert promoted["model_name"] == info.registered_federated_name
    assert promoted["metrics"]["participants"] == 3
    assert promoted["metrics"]["min_round_participants"] == 3
    assert promoted["metrics"]["rounds"] == ROUNDS
    # the aggregator's run: its initdata names its place in the federation; the grant is gone
    refs = RunRefs.from_xcom(fl_run.refs)
    assert refs.workload == "fl_aggregator"
    assert FederationIdentity.from_claims(refs.party_claims) == FederationIdentity(
        FEDERATION, AGGREGATOR, FEDERATION_AGGREGATOR
    )
    assert e2e_stack.resource(refs.grant.url_path()) is None
    # the record the aggregator signed lists every participant in every round
    from coco_ai.crypto.manifest import CONFIG_FILE
    from coco_ai.storage import open_store

    record = json.loads(open_store(promoted["checkpoint_uri"]).read_bytes(CONFIG_FILE))[
        "contributions"
    ]
    for entry in record["rounds"]:
        assert [a["site"] for a in entry["accepted"]] == list(FEDERATION_PARTICIPANTS)
    # a third party with the owner's public key alone re-verifies it, contributions included
    assert e2e_stack.third_party_verify(info.registered_federated_name)["verdict"] == "verified"


def test_progress_per_round_reaches_the_task_logs(e2e_stack, fl_run) -> None:
    task_logs, _ = log_files(e2e_stack)
    mine = [p for p in task_logs if f"run_id={fl_run.run_id}/" in str(p)]
    aggregator = "".join(
        p.read_text(errors="replace") for p in mine if "task_id=aggregator" in str(p)
    )
    for number in range(ROUNDS):
        assert f"Round {number} finished" in aggregator
    participants = [p for p in mine if "task_id=participant/" in str(p)]
    assert len({p.parent for p in participants}) == len(FEDERATION_PARTICIPANTS)
    for path in participants:
        text = path.read_text(errors="replace")
        assert f"round {ROUNDS - 1}: 2 steps" in text, path


def test_no_key_or_credential_reaches_airflow(e2e_stack, fl_run) -> None:
    from coco_ai.federated.credentials import CredentialBundle

    secrets: dict[str, bytes] = {"run key": fl_run.checkpoint_key}
    for participant in e2e_stack.info.federated_participants:
        key_path = participant["dataset_key_uri"].removeprefix("kbs:///")
        key = e2e_stack.resource(key_path)
        assert key is not None
        secrets[f"data-set key of {participant['id']}"] = key
    for role, party in [(AGGREGATOR, FEDERATION_AGGREGATOR)] + [
        ("participant", p) for p in FEDERATION_PARTICIPANTS
    ]:
        identity = FederationIdentity(FEDERATION, role, party)
        bundle = CredentialBundle.from_bytes(
            e2e_stack.resource(identity.credential_path().url_path()), identity
        )
        # the PEM body of the private key (its base64 lines, joined)
        body = b"".join(bundle.key_pem.splitlines()[1:-1])
        secrets[f"TLS key of {party}"] = body[:64]
    found, rows = metadata_db_findings(e2e_stack, secrets)
    assert rows > 0 and found == []
    task_logs, service_logs = log_files(e2e_stack)
    for path in task_logs + service_logs:
        assert find_secrets(path.read_bytes(), secrets) == [], path
