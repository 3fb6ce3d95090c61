"""The fine-tune workload's surroundings on a host without a TEE (a fixture of the workload's
end-to-end tests and its benchmark; it lives here, not beside the workload, because it starts
the Trustee stand-in, which never belongs in a TEE image): the embedded Trustee stand-in (TLS on
loopback) and the guest-components emulator (sample CPU + sampledevice GPU evidence), with a
data-set key and the run-key root stored and the run's grant written for its initdata.

Used by the workload's end-to-end tests and its benchmark; the workload itself only ever sees
``guest_url``. Development only: the stand-in's dev policy accepts sample evidence.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.devstack.stack import local_image_reference
from coco_ai.digest import Digest
from coco_ai.guest.initdata import Initdata
from coco_ai.kbs.resource_path import parse_resource_path
from coco_ai.run_keys import DEFAULT_ROOT, Grant, checkpoint_key_path, derive_run_key, grant_path
from coco_ai.runs import run_claims
from coco_ai.workloads.dataset import DATASET_AAD
from coco_ai.workloads.kinds import FINETUNE, WorkloadKind


@dataclass
class LocalStack:
    run_id: str
    trustee_url: str
    guest_url: str
    trust_anchor_pem: bytes = field(
        repr=False
    )  # the stand-in's CA: verifies its TLS and its EAR tokens
    token_signer_pem: bytes = field(
        repr=False
    )  # the stand-in's EAR signer (an owner policy pins it)
    initdata: Initdata = field(repr=False)  # the run's (what promotion checks the token against)
    dataset_key_uri: str
    checkpoint_key_uri: str
    run_key_root_uri: str
    initdata_digest: Digest
    dataset_key: bytes = field(repr=False)  # the data owner's key (the owner's side, not the TEE)
    run_key_root: bytes = field(repr=False)  # the data owner's copy of the run-key root
    admin: Any = field(repr=False)  # KbsAdminClient
    admin_private_pem: bytes = field(repr=False)  # the data owner's Ed25519 admin key (for CLIs)
    trustee_version: str = ""  # the version the stand-in emulates (its admin auth style)
    _servers: list[Any] = field(repr=False, default_factory=list)

    @property
    def run_key(self) -> bytes:
        """The run's checkpoint key as the data owner derives it (the TEE derives the same)."""
        return derive_run_key(self.run_key_root, self.run_id)

    def grant(self, content: bytes | None = None) -> None:
        """Write the run's grant, as key release does (``content`` replaces it, for tests)."""
        default = Grant(self.run_id, self.initdata_digest).to_bytes()
        self.admin.set_resource(grant_path(self.run_id), default if content is None else content)

    def encrypt_dataset(self, plaintext: bytes, *, kek: bytes | None = None) -> bytes:
        """What ``coco-ai dataset encrypt`` does for the data owner (``kek`` overrides the key)."""
        from coco_ai.crypto import encrypt_blob

        return encrypt_blob(
            plaintext,
            kek=self.dataset_key if kek is None else kek,
            key_uri=self.dataset_key_uri,
            aad_context=DATASET_AAD,
        )

    def encrypt_repository(self, plaintext: bytes) -> bytes:
        """What ``coco-ai rag encrypt`` does for the data owner: a RAG document repository
        under the stack's data key (the key of the run's keyed input)."""
        from coco_ai.crypto import encrypt_blob
        from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

        return encrypt_blob(
            plaintext,
            kek=self.dataset_key,
            key_uri=self.dataset_key_uri,
            aad_context=REPOSITORY_AAD,
        )

    def stop(self) -> None:
        self.admin.close()  # an open keep-alive connection would hold up the server's shutdown
        for server in reversed(self._servers):
            server.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_stack(
    state_dir: str | Path,
    run_id: str,
    *,
    dataset_key_path: str = "default/dataset/northwind",
    gpus: int = 1,
    kind: WorkloadKind = FINETUNE,
    token_lifetime_s: int | None = None,
    token_refresh_margin_s: float | None = None,
) -> LocalStack:
    """The stack for a run of ``kind``; ``dataset_key_path`` is the key of its keyed input.
    ``token_lifetime_s`` / ``token_refresh_margin_s``: the stand-in's EAR token lifetime and how
    long before expiry the guest re-attests (defaults: theirs)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from coco_ai.guest import emulator as guest_emulator
    from coco_ai.guest.initdata import build_initdata
    from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.trustee_dev import serve_in_thread

    admin_key = ed25519.Ed25519PrivateKey.generate()
    admin_pem = admin_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    admin_pub = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    servers: list[Any] = []
    image = local_image_reference()
    try:
        # The data owner approves the workload's code; the initdata binds the guest to it.
        lifetime = {} if token_lifetime_s is None else {"token_lifetime_s": token_lifetime_s}
        trustee = serve_in_thread(Path(state_dir), admin_pub, approved_images=[image], **lifetime)
        servers.append(trustee)
        tls_ca, anchor = trustee.tls_ca_path.read_bytes(), trustee.token_anchor_path.read_bytes()
        admin = KbsAdminClient(trustee.url, auth=SelfSignedAdminAuth(admin_pem), ca_cert=tls_ca)
        dataset_key = secrets.token_bytes(32)
        admin.set_resource(dataset_key_path, dataset_key)
        dataset_key_ref = parse_resource_path(dataset_key_path)
        run_key_root = secrets.token_bytes(32)
        admin.set_resource(DEFAULT_ROOT, run_key_root)
        claims = run_claims(
            workload=kind.name,
            run_id=run_id,
            image=image,
            run_key_root=DEFAULT_ROOT,
            input_keys={next(i.name for i in kind.inputs if i.keyed): dataset_key_ref},
        )
        initdata = build_initdata(trustee.url, tls_ca, claims, image=image, module=kind.module)
        initdata_digest = Digest(initdata.algorithm, initdata.digest().hex())
        admin.set_resource(grant_path(run_id), Grant(run_id, initdata_digest).to_bytes())
        margin = (
            {}
            if token_refresh_margin_s is None
            else {"token_refresh_margin_s": token_refresh_margin_s}
        )
        emulator = guest_emulator.GuestComponentsEmulator(initdata, gpus=gpus, **margin)
        guest = guest_emulator.serve_in_thread(emulator)
        servers.append(guest)
    except BaseException:
        for server in reversed(servers):
            server.stop()
        raise
    return LocalStack(
        run_id=run_id,
        trustee_url=trustee.url,
        guest_url=guest.url,
        trust_anchor_pem=anchor,
        token_signer_pem=trustee.token_signer_path.read_bytes(),
        initdata=initdata,
        dataset_key_uri=dataset_key_ref.uri(),
        checkpoint_key_uri=checkpoint_key_path(run_id).uri(),
        run_key_root_uri=DEFAULT_ROOT.uri(),
        initdata_digest=initdata_digest,
        dataset_key=dataset_key,
        run_key_root=run_key_root,
        admin=admin,
        admin_private_pem=admin_pem,
        trustee_version=trustee.standin.trustee_version,
        _servers=servers,
    )
