"""The Trustee-backed NVFlare CCAuthorizer with real EAR tokens from the Trustee stand-in,
issued over real HTTP to guest-components emulators whose initdata names each party."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws
from nvflare.app_opt.confidential_computing.cc_authorizer import CCAuthorizer
from pki import make_cert, pem, private_pem, self_signed_ca

from coco_ai.federated.authorizer import (
    NAMESPACE,
    TOKEN_TYPE,
    FederationAuthError,
    TrusteeCCAuthorizer,
    federation_audience,
)
from coco_ai.federated.identity import FederationIdentity
from coco_ai.guest.initdata import (
    FEDERATION_KEY,
    FEDERATION_PARTICIPANT_KEY,
    FEDERATION_ROLE_KEY,
    RUN_ID_KEY,
)
from coco_ai.kbs.ear import sign_ear_token, unverified_claims
from coco_ai.kbs.wire import b64url_decode
from tests.federated.conftest import FEDERATION, RUN_ID, Party

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def verifier_for(trustee, party_factory) -> Callable[..., TrusteeCCAuthorizer]:
    """An authorizer as the aggregator runs it (its own guest, this federation, the stand-in's
    anchor with its signer pinned); development evidence allowed unless a test says otherwise."""

    def make(**kwargs) -> TrusteeCCAuthorizer:
        kwargs.setdefault("allow_development_evidence", True)
        kwargs.setdefault("token_signer_path", str(trustee.token_signer_path))
        federation = kwargs.pop("federation", FEDERATION)
        aggregator = party_factory("server", role="aggregator", federation=federation)
        return TrusteeCCAuthorizer(
            aggregator.url, str(trustee.token_anchor_path), federation, **kwargs
        )

    return make


def authorizer_of(party: Party, trustee, **kwargs) -> TrusteeCCAuthorizer:
    return TrusteeCCAuthorizer(
        party.url, str(trustee.token_anchor_path), party.identity.federation, **kwargs
    )


def resign(token: str, key_pem: bytes, **changes) -> str:
    """The token's payload with `changes`, signed again with `key_pem` (ES256, our typ)."""
    payload = json.loads(b64url_decode(token.split(".")[1]))
    payload.update(changes)
    sig = jws.JWS(json.dumps(payload).encode())
    sig.add_signature(
        jwk.JWK.from_pem(key_pem), alg="ES256", protected={"alg": "ES256", "typ": TOKEN_TYPE}
    )
    return sig.serialize(compact=True)


def test_attested_participant_is_accepted_with_its_identity(
    trustee, party_factory, verifier_for
) -> None:
    party = party_factory("dept-a")
    token = authorizer_of(party, trustee).generate()
    verifier = verifier_for()
    assert isinstance(verifier, CCAuthorizer) and verifier.get_namespace() == NAMESPACE
    peer = verifier.verify_peer(token)
    assert peer.identity == FederationIdentity(FEDERATION, "participant", "dept-a")
    assert peer.claims.gpu_submods() == ["gpu0"]
    assert peer.ear_token == json.loads(b64url_decode(token.split(".")[1]))["ear"]
    # The aggregator's own token verifies at the participant the same way (mutual).
    aggregator = party_factory("server", role="aggregator")
    at_participant = authorizer_of(
        party, trustee, allow_development_evidence=True, accepted_roles=["aggregator"]
    )
    assert at_participant.verify_peer(authorizer_of(aggregator, trustee).generate()).identity == (
        FederationIdentity(FEDERATION, "aggregator", "server")
    )
    # Each generate() is fresh: a second token is accepted too (its own nonce).
    assert verifier.verify(authorizer_of(party, trustee).generate()) is True


def test_sample_evidence_is_refused_under_a_production_policy(
    trustee, party_factory, verifier_for
) -> None:
    token = authorizer_of(party_factory("dept-a"), trustee).generate()
    with pytest.raises(FederationAuthError, match=r"development evidence \(cpu0:sample"):
        verifier_for(allow_development_evidence=False).verify_peer(token)
    assert verifier_for(allow_development_evidence=False).verify(token) is False


def test_identity_comes_from_the_attested_initdata_not_from_the_sender(
    trustee, party_factory, verifier_for
) -> None:
    """A TEE with dept-a's initdata cannot pass as dept-b: the identity is the attested one,
    and a token whose `sub` names another participant is refused even when properly signed."""
    party = party_factory("dept-a")
    token = authorizer_of(party, trustee).generate()
    verifier = verifier_for(accepted_participants=["dept-b"])
    with pytest.raises(FederationAuthError, match="not a listed participant"):
        verifier.verify_peer(token)
    _, key_pem = party.client.get_token()
    forged = resign(authorizer_of(party, trustee).generate(), key_pem, sub="dept-b")
    with pytest.raises(FederationAuthError, match="claims participant 'dept-b'"):
        verifier_for().verify_peer(forged)


