"""Fixtures for the federation tests: one Trustee stand-in (TLS, development policy set, real
Rego), its admin client, and federation parties, each a guest-components emulator on loopback
whose initdata names the party's identity and, as the pipeline adds it, its run id (and binds the
approved code)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.federated.identity import FederationIdentity
from coco_ai.guest.client import GuestClient
from coco_ai.guest.emulator import GuestComponentsEmulator, RunningServer, serve_in_thread
from coco_ai.guest.initdata import RUN_ID_KEY, build_initdata
from coco_ai.kbs.admin_auth import admin_auth_for
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.trustee_dev.server import RunningServer as TrusteeServer
from coco_ai.trustee_dev.server import serve_in_thread as serve_trustee
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

FEDERATION = "northwind-fed"
RUN_ID = "fl-run-1"


@pytest.fixture(scope="session")
def trustee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrusteeServer]:
    admin_key = ed25519.Ed25519PrivateKey.generate()
    public_pem = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = serve_trustee(
        tmp_path_factory.mktemp("trustee-state"),
        public_pem,
        policy_set="dev",
        approved_images=[APPROVED_IMAGE],
    )
    server.admin_private_pem = admin_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trustee_ca(trustee: TrusteeServer) -> bytes:
    return Path(trustee.tls_ca_path).read_bytes()


@pytest.fixture(scope="session")
def admin(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[KbsAdminClient]:
    auth = admin_auth_for(trustee.standin.trustee_version, trustee.admin_private_pem)  # type: ignore[attr-defined]
    with KbsAdminClient(trustee.url, auth=auth, ca_cert=trustee_ca) as client:
        yield client


class Party:
    """One emulated federation party: its guest components on loopback and a client to them."""

    def __init__(self, identity: FederationIdentity | None, initdata, gpus: int) -> None:
        self.identity = identity
        self.emulator = GuestComponentsEmulator(initdata, gpus=gpus)
        self.server: RunningServer = serve_in_thread(self.emulator)
        self.url = self.server.url
        self.client = GuestClient(self.url)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="session")
def party_factory(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[Callable[..., Party]]:
    started: list[Party] = []
    cache: dict[tuple, Party] = {}

    def make(
        participant_id: str,
        *,
        role: str = "participant",
        federation: str = FEDERATION,
        run_id: str | None = RUN_ID,
        gpus: int = 1,
        claims: dict[str, str] | None = None,
    ) -> Party:
        key = (
            participant_id,
            role,
            federation,
            run_id,
            gpus,
            tuple(sorted((claims or {}).items())),
        )
        if key in cache:
            return cache[key]
        identity = FederationIdentity(federation, role, participant_id)
        if claims is None:
            claims = identity.claims()
            if run_id is not None:
                claims[RUN_ID_KEY] = run_id
        initdata = build_initdata(
            trustee.url,
            trustee_ca,
            claims,
            image=APPROVED_IMAGE,
            module=APPROVED_MODULE,
        )
        party = Party(identity, initdata, gpus)
        started.append(party)
        cache[key] = party
        return party

    yield make
    for party in started:
        party.close()
