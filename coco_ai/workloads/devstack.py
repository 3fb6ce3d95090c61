"""The workload's surroundings on a host without a TEE: the embedded Trustee stand-in (TLS on
loopback) and the guest-components emulator (sample CPU + sampledevice GPU evidence), with a
data-set key stored and a per-run checkpoint key provisioned and pinned in the run's initdata.

Used by the workload's end-to-end tests and its benchmark; the workload itself only ever sees
``guest_url``. Development only: the stand-in's dev policy accepts sample evidence.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.workloads.finetune.workload import DATASET_AAD


@dataclass
class LocalStack:
    run_id: str
    trustee_url: str
    guest_url: str
    trust_anchor_pem: bytes = field(
        repr=False
    )  # the stand-in's CA: verifies its TLS and its EAR tokens
    dataset_key_uri: str
    checkpoint_key_uri: str
    dataset_key: bytes = field(repr=False)  # the data owner's key (the owner's side, not the TEE)
    admin: Any = field(repr=False)  # KbsAdminClient
    _servers: list[Any] = field(repr=False, default_factory=list)

    def encrypt_dataset(self, plaintext: bytes, *, kek: bytes | None = None) -> bytes:
        """What ``coco-ai dataset encrypt`` does for the data owner (``kek`` overrides the key)."""
        from coco_ai.crypto import encrypt_blob

        return encrypt_blob(
            plaintext,
            kek=self.dataset_key if kek is None else kek,
            key_uri=self.dataset_key_uri,
            aad_context=DATASET_AAD,
        )

    def provision_other_run_key(self, other_run_id: str) -> str:
        """A per-run key bound to another run: this run's TEE must be refused it."""
        path = self.admin.provision_run_key(
            None, {"initdata_key": "io.coco-ai.run-id", "value": other_run_id}
        )
        return f"kbs:///{path}"

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
) -> LocalStack:
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
    try:
        trustee = serve_in_thread(Path(state_dir), admin_pub, extensions={"run-key-bind"})
        servers.append(trustee)
        tls_ca, anchor = trustee.tls_ca_path.read_bytes(), trustee.token_anchor_path.read_bytes()
        admin = KbsAdminClient(trustee.url, auth=SelfSignedAdminAuth(admin_pem), ca_cert=tls_ca)
        dataset_key = secrets.token_bytes(32)
        admin.set_resource(dataset_key_path, dataset_key)
        checkpoint_path = admin.provision_run_key(
            None, {"initdata_key": "io.coco-ai.run-id", "value": run_id}
        )
        dataset_uri, checkpoint_uri = f"kbs:///{dataset_key_path}", f"kbs:///{checkpoint_path}"
        initdata = build_initdata(
            trustee.url,
            tls_ca,
            {
                "io.coco-ai.run-id": run_id,
                "io.coco-ai.checkpoint-key": checkpoint_uri,
                "io.coco-ai.dataset-key": dataset_uri,
            },
        )
        emulator = guest_emulator.GuestComponentsEmulator(initdata, gpus=gpus)
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
        dataset_key_uri=dataset_uri,
        checkpoint_key_uri=checkpoint_uri,
        dataset_key=dataset_key,
        admin=admin,
        _servers=servers,
    )
