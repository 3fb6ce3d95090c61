"""Verify a federated run's contribution record before its global adapter is promoted.

The aggregator's TEE signs a manifest whose public ``training_config.json`` carries the record
(coco_ai.workloads.federated, docs/formats/federated.md §5) and whose ``dataset_digest`` is the
record's digest. The aggregator's own chain is verified like any model's; this module verifies
what the aggregator says about the others, with the same owner policy and nothing from Airflow:

- the record is the one the aggregator signed, of this run and the aggregator's federation;
- every listed participant's EAR token chains to the owner's trust anchor and signer, was valid
  when the aggregator's CC manager last verified it, is affirming for CPU and every GPU (at least
  the owner's GPU count), under an accepted appraisal policy, with no development evidence
  unless the owner accepts it, and its init_data claims name this run, the federation, the
  participant role and exactly that participant, the ``fl_participant`` workload and an image
  the owner approved;
- every accepted update comes from a listed participant and names a data set the owner approved
  for participants (``workloads.fl_participant`` in the owner policy); every round has at least
  the quorum.

A record that passes is, by construction, approved: promotion then accepts the manifest's
``dataset_digest`` (the record's digest) as the run's data set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from coco_ai.federated.identity import (
    AGGREGATOR,
    PARTICIPANT,
    FederationIdentity,
    FederationIdentityError,
)
from coco_ai.guest.initdata import IMAGE_DIGEST_KEY, RUN_ID_KEY, WORKLOAD_KEY
from coco_ai.kbs.wire import canonical_json

RECORD_FORMAT = "coco-ai/fl-contributions/v1"
PARTICIPANT_WORKLOAD = "fl_participant"


def record_digest(record: Mapping[str, Any]) -> str:
    """``sha256:`` over the record's canonical JSON (the manifest's ``dataset_digest``)."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(record))).hexdigest()


def contribution_problems(
    config: Mapping[str, Any],
    *,
    dataset_digest: str | None,
    run_id: str,
    aggregator_claims: Mapping[str, str],
    trust_anchor_pem: bytes,
    token_signer_pem: bytes | None,
    approved_images: frozenset[str],
    approved_datasets: frozenset[str],
    appraisal_policy_ids: frozenset[str],
    allow_development_evidence: bool,
    min_gpus: int,
    min_participants: int | None,
    leeway: int = 0,
) -> list[str]:
    """Every reason the record in ``config`` (the parsed training_config.json) must not be
    trusted; empty when it verifies. ``aggregator_claims``: the init_data claims of the
    aggregator's verified token (its federation identity)."""
    record = config.get("contributions")
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        return [f"contributions: no {RECORD_FORMAT} record in the training config"]
    if record_digest(record) != dataset_digest:
        return ["contributions: the record is not the one the aggregator signed (dataset_digest)"]
    try:
        aggregator = FederationIdentity.from_claims(aggregator_claims)
    except FederationIdentityError as exc:
        return [f"contributions: the aggregator's token names no federation party: {exc}"]
    problems = []
    if aggregator.role != AGGREGATOR:
        problems.append(f"contributions: signed by {aggregator}, not an aggregator")
    if record.get("federation") != aggregator.federation:
        problems.append("contributions: the record names another federation than the aggregator")
    rounds = record.get("rounds")
    peers = record.get("participants")
    if not isinstance(rounds, list) or not rounds or not isinstance(peers, Mapping) or not peers:
        return [*problems, "contributions: the record lists no rounds or no participants"]
    expected_rounds = (config.get("federation") or {}).get("rounds")
    if len(rounds) != expected_rounds:
        problems.append(
            f"contributions: {len(rounds)} rounds recorded, the recipe ran {expected_rounds}"
        )
    for site, peer in sorted(peers.items()):
        problems += [
            f"contributions: participant {site}: {p}"
            for p in _peer_problems(
                site,
                peer,
                federation=aggregator.federation,
                run_id=run_id,
                trust_anchor_pem=trust_anchor_pem,
                token_signer_pem=token_signer_pem,
                approved_images=approved_images,
                appraisal_policy_ids=appraisal_policy_ids,
                allow_development_evidence=allow_development_evidence,
                min_gpus=min_gpus,
                leeway=leeway,
            )
        ]
    contributors = set()
    for number, entry in enumerate(rounds):
        accepted = entry.get("accepted") if isinstance(entry, Mapping) else None
        if not isinstance(accepted, list):
            problems.append(f"contributions: round {number} lists no accepted updates")
            continue
        if min_participants is not None and len(accepted) < min_participants:
            problems.append(
                f"contributions: round {number} has {len(accepted)} accepted update(s), "
                f"fewer than the quorum {min_participants}"
            )
        for update in accepted:
            site = update.get("site") if isinstance(update, Mapping) else None
            if site not in peers:
                problems.append(f"contributions: round {number}: update from unlisted {site!r}")
                continue
            contributors.add(site)
            if update.get("dataset_digest") not in approved_datasets:
                problems.append(
                    f"contributions: round {number}: {site}'s data set "
                    f"{update.get('dataset_digest')} is not approved for participants"
                )
    listed_only = sorted(set(peers) - contributors)
    if listed_only:
        problems.append(f"contributions: listed without any accepted update: {listed_only}")
    return problems


