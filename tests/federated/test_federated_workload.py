"""The federated workload end to end without Airflow: the aggregator and three participants as
four ``python -m coco_ai.workloads.federated`` processes, each beside its own guest-components
emulator (its own TEE key, evidence and initdata naming its party), against the Trustee stand-in
(TLS, real Rego) holding each data owner's data-set key, the run-key root, the run's grant and
the federation's credentials. The aggregator's staged output verifies without a key, and its
signed contribution record names exactly who contributed, with tokens that verify."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coco_ai.devstack.stack import local_image_reference
from coco_ai.digest import Digest
from coco_ai.federated.credentials import issue_federation, provision
from coco_ai.federated.identity import AGGREGATOR, PARTICIPANT, FederationIdentity
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.resource_path import ResourcePath
from coco_ai.run_keys import DEFAULT_ROOT, Grant, checkpoint_key_path, grant_path
from coco_ai.runs import run_claims
from coco_ai.workloads.dataset import DATASET_AAD, generate_examples, to_jsonl
from coco_ai.workloads.federated.data import split_by_topic
from coco_ai.workloads.kinds import FL_AGGREGATOR, FL_PARTICIPANT
from coco_ai.workloads.models import model_digest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

RUN_ID = "fl-pipeline-run-1"
FEDERATION = "northwind-2026"  # the data owner's federation (membership and credentials)
AGGREGATOR_ID = "aggregator"
PARTICIPANTS = ("dept-a", "dept-b", "dept-c")


@dataclass
class FederationStack:
    trustee: Any
    admin: Any
    anchor_path: Path
    signer_path: Path
    run_key_root: bytes = field(repr=False)
    guests: dict[str, Any] = field(default_factory=dict)  # party -> running emulator
    dataset_keys: dict[str, ResourcePath] = field(default_factory=dict)
    dataset_key_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)
    servers: list[Any] = field(default_factory=list)

    def party(self, participant_id: str, *, gpus: int = 1) -> str:
        """Start the emulator of a party of the run (its initdata: the run's claims, its own
        data-set key and its federation identity); returns its URL."""
        from coco_ai.guest import emulator as guest_emulator

        role = AGGREGATOR if participant_id == AGGREGATOR_ID else PARTICIPANT
        kind = FL_AGGREGATOR if role == AGGREGATOR else FL_PARTICIPANT
        keys = {} if role == AGGREGATOR else {"dataset": self.dataset_keys[participant_id]}
        claims = run_claims(
            workload=kind.name,
            run_id=RUN_ID,
            image=local_image_reference(),
            run_key_root=DEFAULT_ROOT,
            input_keys=keys,
        )
        claims.update(FederationIdentity(FEDERATION, role, participant_id).claims())
        tls_ca = self.trustee.tls_ca_path.read_bytes()
        initdata = build_initdata(
            self.trustee.url, tls_ca, claims, image=local_image_reference(), module=kind.module
        )
        if role == AGGREGATOR:  # key release grants the run to the aggregator's initdata
            digest = Digest(initdata.algorithm, initdata.digest().hex())
            self.admin.set_resource(grant_path(RUN_ID), Grant(RUN_ID, digest).to_bytes())
        guest = guest_emulator.serve_in_thread(
            guest_emulator.GuestComponentsEmulator(initdata, gpus=gpus)
        )
        self.servers.append(guest)
        self.guests[participant_id] = guest
        return guest.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> FederationStack:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.trustee_dev import serve_in_thread

    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    trustee = serve_in_thread(
        tmp_path_factory.mktemp("trustee"), public, approved_images=[local_image_reference()]
    )
    admin = KbsAdminClient(
        trustee.url, auth=SelfSignedAdminAuth(private), ca_cert=trustee.tls_ca_path.read_bytes()
    )
    root = secrets.token_bytes(32)
    admin.set_resource(DEFAULT_ROOT, root)
    fed = FederationStack(
        trustee, admin, trustee.token_anchor_path, trustee.token_signer_path, root
    )
    fed.servers.append(trustee)
    # each data owner's own key for its own data set
    for participant in PARTICIPANTS:
        path = ResourcePath("default", "fl-dataset", participant)
        fed.dataset_key_bytes[participant] = secrets.token_bytes(32)
        admin.set_resource(path, fed.dataset_key_bytes[participant])
        fed.dataset_keys[participant] = path
    provision(
        admin,
        issue_federation(
            FEDERATION, AGGREGATOR_ID, PARTICIPANTS, aggregator_hosts=("localhost", "127.0.0.1")
        ),
    )
    yield fed
    admin.close()
    for server in reversed(fed.servers):
        server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, stack) -> dict[str, Any]:
    """The tiny model, and each participant's topics encrypted under its owner's key."""
    import torch

    from coco_ai.crypto import encrypt_blob
    from coco_ai.workloads.dataset import corpus_text
    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(1)
    examples = generate_examples(120, seed=7)
    root = tmp_path_factory.mktemp("fl-inputs")
    model = build_tiny_model(root / "tiny-1m", "1m", corpus_text(examples))
    datasets = {}
    for participant, records in split_by_topic(examples, PARTICIPANTS).items():
        key_path = stack.dataset_keys[participant]
        blob = encrypt_blob(
            to_jsonl(records),
            kek=stack.dataset_key_bytes[participant],
            key_uri=key_path.uri(),
            aad_context=DATASET_AAD,
        )
        (root / f"{participant}.jsonl.enc").write_bytes(blob)
        datasets[participant] = root / f"{participant}.jsonl.enc"
    return {"model": model, "datasets": datasets}


def party_config(tmp_path: Path, stack: FederationStack, inputs, participant_id: str, **over):
    aggregator = participant_id == AGGREGATOR_ID
    cfg: dict[str, Any] = {
        "run_id": RUN_ID,
        "staging_uri": f"file://{tmp_path}/staging/{RUN_ID}",
        "checkpoint_key_uri": checkpoint_key_path(RUN_ID).uri(),
        "run_key_root_uri": DEFAULT_ROOT.uri(),
        "guest_api_url": stack.guests[participant_id].url,
        "store_attempts": 2,
        "store_backoff_s": 0.05,
        "party": {
            "federation": FEDERATION,
            "role": AGGREGATOR if aggregator else PARTICIPANT,
            "participant_id": participant_id,
            "aggregator_id": AGGREGATOR_ID,
            "participants": list(PARTICIPANTS),
            "server_host": "localhost",
            "server_port": over.pop("port"),
        },
        "trust": {
            "anchor_pem": stack.anchor_path.read_text(),
            "signer_pem": stack.signer_path.read_text(),
        },
        "base_model": {"path": str(inputs["model"]), "digest": model_digest(inputs["model"])},
        "min_participants": over.pop("min_participants", 3),
        "training": {"local_steps": 2, "batch_size": 8},
        "federation": {
            "rounds": 2,
            "min_gpus": 1,
            "allow_development_evidence": True,
            "verify_frequency_s": 20,
            "join_timeout_s": 120,
            "job_timeout_s": 240,
        },
    }
    if not aggregator:
        cfg["dataset"] = {
            "uri": f"file://{inputs['datasets'][participant_id]}",
            "key_uri": stack.dataset_keys[participant_id].uri(),
        }
    cfg.update(over)
    return cfg


def start_party(tmp_path: Path, name: str, cfg: dict) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COCO_AI_FEDERATED_DEBUG": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "coco_ai.workloads.federated", "--config", str(path)],
        stdout=(tmp_path / f"{name}.out").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_federation_run_stages_a_signed_global_adapter_with_its_contributions(
    tmp_path, stack, inputs
) -> None:
    from coco_ai.crypto import decrypt_checkpoint, verify_checkpoint
    from coco_ai.crypto.manifest import CONFIG_FILE
    from coco_ai.crypto.verify import VerificationPolicy
    from coco_ai.kbs.ear import verify_ear_token
    from coco_ai.run_keys import derive_run_key
    from coco_ai.storage import open_store

    port = free_port()
    for party in (AGGREGATOR_ID, *PARTICIPANTS):
        stack.party(party)
    procs = {
        party: start_party(tmp_path, party, party_config(tmp_path, stack, inputs, party, port=port))
        for party in (AGGREGATOR_ID, *PARTICIPANTS)
    }
    try:
        codes = {party: proc.wait(timeout=360) for party, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    outputs = {p: (tmp_path / f"{p}.out").read_text(errors="replace") for p in procs}
    assert codes == dict.fromkeys(procs, 0), "\n".join(
        f"--- {p} ({codes[p]})\n{outputs[p][-4000:]}" for p in procs
    )
    # progress per round reached each party's output
    assert "Round 1 started" in outputs[AGGREGATOR_ID]
    for participant in PARTICIPANTS:
        assert "round 1: 2 steps" in outputs[participant]

    staging = f"file://{tmp_path}/staging/{RUN_ID}"
    verified = verify_checkpoint(
        staging,
        trust_anchor_pem=stack.anchor_path.read_bytes(),
        policy=VerificationPolicy.for_run(RUN_ID),
    )
    manifest = verified.manifest
    document = json.loads(open_store(staging).read_bytes(CONFIG_FILE))
    record = document["contributions"]
    assert [r["round"] for r in record["rounds"]] == [0, 1]
    for round_record in record["rounds"]:
        assert [a["site"] for a in round_record["accepted"]] == list(PARTICIPANTS)
        assert round_record["refused"] == []
    # each participant's data-set digest is its own encrypted data set's
    import hashlib

    for a in record["rounds"][0]["accepted"]:
        blob = inputs["datasets"][a["site"]].read_bytes()
        assert a["dataset_digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    # the tokens the aggregator's CC manager verified attest exactly each contributor
    for site, peer in record["participants"].items():
        claims = verify_ear_token(peer["ear_token"], stack.anchor_path.read_bytes())
        init = claims.init_data_claims()
        assert FederationIdentity.from_claims(init) == FederationIdentity(
            FEDERATION, PARTICIPANT, site
        )
    assert manifest.metrics["participants"] == 3
    assert manifest.metrics["min_round_participants"] == 3
    assert manifest.metrics["rounds"] == 2
    # the data owner (who holds the root) decrypts the global adapter
    out = tmp_path / "decrypted"
    decrypt_checkpoint(staging, out, kek=derive_run_key(stack.run_key_root, RUN_ID))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
