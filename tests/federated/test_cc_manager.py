"""IdentityBoundCCManager: NVFlare's CCManager accepts a Trustee token only under the site name
its attestation names (real tokens from the stand-in)."""

from __future__ import annotations

import inspect
import json
import time

import pytest
from jwcrypto import jwk
from nvflare.app_opt.confidential_computing.cc_manager import (
    CC_NAMESPACE,
    CC_TOKEN,
    CC_VERIFICATION_FAILED,
    CCManager,
)

from coco_ai.federated.authorizer import NAMESPACE, TrusteeCCAuthorizer
from coco_ai.federated.cc_manager import IdentityBoundCCManager
from tests.federated.conftest import FEDERATION, RUN_ID

pytestmark = pytest.mark.timeout(120)


def manager_with(
    verifier: TrusteeCCAuthorizer, sites: list[str], record_dir=None
) -> IdentityBoundCCManager:
    manager = IdentityBoundCCManager(
        cc_issuers_conf=[],
        cc_verifier_ids=[NAMESPACE],
        cc_enabled_sites=sites,
        record_dir=record_dir,
    )
    # What SYSTEM_BOOTSTRAP's _setup_cc_authorizers does with the engine's components.
    manager.cc_verifiers = {verifier.get_namespace(): verifier}
    return manager


@pytest.mark.parametrize(
    "method",
    ["_verify_participants_tokens", "_perform_cross_site_validation", "_get_all_cc_enabled_sites"],
)
def test_overridden_methods_keep_upstream_signatures(method) -> None:
    ours = inspect.signature(getattr(IdentityBoundCCManager, method))
    upstream = inspect.signature(getattr(CCManager, method))
    assert list(ours.parameters) == list(upstream.parameters)
    # and the upstream helpers the overrides call are still there, with these parameters
    for helper, params in (
        ("_get_all_sites", ["self"]),
        ("_validate_participants_tokens", ["self", "participants_tokens"]),
        ("_generate_fresh_tokens_for_validation", ["self"]),
        ("_shutdown_system", ["self", "reason", "fl_ctx"]),
    ):
        assert list(inspect.signature(getattr(CCManager, helper)).parameters) == params


def test_token_is_accepted_only_under_its_attested_site_name(trustee, party_factory) -> None:
    aggregator = party_factory("server", role="aggregator")
    verifier = TrusteeCCAuthorizer(
        aggregator.url,
        str(trustee.token_anchor_path),
        FEDERATION,
        allow_development_evidence=True,
    )
    manager = manager_with(verifier, ["server", "dept-a", "dept-b"])

    def cc_info(participant_id: str) -> list[dict]:
        party = party_factory(participant_id)
        issuer = TrusteeCCAuthorizer(party.url, str(trustee.token_anchor_path), FEDERATION)
        return [{CC_TOKEN: issuer.generate(), CC_NAMESPACE: NAMESPACE}]

    ok, invalid = manager._verify_participants_tokens({"dept-a": cc_info("dept-a")})
    assert ok == {f"dept-a.{NAMESPACE}": True} and invalid == []
    assert manager.attested_peers()["dept-a"].identity.participant_id == "dept-a"

    # dept-a's attested TEE presenting itself as dept-b is refused, and so is a missing token.
    err = manager._validate_participants_tokens({"dept-b": cc_info("dept-a"), "server": []})
    assert CC_VERIFICATION_FAILED in err and "dept-b" in err and "server" in err
    assert "dept-b" not in manager.attested_peers()
    # An unknown namespace finds no verifier: refused.
    _, invalid = manager._verify_participants_tokens(
        {"dept-a": [{CC_TOKEN: "x.y.z", CC_NAMESPACE: "x-mock"}]}
    )
    assert invalid == ["dept-a namespace: {x-mock}"]


def test_accepted_tokens_are_recorded_and_refused_ones_are_not(
    trustee, party_factory, tmp_path
) -> None:
    """With record_dir, each accepted token leaves peers/<site>.json (the attestation the run's
    record lists); a refused one leaves nothing."""
    aggregator = party_factory("server", role="aggregator")
    verifier = TrusteeCCAuthorizer(
        aggregator.url,
        str(trustee.token_anchor_path),
        FEDERATION,
        run_id=RUN_ID,
        allow_development_evidence=True,
    )
    manager = manager_with(verifier, ["server", "dept-a", "dept-b"], record_dir=str(tmp_path))
    party = party_factory("dept-a")
    token = TrusteeCCAuthorizer(party.url, str(trustee.token_anchor_path), FEDERATION).generate()
    before = int(time.time())
    ok, _ = manager._verify_participants_tokens(
        {"dept-a": [{CC_TOKEN: token, CC_NAMESPACE: NAMESPACE}]}
    )
    assert ok
    record = json.loads((tmp_path / "peers" / "dept-a.json").read_text())
    peer = manager.attested_peers()["dept-a"]
    assert record == {
        "site": "dept-a",
        "role": "participant",
        "participant_id": "dept-a",
        "federation": FEDERATION,
        "run_id": RUN_ID,
        "ear_token": peer.ear_token,
        "tee_key_thumbprint": peer.tee_key_thumbprint,
        "verified_at": record["verified_at"],
    }
    assert before <= record["verified_at"] <= int(time.time())
    assert peer.tee_key_thumbprint == jwk.JWK(**peer.tee_pubkey).thumbprint()
    assert not list((tmp_path / "peers").glob("*.partial"))
    # a fresh token of dept-a under dept-b's name is refused: no record for dept-b
    fresh = TrusteeCCAuthorizer(party.url, str(trustee.token_anchor_path), FEDERATION).generate()
    _, invalid = manager._verify_participants_tokens(
        {"dept-b": [{CC_TOKEN: fresh, CC_NAMESPACE: NAMESPACE}]}
    )
    assert invalid and not (tmp_path / "peers" / "dept-b.json").exists()
