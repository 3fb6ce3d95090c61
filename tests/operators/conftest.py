"""A real Trustee stand-in on loopback TLS (in a thread) and the `trustee_default` connection
pointing at it, given to Airflow the documented way: an ``AIRFLOW_CONN_*`` JSON variable.

The stand-in knows two admin credentials, as every Trustee the project sets up
(coco_ai.kbs.admin_acl): the data owner's (every endpoint; `Trustee.admin()`) and Airflow's
(run grants only), which is what the connection holds unless a test asks for the other."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.kbs.versions import TRUSTEE_VERSIONS


@dataclass
class Trustee:
    url: str
    ca_pem: str  # the stand-in's TLS CA
    admin_pem: str  # the data owner's Ed25519 key
    airflow_pem: str  # Airflow's persona key (Trustee v0.20.0; later versions get a token)
    state_dir: Path
    version: str  # the Trustee version the stand-in emulates

    def admin(self):
        from coco_ai.kbs.admin_auth import admin_auth_for
        from coco_ai.kbs.client import KbsAdminClient

        return KbsAdminClient(
            self.url,
            auth=admin_auth_for(self.version, self.admin_pem.encode()),
            ca_cert=self.ca_pem,
            trustee_version=self.version,
        )

    def resource(self, path: str) -> bytes | None:
        from coco_ai.trustee_dev.state import StateDir

        record = StateDir(self.state_dir).get_resource(path)
        return record.data if record else None

    def connection(self, *, credential: str = "airflow", **overrides) -> str:
        """The `trustee` connection as an operator of this Trustee version configures it: with
        Airflow's own credential, or (``credential="data-owner"``) the data owner's."""
        from coco_ai.kbs import versions
        from coco_ai.kbs.admin_acl import mint_airflow_token
        from coco_ai.kbs.admin_auth import mint_admin_token

        v020 = versions.self_signed_admin_auth(self.version)
        if credential == "data-owner":
            secret = self.admin_pem if v020 else mint_admin_token(self.admin_pem)
        else:
            secret = self.airflow_pem if v020 else mint_airflow_token(self.admin_pem)
        auth = {
            "admin_auth": "self-signed" if v020 else "bearer",
            "admin_secret": secret,
            "credential": credential,
        }
        extra = {
            "kbs_url": self.url,
            "ca_cert": self.ca_pem,
            **auth,
            "trustee_version": self.version,
            **overrides,
        }
        return json.dumps({"conn_type": "trustee", "extra": extra})


def _key_pair() -> tuple[str, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@contextlib.contextmanager
def running_trustee(version: str, tmp_path_factory, **standin_kwargs) -> Iterator[Trustee]:
    """The stand-in as Trustee ``version``, on loopback TLS, with both admin credentials
    (``standin_kwargs`` go to the stand-in, e.g. ``approved_images``)."""
    from coco_ai.kbs import versions
    from coco_ai.kbs.admin_acl import admin_config_toml
    from coco_ai.trustee_dev import serve_in_thread
    from coco_ai.trustee_dev.admin import AdminConfig

    keys_dir = tmp_path_factory.mktemp("admin-keys")
    (admin_pem, owner_public), (airflow_pem, airflow_public) = _key_pair(), _key_pair()
    (keys_dir / "owner-public.pem").write_bytes(owner_public)
    (keys_dir / "airflow-public.pem").write_bytes(airflow_public)
    v020 = versions.self_signed_admin_auth(version)
    admin = AdminConfig.from_toml(
        admin_config_toml(
            version,
            str(keys_dir / "owner-public.pem"),
            str(keys_dir / "airflow-public.pem") if v020 else None,
        ),
        version,
    )
    state = tmp_path_factory.mktemp("trustee")
    server = serve_in_thread(
        state, admin, policy_set="dev", trustee_version=version, **standin_kwargs
    )
    try:
        yield Trustee(
            server.url,
            Path(server.tls_ca_path).read_text(),
            admin_pem,
            airflow_pem,
            state,
            version,
        )
    finally:
        server.stop()


@pytest.fixture(scope="module", params=TRUSTEE_VERSIONS)
def trustee(request, tmp_path_factory):
    """The stand-in as each Trustee version we claim (and main): every operator test runs
    against each."""
    with running_trustee(request.param, tmp_path_factory) as running:
        yield running


@pytest.fixture
def trustee_conn(trustee, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection())
    return trustee
