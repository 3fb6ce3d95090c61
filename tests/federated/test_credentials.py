"""Identity-bound federation credentials: issued by the data owner, held by the Trustee
stand-in, released by the real resource policy (regopy) only to the attested party named in
them, and usable for mutual TLS that refuses other federations' and self-signed certificates."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
from pki import pem, private_pem, self_signed_ca

from coco_ai import policies
from coco_ai.federated import cli
from coco_ai.federated.credentials import (
    CredentialBundle,
    CredentialError,
    issue_federation,
    provision,
    revoke,
)
from coco_ai.federated.identity import FederationIdentity, FederationIdentityError
from coco_ai.guest.client import GuestError
from coco_ai.guest.initdata import (
    FEDERATION_KEY,
    FEDERATION_PARTICIPANT_KEY,
    FEDERATION_ROLE_KEY,
    RUN_ID_KEY,
)
from coco_ai.kbs.ear import unverified_claims
from coco_ai.trustee_dev.policy import evaluate_resource_policy
from tests.code_binding import APPROVED_IMAGE
from tests.federated.conftest import FEDERATION, RUN_ID

pytestmark = pytest.mark.timeout(120)

PARTICIPANTS = ("dept-a", "dept-b", "dept-c")


@pytest.fixture(scope="module")
def federation(admin):
    issued = issue_federation(FEDERATION, "server", PARTICIPANTS)
    provision(admin, issued)
    yield issued
    revoke(admin, [b.identity for b in issued.bundles])


def bundle_of(federation, participant_id: str) -> CredentialBundle:
    return next(b for b in federation.bundles if b.identity.participant_id == participant_id)


def test_each_party_obtains_exactly_its_own_credentials(federation, party_factory) -> None:
    for bundle in federation.bundles:
        identity = bundle.identity
        party = party_factory(identity.participant_id, role=identity.role)
        released = party.client.get_resource(identity.credential_path().uri())
        got = CredentialBundle.from_bytes(released, identity)
        assert got == bundle
        assert got.ca_pem == federation.ca_pem
    # The federation is provisioned once for several pipeline runs: a party started for another
    # run of it obtains the same credentials (the run is bound by the peers' authorizers).
    later_run = party_factory("dept-a", run_id="fl-run-later")
    identity = bundle_of(federation, "dept-a").identity
    assert CredentialBundle.from_bytes(
        later_run.client.get_resource(identity.credential_path().uri()), identity
    ) == bundle_of(federation, "dept-a")


@pytest.mark.parametrize(
    ("requester", "target"),
    [
        (("dept-b", "participant", FEDERATION), "dept-a"),  # another participant's credentials
        (("server", "participant", FEDERATION), "server"),  # the aggregator's id, wrong role
        (("dept-a", "aggregator", FEDERATION), "dept-a"),  # the right id, wrong role
        (("dept-a", "participant", "other-fed"), "dept-a"),  # another federation
    ],
    ids=["other-participant", "impostor-aggregator", "role-mismatch", "other-federation"],
)
def test_credentials_are_refused_to_any_other_identity(
    federation, party_factory, requester, target
) -> None:
    participant_id, role, federation_id = requester
    party = party_factory(participant_id, role=role, federation=federation_id)
    uri = bundle_of(federation, target).identity.credential_path().uri()
    with pytest.raises(GuestError) as err:
        party.client.get_resource(uri)
    assert err.value.policy_denied, err.value.message
    assert b"PRIVATE KEY" not in err.value.message.encode()


def test_credentials_are_refused_without_gpu_or_identity(federation, party_factory) -> None:
    uri = bundle_of(federation, "dept-a").identity.credential_path().uri()
    for party in (
        party_factory("dept-a", gpus=0),
        party_factory("dept-a", claims={RUN_ID_KEY: RUN_ID, FEDERATION_KEY: FEDERATION}),
        party_factory(
            "dept-a", claims={FEDERATION_KEY: FEDERATION, FEDERATION_PARTICIPANT_KEY: "dept-a"}
        ),
        # the run id in the federation's place (the claims before federations had their own id)
        party_factory(
            "dept-a",
            claims={
                RUN_ID_KEY: FEDERATION,
                FEDERATION_ROLE_KEY: "participant",
                FEDERATION_PARTICIPANT_KEY: "dept-a",
            },
        ),
    ):
        with pytest.raises(GuestError) as err:
            party.client.get_resource(uri)
        assert err.value.policy_denied, err.value.message


@pytest.mark.parametrize("kind", ["prod", "dev"])
def test_resource_policy_federation_rule(party_factory, kind) -> None:
    """The shipped policies, rendered and evaluated with regopy on a real token's claims: the
    production policy refuses the stand-in's sample evidence; with hardware evidence in its
    place, both release a party's path to that party only."""
    ear, _ = party_factory("dept-a").client.get_token()
    claims = unverified_claims(ear).raw
    text = policies.resource_policy_text(kind, [APPROVED_IMAGE])

    def allowed(path: tuple[str, str, str], token_claims: dict) -> bool:
        request = {"plugin": "resource", "resource-path": list(path), "query": {}}
        return evaluate_resource_policy(text, token_claims, request)

    own = ("coco-ai-fl", FEDERATION, "participant.dept-a")
    assert allowed(own, claims) is (kind == "dev")
    hardware = json.loads(json.dumps(claims))
    for sub in hardware["submods"].values():
        evidence = sub["ear.veraison.annotated-evidence"]
        for dev_kind, hw_kind in (("sample", "tdx"), ("sampledevice", "nvidia")):
            if dev_kind in evidence:
                evidence[hw_kind] = evidence.pop(dev_kind)
    assert allowed(own, hardware)
    assert not allowed(("coco-ai-fl", FEDERATION, "participant.dept-b"), hardware)
    assert not allowed(("coco-ai-fl", FEDERATION, "aggregator.dept-a"), hardware)
    assert not allowed(("coco-ai-fl", "other-fed", "participant.dept-a"), hardware)
    # The path's second segment is the federation claim, never the run id claim.
    assert not allowed(("coco-ai-fl", RUN_ID, "participant.dept-a"), hardware)
    init_claims = hardware["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data_claims"]
    init_claims[FEDERATION_ROLE_KEY] = "observer"
    assert not allowed(("coco-ai-fl", FEDERATION, "observer.dept-a"), hardware)