def test_initdata_without_a_federation_identity_is_refused(
    trustee, party_factory, verifier_for
) -> None:
    party = party_factory("anon", claims={RUN_ID_KEY: RUN_ID, FEDERATION_KEY: FEDERATION})
    ear, key_pem = party.client.get_token()
    token = resign(
        authorizer_of(party_factory("dept-a"), trustee).generate(),
        key_pem,
        ear=ear,
        sub="anon",
    )
    with pytest.raises(FederationAuthError, match=FEDERATION_ROLE_KEY):
        verifier_for().verify_peer(token)
    bad_role = party_factory(
        "dept-x",
        claims={
            FEDERATION_KEY: FEDERATION,
            FEDERATION_ROLE_KEY: "observer",
            FEDERATION_PARTICIPANT_KEY: "x",
        },
    )
    ear, key_pem = bad_role.client.get_token()
    with pytest.raises(FederationAuthError, match="role 'observer'"):
        verifier_for().verify_peer(resign(token, key_pem, ear=ear, sub="x"))


def test_participant_role_is_refused_where_only_an_aggregator_is_accepted(
    trustee, party_factory, verifier_for
) -> None:
    """A participant posing as the aggregator (impostor aggregator) is refused by participants."""
    token = authorizer_of(party_factory("dept-b"), trustee).generate()
    with pytest.raises(FederationAuthError, match="not in an accepted role"):
        verifier_for(accepted_roles=["aggregator"]).verify_peer(token)


def test_replayed_token_is_refused(trustee, party_factory, verifier_for) -> None:
    token = authorizer_of(party_factory("dept-a"), trustee).generate()
    verifier = verifier_for()
    verifier.verify_peer(token)
    with pytest.raises(FederationAuthError, match="replayed"):
        verifier.verify_peer(token)
    assert verifier.verify(token) is False


def test_a_second_tee_claiming_a_held_identity_is_refused(
    trustee, party_factory, verifier_for
) -> None:
    """Two TEEs with the same approved code and the same identity claims (a clone): the first
    to be accepted holds the identity; the other is refused, every round, while the holder's
    fresh tokens keep being accepted."""
    holder = party_factory("dept-a")
    clone = party_factory("dept-a", gpus=2)  # another emulator: its own TEE key, same claims
    assert clone.identity == holder.identity
    verifier = verifier_for()
    assert verifier.verify_peer(authorizer_of(holder, trustee).generate()).identity == (
        holder.identity
    )
    for _ in range(2):
        with pytest.raises(FederationAuthError, match="already held by another TEE"):
            verifier.verify_peer(authorizer_of(clone, trustee).generate())
    assert verifier.verify(authorizer_of(holder, trustee).generate()) is True
    # another party is not affected
    assert verifier.verify(authorizer_of(party_factory("dept-b"), trustee).generate()) is True


def test_stale_and_expired_tokens_are_refused(trustee, party_factory, verifier_for) -> None:
    token = authorizer_of(party_factory("dept-a"), trustee).generate()
    later = time.time() + 120
    with pytest.raises(FederationAuthError, match="older than 60 s"):
        verifier_for(clock=lambda: later).verify_peer(token)
    # A day later the EAR token itself has expired (the stand-in's tokens live less).
    next_day = time.time() + 24 * 3600
    with pytest.raises(FederationAuthError, match="expired"):
        verifier_for(clock=lambda: next_day, max_token_age_s=48 * 3600).verify_peer(token)
    # A token dated in the future is refused too (clock skew beyond the leeway).
    earlier = time.time() - 120
    with pytest.raises(FederationAuthError, match="future"):
        verifier_for(clock=lambda: earlier).verify_peer(token)


def test_wrong_audience_is_refused(trustee, party_factory, verifier_for) -> None:
    party = party_factory("dept-a")
    _, key_pem = party.client.get_token()
    token = resign(
        authorizer_of(party, trustee).generate(), key_pem, aud=federation_audience("other-fed")
    )
    with pytest.raises(FederationAuthError, match="audience 'coco-ai-federation:other-fed'"):
        verifier_for().verify_peer(token)


def test_party_of_another_federation_is_refused(trustee, party_factory, verifier_for) -> None:
    """Same participant id, same run id, another federation: its token (signed for its own
    federation's audience, or re-signed for ours) is refused."""
    other = party_factory("dept-a", federation="other-fed")
    token = authorizer_of(other, trustee).generate()
    with pytest.raises(FederationAuthError, match="names federation 'other-fed', not"):
        verifier_for().verify_peer(token)
    _, key_pem = other.client.get_token()
    retargeted = resign(token, key_pem, aud=federation_audience(FEDERATION))
    with pytest.raises(FederationAuthError, match="names federation 'other-fed', not"):
        verifier_for().verify_peer(retargeted)


