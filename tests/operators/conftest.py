"""A real Trustee stand-in on loopback TLS (in a thread) and the `trustee_default` connection
pointing at it, given to Airflow the documented way: an ``AIRFLOW_CONN_*`` JSON variable."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


@dataclass
class Trustee:
    url: str
    ca_pem: str  # the stand-in's TLS CA
    admin_pem: str
    state_dir: Path
    anchor_pem: str  # the stand-in's EAR token CA (a different CA)

    def admin(self):
        from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
        from coco_ai.kbs.client import KbsAdminClient

        return KbsAdminClient(
            self.url, auth=SelfSignedAdminAuth(self.admin_pem.encode()), ca_cert=self.ca_pem
        )

    def resource(self, path: str) -> bytes | None:
        from coco_ai.trustee_dev.state import StateDir

        record = StateDir(self.state_dir).get_resource(path)
        return record.data if record else None

    def connection(self, **overrides) -> str:
        extra = {
            "kbs_url": self.url,
            "ca_cert": self.ca_pem,
            "admin_secret": self.admin_pem,
            "admin_auth": "self-signed",
            "trust_anchor": self.anchor_pem,
            **overrides,
        }
        return json.dumps({"conn_type": "trustee", "extra": extra})


@pytest.fixture(scope="module")
def trustee(tmp_path_factory):
    from coco_ai.trustee_dev import serve_in_thread

    key = ed25519.Ed25519PrivateKey.generate()
    admin_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    state = tmp_path_factory.mktemp("trustee")
    server = serve_in_thread(state, public, policy_set="dev", extensions={"run-key-bind"})
    try:
        yield Trustee(
            server.url,
            Path(server.tls_ca_path).read_text(),
            admin_pem,
            state,
            Path(server.token_anchor_path).read_text(),
        )
    finally:
        server.stop()


@pytest.fixture
def trustee_conn(trustee, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection())
    return trustee