def test_bundle_checks_fail_closed(federation) -> None:
    bundle = bundle_of(federation, "dept-a")
    data = bundle.to_bytes()
    with pytest.raises(CredentialError, match="is for participant dept-a"):
        CredentialBundle.from_bytes(data, FederationIdentity(FEDERATION, "participant", "dept-b"))
    other = issue_federation(FEDERATION, "server", ["dept-a"])
    doc = json.loads(data)
    doc["ca"] = other.ca_pem.decode()
    with pytest.raises(CredentialError, match="not issued by the federation CA"):
        CredentialBundle.from_bytes(json.dumps(doc).encode(), bundle.identity)
    doc = json.loads(data)
    doc["key"] = bundle_of(federation, "dept-b").key_pem.decode()
    with pytest.raises(CredentialError, match="key does not belong"):
        CredentialBundle.from_bytes(json.dumps(doc).encode(), bundle.identity)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with pytest.raises(CredentialError, match="not valid now"):
        CredentialBundle.from_bytes(data, bundle.identity, now=later)
    with pytest.raises(CredentialError, match="not UTF-8 JSON"):
        CredentialBundle.from_bytes(b"\xff", bundle.identity)
    with pytest.raises(CredentialError, match="exactly"):
        CredentialBundle.from_bytes(b'{"version": 1}', bundle.identity)
    assert "PRIVATE" not in repr(bundle)
    with pytest.raises(CredentialError, match="distinct"):
        issue_federation(FEDERATION, "server", ["server"])
    with pytest.raises(FederationIdentityError, match="participant id"):
        issue_federation(FEDERATION, "server", ["Dept.A"])


