"""Fixtures for the guest tests: a throwaway CA certificate to pin in initdata, and emulated pods
(the guest-components emulator over real HTTP) attesting to a Trustee stand-in (TLS, dev policy
set, real Rego), one stand-in per test module and Trustee version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pki import pem, self_signed_ca

from coco_ai.guest.client import GuestClient
from coco_ai.guest.emulator import GuestComponentsEmulator, RunningServer, serve_in_thread
from coco_ai.guest.initdata import RUN_ID_KEY, Initdata, build_initdata
from coco_ai.kbs.admin_auth import admin_auth_for
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.versions import TRUSTEE_VERSIONS
from coco_ai.trustee_dev.server import RunningServer as TrusteeServer
from coco_ai.trustee_dev.server import serve_in_thread as serve_trustee
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE


@pytest.fixture(scope="session")
def ca_pem() -> bytes:
    return pem(self_signed_ca("coco-ai test KBS CA", days=1)[1])


@pytest.fixture(scope="module", params=TRUSTEE_VERSIONS)
def trustee(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrusteeServer]:
    admin_key = ed25519.Ed25519PrivateKey.generate()
    public_pem = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    state = tmp_path_factory.mktemp("trustee-state")
    # Two sample GPUs are a stand-in extension (no Trustee has them).
    server = serve_trustee(
        state,
        public_pem,
        policy_set="dev",
        approved_images=[APPROVED_IMAGE],
        extensions={"multi-gpu-sampledevice"},
        trustee_version=request.param,
    )
    server.admin_private_pem = admin_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trustee_ca(trustee: TrusteeServer) -> bytes:
    return Path(trustee.tls_ca_path).read_bytes()


@pytest.fixture(scope="module")
def token_anchor(trustee: TrusteeServer) -> bytes:
    return Path(trustee.token_anchor_path).read_bytes()


@pytest.fixture(scope="module")
def admin(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[KbsAdminClient]:
    auth = admin_auth_for(
        trustee.standin.trustee_version,
        trustee.admin_private_pem,  # type: ignore[attr-defined]
    )
    with KbsAdminClient(trustee.url, auth=auth, ca_cert=trustee_ca) as client:
        yield client


class _Guest:
    """One emulated pod: an emulator served on loopback and the workload's client to it."""

    def __init__(self, initdata: Initdata, gpus: int, **kwargs: object) -> None:
        # No --kbs-url / --kbs-ca: the emulator takes both from the initdata's cdh.toml.
        self.emulator = GuestComponentsEmulator(initdata, gpus=gpus, **kwargs)  # type: ignore[arg-type]
        self.server: RunningServer = serve_in_thread(self.emulator)
        self.client = GuestClient(self.server.url)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture()
def guest_factory(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator:
    started: list[_Guest] = []

    def make(
        claims: dict[str, str], gpus: int = 1, image: str | None = APPROVED_IMAGE, **kwargs: object
    ) -> _Guest:
        initdata = build_initdata(
            trustee.url, trustee_ca, claims, image=image, module=image and APPROVED_MODULE
        )
        guest = _Guest(initdata, gpus, **kwargs)
        started.append(guest)
        return guest

    yield make
    for guest in started:
        guest.close()


@pytest.fixture(scope="module")
def approved_guest(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[_Guest]:
    """One emulated pod running the approved code with one GPU, shared by a module's tests."""
    initdata = build_initdata(
        trustee.url, trustee_ca, {RUN_ID_KEY: "run-shared"}, image=APPROVED_IMAGE,
        module=APPROVED_MODULE,
    )  # fmt: skip
    guest = _Guest(initdata, 1)
    yield guest
    guest.close()
