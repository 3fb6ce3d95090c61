"""The checkpoint chain against the real stand-ins over HTTP: Trustee stand-in (TLS, dev policy,
run grant + run-key root, coco_ai.run_keys) → guest-components emulator → GuestClient (grant and
root from CDH, token + TEE key from /aa/token) → run key derived in the TEE → encrypt, sign,
upload to staging, copy to durable with verification, verify and decrypt. Only the data owner's,
the workload's and Airflow's roles are played by the test."""

from __future__ import annotations

import secrets
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
from coco_ai.digest import Digest
from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.guest.emulator import GuestComponentsEmulator, RunningServer, serve_in_thread
from coco_ai.guest.initdata import (
    CHECKPOINT_KEY_KEY,
    RUN_GRANT_KEY,
    RUN_ID_KEY,
    RUN_KEY_ROOT_KEY,
    Initdata,
    build_initdata,
)
from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.ear import unverified_claims
from coco_ai.run_keys import (
    DEFAULT_ROOT,
    Grant,
    check_grant,
    checkpoint_key_path,
    derive_run_key,
    grant_path,
)
from coco_ai.trustee_dev.server import serve_in_thread as serve_trustee
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

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
        approved_images=[APPROVED_IMAGE],
        extensions={"multi-gpu-sampledevice"},
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


def _guest(trustee, run_id: str) -> tuple[GuestClient, RunningServer, Initdata]:
    """An emulated two-GPU pod of `run_id`, its initdata naming the run's grant and the root."""
    ca = Path(trustee.tls_ca_path).read_bytes()
    claims = {
        RUN_ID_KEY: run_id,
        RUN_GRANT_KEY: grant_path(run_id).uri(),
        RUN_KEY_ROOT_KEY: DEFAULT_ROOT.uri(),
        CHECKPOINT_KEY_KEY: checkpoint_key_path(run_id).uri(),
    }
    initdata = build_initdata(trustee.url, ca, claims, image=APPROVED_IMAGE, module=APPROVED_MODULE)
    server = serve_in_thread(GuestComponentsEmulator(initdata, gpus=2))
    return GuestClient(server.url), server, initdata


@pytest.fixture(scope="module")
def run_guest(trustee) -> Iterator[tuple[GuestClient, bytes, bytes]]:
    """A pod of run RUN, after the data owner stored the run-key root and key release the
    run's grant (coco_ai.run_keys). Yields the guest client, the root (the data owner's) and
    the token trust anchor."""
    ca = Path(trustee.tls_ca_path).read_bytes()
    root = secrets.token_bytes(32)
    client, server, initdata = _guest(trustee, RUN)
    grant = Grant(RUN, Digest(initdata.algorithm, initdata.digest().hex()))
    with KbsAdminClient(trustee.url, auth=trustee.admin_auth, ca_cert=ca) as admin:
        admin.set_resource(DEFAULT_ROOT, root)
        admin.set_resource(grant_path(RUN), grant.to_bytes())
    yield client, root, Path(trustee.token_anchor_path).read_bytes()
    client.close()
    server.stop()


def _run_key_in_tee(guest: GuestClient, run_id: str) -> bytes:
    """What the workload does (coco_ai.workloads.finetune): grant, own token, root, derive."""
    grant = Grant.from_bytes(guest.get_resource(grant_path(run_id).uri()))
    token, _ = guest.get_token()
    check_grant(grant, run_id=run_id, initdata_matches=unverified_claims(token).carries_init_data)
    return derive_run_key(guest.get_resource(DEFAULT_ROOT.uri()), run_id)


def test_another_runs_tee_gets_neither_the_grant_nor_a_key(trustee, run_guest):
    other, server, _ = _guest(trustee, "run-e2e-2")  # no grant was written for this run
    try:
        with pytest.raises(GuestError) as err:  # run RUN's grant: not named in its initdata
            other.get_resource(grant_path(RUN).uri())
        assert err.value.policy_denied, err.value.message
        with pytest.raises(GuestError):  # its own grant: absent, so no key is derived
            _run_key_in_tee(other, "run-e2e-2")
    finally:
        other.close()
        server.stop()


def test_attested_checkpoint_chain(run_guest, plain_dir, tmp_path):
    guest, root, anchor = run_guest
    key_uri = checkpoint_key_path(RUN).uri()  # the derived key's name, not a stored resource
    # --- inside the TEE ---
    kek = _run_key_in_tee(guest, RUN)
    assert len(kek) == 32
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
    # --- the data owner, who holds the root, derives the same key: decrypt ---
    decrypt_checkpoint(tmp_path / "durable", tmp_path / "out", kek=derive_run_key(root, RUN))
    for p in plain_dir.rglob("*"):
        if p.is_file():
            assert (tmp_path / "out" / p.relative_to(plain_dir)).read_bytes() == p.read_bytes()