def _server_context(bundle: CredentialBundle, tmp: Path) -> ssl.SSLContext:
    files = bundle.write_startup_files(tmp)
    assert (files["server.key"].stat().st_mode & 0o777) == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files["server.crt"], files["server.key"])
    ctx.load_verify_locations(files["rootCA.pem"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, tmp: Path) -> ssl.SSLContext:
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "c.pem").write_bytes(cert_pem)
    (tmp / "k.pem").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tmp / "ca.pem")
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str | None:
    """Mutual TLS over loopback; the client CN the server saw, or None if a side refused."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str | None] = [None]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                subject = dict(x[0] for x in tls.getpeercert()["subject"])
                seen[0] = subject["commonName"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.recv(2)
    except (ssl.SSLError, OSError):
        pass
    finally:
        thread.join(10)
        listener.close()
    return seen[0]


def test_released_credentials_make_mutual_tls_and_refuse_strangers(federation, tmp_path) -> None:
    server = _server_context(bundle_of(federation, "server"), tmp_path)
    a = bundle_of(federation, "dept-a")
    (tmp_path / "a").mkdir()
    assert _handshake(server, _client_context(a.ca_pem, a.cert_pem, a.key_pem, tmp_path / "a")) == (
        "dept-a"
    )
    # A certificate of another federation (its own CA, the same participant name) is refused.
    other = bundle_of(issue_federation(FEDERATION, "server", ["dept-a"]), "dept-a")
    (tmp_path / "o").mkdir()
    stranger = _client_context(federation.ca_pem, other.cert_pem, other.key_pem, tmp_path / "o")
    assert _handshake(server, stranger) is None
    # A self-signed certificate is refused.
    key, cert = self_signed_ca("dept-a")
    (tmp_path / "s").mkdir()
    selfsigned = _client_context(federation.ca_pem, pem(cert), private_pem(key), tmp_path / "s")
    assert _handshake(server, selfsigned) is None
    # An impostor aggregator (another federation's server certificate) is refused by clients.
    impostor = bundle_of(issue_federation(FEDERATION, "server", ["dept-a"]), "server")
    (tmp_path / "i").mkdir()
    impostor_server = _server_context(impostor, tmp_path / "i")
    (tmp_path / "a2").mkdir()
    client = _client_context(a.ca_pem, a.cert_pem, a.key_pem, tmp_path / "a2")
    assert _handshake(impostor_server, client) is None


def test_provision_and_revoke_commands(trustee, trustee_ca, party_factory, tmp_path) -> None:
    admin_key = tmp_path / "admin.pem"
    admin_key.write_bytes(trustee.admin_private_pem)
    kbs_ca = tmp_path / "kbs-ca.pem"
    kbs_ca.write_bytes(trustee_ca)
    common = [
        "--kbs-url", trustee.url, "--kbs-ca", str(kbs_ca), "--admin-key", str(admin_key),
        "--trustee-version", trustee.standin.trustee_version, "--federation", "fed-cli",
        "--aggregator", "server", "--participant", "dept-a", "--participant", "dept-b",
    ]  # fmt: skip
    ca_out = tmp_path / "federation-ca.pem"
    assert cli.main(["federation", "provision", *common, "--ca-out", str(ca_out)]) == 0
    identity = FederationIdentity("fed-cli", "participant", "dept-b")
    party = party_factory("dept-b", federation="fed-cli")
    bundle = CredentialBundle.from_bytes(
        party.client.get_resource(identity.credential_path().uri()), identity
    )
    assert bundle.ca_pem == ca_out.read_bytes()
    assert cli.main(["federation", "revoke", *common]) == 0
    with pytest.raises(GuestError):
        party.client.get_resource(identity.credential_path().uri())
    assert cli.main(["federation", "provision", *common[:-2], "--participant", "Bad.Id",
                     "--ca-out", str(ca_out)]) == 2  # fmt: skip


def test_credentials_are_refused_once_the_attestation_fails(federation, party_factory) -> None:
    """A party attested with its GPU obtains its credentials; once its TEE attests without the
    GPU (as in the mid-run revocation attack) its fresh attestation obtains nothing."""
    party = party_factory("dept-a", gpus=3)  # its own emulator: the change below stays in it
    bundle = bundle_of(federation, "dept-a")
    uri = bundle.identity.credential_path().uri()
    assert CredentialBundle.from_bytes(party.client.get_resource(uri), bundle.identity) == bundle
    party.emulator._kbs.devices = ()  # the GPU stops producing evidence
    party.emulator.token_refresh_margin_s = float("inf")  # every token from fresh evidence
    ear, _ = party.client.get_token()
    assert unverified_claims(ear).gpu_submods() == []
    with pytest.raises(GuestError) as err:
        party.client.get_resource(uri)
    assert err.value.policy_denied, err.value.message
