"""The checkpoint chain against the real stand-ins over HTTP: Trustee stand-in (TLS, dev policy,
per-run key) → guest-components emulator → GuestClient (key from CDH, token + TEE key from
/aa/token) → encrypt, sign, upload to staging, copy to durable with verification, verify and
decrypt. Only the workload's and Airflow's roles are played by the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.crypto.checkpoint import decrypt_checkpoint, encrypt_checkpoint
from coco_ai.crypto.errors import AttestationError, ReplayError
from coco_ai.crypto.manifest import sign_manifest
from coco_ai.crypto.transfer import copy_checkpoint, upload_checkpoint, verify_checkpoint
from coco_ai.crypto.verify import VerificationPolicy
from coco_ai.guest.client import GuestClient
from coco_ai.guest.emulator import GuestComponentsEmulator, serve_in_thread
from coco_ai.guest.initdata import CHECKPOINT_KEY_KEY, RUN_ID_KEY, build_initdata
from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.trustee_dev.server import serve_in_thread as serve_trustee

pytestmark = pytest.mark.timeout(120)

RUN = "run-e2e-1"


@pytest.fixture(scope="module")
def trustee(tmp_path_factory) -> Iterator:
    admin_key = ed25519.Ed25519PrivateKey.generate()
    public_pem = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = serve_trustee(
        tmp_path_factory.mktemp("trustee"),
        public_pem,
        policy_set="dev",
        extensions={"run-key-bind", "multi-gpu-sampledevice"},
    )
    server.admin_auth = SelfSignedAdminAuth(  # type: ignore[attr-defined]
        admin_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run_guest(trustee) -> Iterator[tuple[GuestClient, str, bytes]]:
    """A two-GPU pod of run RUN whose per-run checkpoint key was provisioned in Trustee."""
    ca = Path(trustee.tls_ca_path).read_bytes()
    with KbsAdminClient(trustee.url, auth=trustee.admin_auth, ca_cert=ca) as admin:
        path = admin.provision_run_key(
            f"coco-ai-run/{RUN}/checkpoint-key", {"initdata_key": RUN_ID_KEY, "value": RUN}
        )
    key_uri = f"kbs:///{path}"
    initdata = build_initdata(trustee.url, ca, {RUN_ID_KEY: RUN, CHECKPOINT_KEY_KEY: key_uri})
    server = serve_in_thread(GuestComponentsEmulator(initdata, gpus=2))
    client = GuestClient(server.url)
    yield client, key_uri, Path(trustee.token_anchor_path).read_bytes()
    client.close()
    server.stop()


def test_attested_checkpoint_chain(run_guest, plain_dir, tmp_path):
    guest, key_uri, anchor = run_guest
    # --- inside the TEE ---
    kek = guest.get_resource(key_uri)
    local = tmp_path / "local"
    manifest = encrypt_checkpoint(
        plain_dir,
        local,
        kek=kek,
        key_uri=key_uri,
        run_id=RUN,
        meta={"metrics": {"eval_loss": 0.9}, "dataset_digest": "sha256:" + "d" * 64},
    )
    token, tee_pem = guest.get_token()
    sign_manifest(manifest, tee_pem, token, dst_dir=str(local))
    upload_checkpoint(local, tmp_path / "staging")
    # --- Airflow: no key, only the anchor and the run id ---
    policy = VerificationPolicy.for_run(RUN, min_gpus=2)
    copy_checkpoint(
        tmp_path / "staging", tmp_path / "durable", trust_anchor_pem=anchor, policy=policy
    )
    verified = verify_checkpoint(tmp_path / "durable", trust_anchor_pem=anchor, policy=policy)
    assert verified.manifest == manifest
    assert verified.claims.init_data_claims()[RUN_ID_KEY] == RUN
    assert verified.claims.gpu_submods() == ["gpu0", "gpu1"]
    with pytest.raises(ReplayError):
        verify_checkpoint(
            tmp_path / "durable",
            trust_anchor_pem=anchor,
            policy=VerificationPolicy.for_run("run-2"),
        )
    with pytest.raises(AttestationError, match="requires 3"):
        verify_checkpoint(
            tmp_path / "durable",
            trust_anchor_pem=anchor,
            policy=VerificationPolicy.for_run(RUN, min_gpus=3),
        )
    # --- back in a TEE of the run (or the data owner): decrypt ---
    decrypt_checkpoint(tmp_path / "durable", tmp_path / "out", kek=kek)
    for p in plain_dir.rglob("*"):
        if p.is_file():
            assert (tmp_path / "out" / p.relative_to(plain_dir)).read_bytes() == p.read_bytes()
