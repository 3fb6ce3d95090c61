"""Promotion's check of a federated run's contribution record, with real EAR tokens from the
Trustee stand-in for emulated parties (coco_ai.promotion.contributions)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from coco_ai.guest.initdata import RUN_ID_KEY, WORKLOAD_KEY
from coco_ai.promotion.contributions import RECORD_FORMAT, contribution_problems, record_digest
from tests.code_binding import APPROVED_IMAGE
from tests.federated.conftest import FEDERATION, RUN_ID

PARTICIPANTS = ("dept-a", "dept-b")
DATASETS = {p: "sha256:" + hashlib.sha256(p.encode()).hexdigest() for p in PARTICIPANTS}
IMAGE_DIGEST = APPROVED_IMAGE.partition("@")[2]


def token_of(party_factory, participant_id, *, role="participant", run_id=RUN_ID, **extra):
    from coco_ai.federated.identity import FederationIdentity

    claims = FederationIdentity(extra.pop("federation", FEDERATION), role, participant_id).claims()
    claims[RUN_ID_KEY] = run_id
    claims[WORKLOAD_KEY] = extra.pop("workload", "fl_" + role)
    party = party_factory(participant_id, role=role, run_id=run_id, claims=claims, **extra)
    return party.client.get_token()[0]


@pytest.fixture(scope="module")
def good(party_factory) -> dict:
    """A record of two rounds with both participants, and the aggregator's claims."""
    from coco_ai.kbs.ear import unverified_claims

    peers = {}
    for site in PARTICIPANTS:
        token = token_of(party_factory, site)
        peers[site] = {
            "ear_token": token,
            "ear_token_digest": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
            "verified_at": unverified_claims(token).issued_at + 1,
        }
    record = {
        "format": RECORD_FORMAT,
        "federation": FEDERATION,
        "aggregator": "server",
        "registered": list(PARTICIPANTS),
        "rounds": [
            {
                "round": n,
                "accepted": [
                    {"site": s, "update_digest": f"sha256:{n}{s}", "dataset_digest": DATASETS[s]}
                    for s in PARTICIPANTS
                ],
                "refused": [],
            }
            for n in range(2)
        ],
        "participants": peers,
    }
    aggregator = unverified_claims(token_of(party_factory, "server", role="aggregator"))
    return {"record": record, "aggregator": aggregator.init_data_claims()}


def check(trustee, good, record=None, **over):
    record = good["record"] if record is None else record
    args = {
        "dataset_digest": record_digest(record),
        "run_id": RUN_ID,
        "aggregator_claims": good["aggregator"],
        "trust_anchor_pem": Path(trustee.token_anchor_path).read_bytes(),
        "token_signer_pem": Path(trustee.token_signer_path).read_bytes(),
        "approved_images": frozenset({IMAGE_DIGEST}),
        "approved_datasets": frozenset(DATASETS.values()),
        "appraisal_policy_ids": frozenset({"default"}),
        "allow_development_evidence": True,
        "min_gpus": 1,
        "min_participants": 2,
        **over,
    }
    return contribution_problems({"federation": {"rounds": 2}, "contributions": record}, **args)


def test_a_genuine_record_verifies(trustee, good) -> None:
    assert check(trustee, good) == []


def test_refusals(trustee, good, party_factory) -> None:
    def problems(mutate=None, **over) -> str:
        record = copy.deepcopy(good["record"])
        if mutate:
            mutate(record)
        found = check(trustee, good, record, **over)
        assert found, "expected a refusal"
        return "; ".join(found)

    # the record the aggregator signed, and only that one
    record = copy.deepcopy(good["record"])
    record["rounds"][0]["accepted"].pop()
    assert "not the one the aggregator signed" in "; ".join(
        check(trustee, good, record, dataset_digest=record_digest(good["record"]))
    )
    # a round below the quorum
    assert "fewer than the quorum 2" in problems(lambda r: r["rounds"][1]["accepted"].pop())
    # an update from a site that is not listed with an attestation
    assert "unlisted 'dept-z'" in problems(
        lambda r: r["rounds"][0]["accepted"].append(
            {"site": "dept-z", "dataset_digest": DATASETS["dept-a"]}
        )
    )
    # a data set the owner did not approve for participants
    assert "not approved for participants" in problems(
        approved_datasets=frozenset({DATASETS["dept-a"]})
    )
    # sample evidence under a production owner policy; too few GPUs; another image
    assert "development (sample) evidence" in problems(allow_development_evidence=False)
    assert "the owner requires 2" in problems(min_gpus=2)
    assert "is not approved" in problems(approved_images=frozenset({"sha256:" + "0" * 64}))
    # tokens judged under another anchor
    assert "does not verify" in problems(trust_anchor_pem=b"not a certificate")
    # one participant's token listed for another; a token of another run or federation
    for token, expected in (
        (token_of(party_factory, "dept-a"), "not participant dept-b"),
        (token_of(party_factory, "dept-b", run_id="another-run"), "not this run's"),
        (token_of(party_factory, "dept-b", federation="other-fed"), "not participant dept-b"),
        (token_of(party_factory, "dept-b", workload="finetune"), "workload is 'finetune'"),
    ):

        def swap(r, token=token):
            from coco_ai.kbs.ear import unverified_claims

            r["participants"]["dept-b"]["ear_token"] = token
            r["participants"]["dept-b"]["ear_token_digest"] = (
                "sha256:" + hashlib.sha256(token.encode()).hexdigest()
            )
            # verified while fresh, as an aggregator would have: else, on a slow machine, the
            # refusal is only that the token is newer than its verification
            r["participants"]["dept-b"]["verified_at"] = unverified_claims(token).issued_at + 1

        assert expected in problems(swap)
    # a digest that is not the token's
    assert "not the token's" in problems(
        lambda r: r["participants"]["dept-a"].update(ear_token_digest="sha256:" + "1" * 64)
    )
    # a record of another federation than the aggregator's
    assert "another federation" in problems(lambda r: r.update(federation="other-fed"))
    # no record at all
    found = check(trustee, good, None)
    assert found == []  # (the good one, for contrast)
    assert "no coco-ai/fl-contributions/v1 record" in problems(lambda r: r.update(format="v0"))
