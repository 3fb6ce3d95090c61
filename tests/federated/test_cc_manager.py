"""IdentityBoundCCManager: NVFlare's CCManager accepts a Trustee token only under the site name
its attestation names (real tokens from the stand-in)."""

from __future__ import annotations

import inspect

import pytest
from nvflare.app_opt.confidential_computing.cc_manager import (
    CC_NAMESPACE,
    CC_TOKEN,
    CC_VERIFICATION_FAILED,
    CCManager,
)

from coco_ai.federated.authorizer import NAMESPACE, TrusteeCCAuthorizer
from coco_ai.federated.cc_manager import IdentityBoundCCManager
from tests.federated.conftest import FEDERATION

pytestmark = pytest.mark.timeout(120)


def manager_with(verifier: TrusteeCCAuthorizer, sites: list[str]) -> IdentityBoundCCManager:
    manager = IdentityBoundCCManager(
        cc_issuers_conf=[], cc_verifier_ids=[NAMESPACE], cc_enabled_sites=sites
    )
    # What SYSTEM_BOOTSTRAP's _setup_cc_authorizers does with the engine's components.
    manager.cc_verifiers = {verifier.get_namespace(): verifier}
    return manager


def test_overridden_method_keeps_upstream_signature() -> None:
    ours = inspect.signature(IdentityBoundCCManager._verify_participants_tokens)
    upstream = inspect.signature(CCManager._verify_participants_tokens)
    assert list(ours.parameters) == list(upstream.parameters)


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