def _peer_problems(
    site: str,
    peer: Any,
    *,
    federation: str,
    run_id: str,
    trust_anchor_pem: bytes,
    token_signer_pem: bytes | None,
    approved_images: frozenset[str],
    appraisal_policy_ids: frozenset[str],
    allow_development_evidence: bool,
    min_gpus: int,
    leeway: int,
) -> list[str]:
    from coco_ai.kbs.ear import DEVELOPMENT_EVIDENCE, TokenVerifierError, verify_ear_token

    if not isinstance(peer, Mapping) or not isinstance(peer.get("ear_token"), str):
        return ["no EAR token"]
    token = peer["ear_token"]
    if peer.get("ear_token_digest") != "sha256:" + hashlib.sha256(token.encode()).hexdigest():
        return ["ear_token_digest is not the token's"]
    verified_at = peer.get("verified_at")
    if isinstance(verified_at, bool) or not isinstance(verified_at, int):
        return ["no verification time"]
    try:  # as the aggregator's CC manager saw it: valid when it was verified
        claims = verify_ear_token(
            token, trust_anchor_pem, now=verified_at, leeway=leeway, signer_pem=token_signer_pem
        )
    except TokenVerifierError as exc:
        return [f"EAR token does not verify: {exc}"]
    problems = []
    names = claims.submod_names()
    statuses = {name: claims.submod(name).get("ear.status") for name in names}
    if "cpu0" not in names or any(s != "affirming" for s in statuses.values()):
        problems.append(f"attestation not affirming for every submod: {statuses}")
    if len(claims.gpu_submods()) < min_gpus:
        problems.append(
            f"{len(claims.gpu_submods())} GPU(s) attested, the owner requires {min_gpus}"
        )
    for name in names:
        policy_id = claims.submod(name).get("ear.appraisal-policy-id")
        if policy_id not in appraisal_policy_ids:
            problems.append(f"submod {name} appraised under {policy_id!r}, not an accepted policy")
    development = any(
        kind in claims.annotated_evidence(name) for name in names for kind in DEVELOPMENT_EVIDENCE
    )
    if development and not allow_development_evidence:
        problems.append("attestation rests on development (sample) evidence")
    init = claims.init_data_claims() or {}
    try:
        identity = FederationIdentity.from_claims(init)
    except FederationIdentityError as exc:
        return [*problems, str(exc)]
    if identity != FederationIdentity(federation, PARTICIPANT, site):
        problems.append(f"the token attests {identity}, not participant {site} of {federation}")
    if init.get(RUN_ID_KEY) != run_id:
        problems.append(f"the token is run {init.get(RUN_ID_KEY)!r}'s, not this run's")
    if init.get(WORKLOAD_KEY) != PARTICIPANT_WORKLOAD:
        problems.append(f"the token's workload is {init.get(WORKLOAD_KEY)!r}")
    if init.get(IMAGE_DIGEST_KEY) not in approved_images:
        problems.append(f"image {init.get(IMAGE_DIGEST_KEY)} is not approved")
    return problems