def test_party_of_an_earlier_run_of_the_federation_is_refused_when_the_run_is_pinned(
    trustee, party_factory, verifier_for
) -> None:
    """Two pipeline runs of one federation: a verifier pinned to the second run refuses a party
    started for the first (its initdata names the first run), accepts one of the second, and
    refuses one whose initdata names no run at all."""
    earlier = party_factory("dept-a", run_id="fl-run-0")
    current = party_factory("dept-a", run_id=RUN_ID)
    unpinned = party_factory("dept-a", run_id=None)
    with pytest.raises(FederationAuthError, match=r"not of this pipeline run.*'fl-run-0'"):
        verifier_for(run_id=RUN_ID).verify_peer(authorizer_of(earlier, trustee).generate())
    with pytest.raises(FederationAuthError, match=r"not of this pipeline run.*None"):
        verifier_for(run_id=RUN_ID).verify_peer(authorizer_of(unpinned, trustee).generate())
    peer = verifier_for(run_id=RUN_ID).verify_peer(authorizer_of(current, trustee).generate())
    assert peer.identity == FederationIdentity(FEDERATION, "participant", "dept-a")
    assert peer.claims.init_data_claims()[RUN_ID_KEY] == RUN_ID
    # Without a pinned run only the federation is checked: the earlier run's party is accepted.
    assert verifier_for().verify(authorizer_of(earlier, trustee).generate()) is True


def test_self_signed_ear_token_is_refused(trustee, party_factory, verifier_for) -> None:
    """The same claims signed by a key under a self-made CA do not chain to the anchor."""
    party = party_factory("dept-a")
    ear, key_pem = party.client.get_token()
    ca_key, ca = self_signed_ca("impostor attestation CA")
    signer = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert(
        "impostor signer", "impostor attestation CA", signer.public_key(), ca_key, ca=False
    )
    forged_ear = sign_ear_token(unverified_claims(ear).raw, signer, [leaf, ca])
    token = resign(authorizer_of(party, trustee).generate(), key_pem, ear=forged_ear)
    with pytest.raises(FederationAuthError, match="EAR token refused"):
        verifier_for().verify_peer(token)
    # Even with no signer pinned, the chain must reach the configured anchor.
    with pytest.raises(FederationAuthError, match="EAR token refused"):
        verifier_for(token_signer_path=None).verify_peer(token)
    assert pem(ca) not in trustee.token_anchor_path.read_bytes()
    assert private_pem(signer)  # the forger holds its key; that is not enough


def test_token_not_signed_by_the_attested_key_is_refused(
    trustee, party_factory, verifier_for
) -> None:
    """Someone replaying dept-a's (public) EAR token cannot prove possession of its TEE key."""
    party = party_factory("dept-a")
    other_key = private_pem(ec.generate_private_key(ec.SECP256R1()))
    token = resign(authorizer_of(party, trustee).generate(), other_key)
    with pytest.raises(FederationAuthError, match="no proof of possession"):
        verifier_for().verify_peer(token)


def test_missing_gpu_evidence_is_refused_when_a_gpu_is_required(
    trustee, party_factory, verifier_for
) -> None:
    token = authorizer_of(party_factory("dept-c", gpus=0), trustee).generate()
    with pytest.raises(FederationAuthError, match=r"0 GPU\(s\), policy requires 1"):
        verifier_for().verify_peer(token)
    assert verifier_for(min_gpus=0).verify(token) is True


@pytest.mark.parametrize("token", ["", "a.b", "x" * 70000, "e30.e30.e30", None])
def test_malformed_tokens_are_refused(verifier_for, token) -> None:
    assert verifier_for().verify(token) is False


def test_bad_configuration_is_refused(trustee, tmp_path) -> None:
    not_pem = tmp_path / "anchor.txt"
    not_pem.write_text("no certificate here")
    with pytest.raises(ValueError, match="is not PEM"):
        TrusteeCCAuthorizer("http://127.0.0.1:1", str(not_pem), FEDERATION)
    with pytest.raises(ValueError, match="cannot read"):
        TrusteeCCAuthorizer("http://127.0.0.1:1", str(tmp_path / "absent.pem"), FEDERATION)
    anchor = str(trustee.token_anchor_path)
    with pytest.raises(ValueError, match="federation id"):
        TrusteeCCAuthorizer("http://127.0.0.1:1", anchor, "../x")
    with pytest.raises(ValueError, match="is not a run id"):
        TrusteeCCAuthorizer("http://127.0.0.1:1", anchor, FEDERATION, run_id="a/b")
    with pytest.raises(ValueError, match="accepted_roles"):
        TrusteeCCAuthorizer("http://127.0.0.1:1", anchor, FEDERATION, accepted_roles=["observer"])


def test_generate_fails_closed_without_guest_or_identity(trustee, party_factory) -> None:
    from nvflare.app_opt.confidential_computing.cc_authorizer import CCTokenGenerateError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = TrusteeCCAuthorizer(
        f"http://127.0.0.1:{closed_port}", str(trustee.token_anchor_path), FEDERATION
    )
    with pytest.raises(CCTokenGenerateError, match="no token"):
        nowhere.generate()
    anon = party_factory("anon", claims={RUN_ID_KEY: RUN_ID, FEDERATION_KEY: FEDERATION})
    with pytest.raises(CCTokenGenerateError, match="names no party"):
        authorizer_of(anon, trustee).generate()
