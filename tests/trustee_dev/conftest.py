"""Fixtures for the Trustee stand-in tests: admin keys, a real server on loopback, RCAR helpers."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.admin_auth import admin_auth_for
from coco_ai.kbs.client import KbsAdminClient, KbsClient
from coco_ai.kbs.evidence import tee_evidence
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.kbs.versions import TRUSTEE_VERSIONS
from coco_ai.trustee_dev import serve_in_thread
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE


@dataclass
class Clock:
    """Real time plus an adjustable offset: tests move it forward instead of sleeping."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass(frozen=True)
class AdminKeys:
    private_pem: bytes
    public_pem: bytes


def make_admin_keys() -> AdminKeys:
    key = ed25519.Ed25519PrivateKey.generate()
    return AdminKeys(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


@pytest.fixture(scope="session")
def admin_keys() -> AdminKeys:
    return make_admin_keys()


@dataclass
class Stand:
    """A running stand-in plus what a test needs to talk to it."""

    server: Any
    clock: Clock
    admin: KbsAdminClient
    keys: AdminKeys
    state_dir: Path
    ca: bytes = field(init=False)  # the TLS CA: what clients pin
    anchor: bytes = field(init=False)  # the EAR token CA: what relying parties trust
    signer: bytes = field(init=False)  # the EAR signer certificate: what they pin

    def __post_init__(self) -> None:
        self.ca = self.server.tls_ca_path.read_bytes()
        self.anchor = self.server.token_anchor_path.read_bytes()
        self.signer = self.server.token_signer_path.read_bytes()

    @property
    def version(self) -> str:
        return self.server.standin.trustee_version

    def auth_header(self) -> str:
        """An `Authorization` value of the admin auth generation this version expects."""
        return admin_auth_for(self.version, self.keys.private_pem).authorization()

    @property
    def url(self) -> str:
        return self.server.url

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=_ctx(self.ca), timeout=10, trust_env=False)

    def client(self, gpus: int = 1, run_id: str = "run-1", **kwargs: Any) -> KbsClient:
        initdata = build_initdata(
            self.url,
            self.ca,
            {"io.coco-ai.run-id": run_id},
            image=APPROVED_IMAGE,
            module=APPROVED_MODULE,
        )
        devices = [SampleDeviceAttester(count=gpus)] if gpus else []
        return KbsClient(
            self.url,
            SampleAttester(init_data_digest=initdata.digest()),
            devices,
            initdata_toml=initdata.toml,
            ca_cert=self.ca,
            handshake_retries=1,
            **kwargs,
        )


# Raw handshakes' default initdata: any KBS URL, bound to the approved image.
BOUND_INITDATA = build_initdata(
    "https://127.0.0.1", None, image=APPROVED_IMAGE, module=APPROVED_MODULE
)


def _ctx(ca: bytes):
    import ssl

    return ssl.create_default_context(cadata=ca.decode())


# The suite's stand: each emulated Trustee version, with the extensions the older tests of
# several GPUs and the initdata check rely on. Fidelity tests without any extension start
# their own (start_stand).
LEGACY_EXTENSIONS = frozenset({"multi-gpu-sampledevice", "sample-initdata-check"})


def start_stand(
    state_dir: Path,
    keys: AdminKeys,
    *,
    trustee_version: str,
    extensions: frozenset[str] = frozenset(),
    **kwargs: Any,
) -> Stand:
    clock = Clock()
    kwargs.setdefault("approved_images", (APPROVED_IMAGE,))
    server = serve_in_thread(
        state_dir,
        keys.public_pem,
        clock=clock,
        trustee_version=trustee_version,
        extensions=extensions,
        **kwargs,
    )
    admin = KbsAdminClient(
        server.url,
        auth=admin_auth_for(trustee_version, keys.private_pem),
        ca_cert=server.tls_ca_path.read_bytes(),
        trustee_version=trustee_version,
    )
    return Stand(server, clock, admin, keys, state_dir)


def stop_stand(stand: Stand) -> None:
    stand.admin.close()
    stand.server.stop()


@pytest.fixture(scope="module", params=TRUSTEE_VERSIONS)
def stand(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, admin_keys):
    state_dir = tmp_path_factory.mktemp("trustee-state")
    running = start_stand(
        state_dir, admin_keys, trustee_version=request.param, extensions=LEGACY_EXTENSIONS
    )
    yield running
    stop_stand(running)


# -- hand-built RCAR exchanges (so tests can tamper with every field) ----------------------


@dataclass
class Handshake:
    http: httpx.Client
    nonce: str
    cookie: str
    key: TeeKeyPair = field(default_factory=TeeKeyPair.generate)

    def attestation(
        self,
        *,
        gpus: int = 1,
        initdata_toml: str | None = None,
        digest: bytes | None = None,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """Sample evidence; without initdata or digest, those of a guest bound to the approved
        image (what the resource policies require before they release anything)."""
        if initdata_toml is None and digest is None:
            initdata_toml, digest = BOUND_INITDATA.toml, BOUND_INITDATA.digest()
        cpu = SampleAttester(init_data_digest=digest)
        devices = [SampleDeviceAttester(count=gpus)] if gpus else []
        pubkey = self.key.public_jwk()
        body: dict[str, Any] = {
            "runtime-data": {"nonce": nonce or self.nonce, "tee-pubkey": pubkey},
            "tee-evidence": tee_evidence(cpu, devices, nonce or self.nonce, pubkey),
        }
        if initdata_toml is not None:
            body["init-data"] = {"format": "toml", "body": initdata_toml}
        return body

    def attest(self, body: dict[str, Any] | bytes) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.http.cookies.clear()
        return self.http.post(
            "/kbs/v0/attest",
            content=content,
            headers={"Cookie": f"kbs-session-id={self.cookie}"},
        )

    def resource(self, path: str) -> httpx.Response:
        self.http.cookies.clear()
        return self.http.get(
            f"/kbs/v0/resource/{path}", headers={"Cookie": f"kbs-session-id={self.cookie}"}
        )


def handshake(http: httpx.Client, tee: str = "sample") -> Handshake:
    response = http.post(
        "/kbs/v0/auth",
        json={"version": "0.4.0", "tee": tee, "extra-params": {"supported-hash-algorithms": []}},
    )
    assert response.status_code == 200, response.text
    cookie = response.cookies.get("kbs-session-id")
    assert cookie
    http.cookies.clear()  # every request below names its session explicitly
    return Handshake(http, response.json()["nonce"], cookie)


def error_type(response: httpx.Response) -> str:
    body = response.json()
    prefix = "https://github.com/confidential-containers/kbs/errors/"
    assert body["type"].startswith(prefix), body
    assert isinstance(body["detail"], str)
    return body["type"][len(prefix) :]


def b64url_nopad(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
