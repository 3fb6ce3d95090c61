"""A real NVFlare federation on loopback: the server (aggregator) and three clients
(participants) as separate processes in NVFlare's secure mode, each with the mTLS credentials
Trustee released to its attested guest and the Trustee CC authorizer + identity-bound CC manager
checking every peer at registration and at each cross-site validation."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from coco_ai.federated.authorizer import NAMESPACE
from coco_ai.federated.credentials import CredentialBundle, issue_federation, provision, revoke
from coco_ai.federated.data import split_by_topic, topic_of
from coco_ai.federated.identity import AGGREGATOR
from coco_ai.federated.local import (
    POC_SERVER_NAME,
    prepare_kits,
    run_job,
    start_site,
    stop_site,
)
from coco_ai.federated.lora import GLOBAL_ADAPTER_FILE
from coco_ai.federated.startup_kit import install_confidential_kit
from coco_ai.workloads.dataset import corpus_text, generate_examples, to_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FEDERATION_ID = "fed-poc"
PARTICIPANTS = ("dept-a", "dept-b", "dept-c")
SITES = (POC_SERVER_NAME, *PARTICIPANTS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ADMIN = "admin@nvidia.com"  # the POC admin kit's name


@pytest.fixture(scope="module")
def federation(admin):
    issued = issue_federation(FEDERATION_ID, POC_SERVER_NAME, PARTICIPANTS, admin_name=ADMIN)
    provision(admin, issued)
    yield issued
    revoke(admin, [b.identity for b in issued.bundles])


class Federation:
    """Kits installed from Trustee-released bundles; processes started on demand."""

    def __init__(self, root: Path, trustee, party_factory, federation) -> None:
        self.root = root
        self.prod = prepare_kits(root / "poc", PARTICIPANTS, port=free_port())
        self.trustee = trustee
        self.party_factory = party_factory
        self.bundles = {b.identity.participant_id: b for b in federation.bundles}
        self.processes: list = []
        self.admin_kit = self.prod / ADMIN
        federation.admin.write_startup_files(self.admin_kit / "startup")

    def install(
        self, site: str, *, attested_as: str | None = None, extra_allowed_classes=()
    ) -> None:
        """Install `site`'s kit with the bundle its guest obtains from Trustee; with
        `attested_as`, the CC components use the guest of that other identity instead."""
        bundle = self.bundles[site]
        identity = bundle.identity
        guest = self.party_factory(site, role=identity.role, federation=FEDERATION_ID)
        released = guest.client.get_resource(identity.credential_path().uri())
        assert CredentialBundle.from_bytes(released, identity) == bundle
        cc_guest = guest
        if attested_as is not None:
            role = AGGREGATOR if attested_as == POC_SERVER_NAME else "participant"
            cc_guest = self.party_factory(attested_as, role=role, federation=FEDERATION_ID)
        install_confidential_kit(
            self.prod / site,
            CredentialBundle.from_bytes(released, identity),
            guest_api_url=cc_guest.url,
            trust_anchor_path=str(self.trustee.token_anchor_path),
            token_signer_path=str(self.trustee.token_signer_path),
            cc_enabled_sites=SITES,
            allow_development_evidence=True,
            verify_frequency_s=20,
            extra_allowed_classes=extra_allowed_classes,
        )

    def start(self, site: str) -> None:
        role = AGGREGATOR if site == POC_SERVER_NAME else "participant"
        self.processes.append(start_site(self.prod / site, site, role, self.log(site)))

    def log(self, site: str) -> Path:
        return self.root / f"{site}.log"

    def text(self, site: str) -> str:
        path = self.log(site)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if any(p.poll() is not None for p in self.processes[:1]):
                break  # the server is gone
            time.sleep(0.5)
        logs = "\n".join(f"--- {s}\n{self.text(s)[-3000:]}" for s in SITES)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        for process in self.processes:
            stop_site(process)


@pytest.fixture()
def poc(tmp_path, trustee, party_factory, federation):
    fed = Federation(tmp_path, trustee, party_factory, federation)
    yield fed
    fed.stop()


def test_attested_parties_register_and_pass_cross_site_validation(poc) -> None:
    started = time.monotonic()
    for site in SITES:
        poc.install(site)
        poc.start(site)
    poc.wait_for(
        "every participant registered",
        lambda: all(f"client {p} registered" in poc.text(POC_SERVER_NAME) for p in PARTICIPANTS),
    )
    poc.wait_for(
        "a passed cross-site validation at every site",
        lambda: all("Cross-site validation passed" in poc.text(s) for s in SITES),
    )
    elapsed = time.monotonic() - started
    server = poc.text(POC_SERVER_NAME)
    for participant in PARTICIPANTS:
        # The aggregator verified each participant's token under its own site name, and each
        # participant verified the aggregator's at registration (mutual).
        assert f"CC - verified ['{participant}.{NAMESPACE}']; refused []" in server
        assert f"CC - verified ['server.{NAMESPACE}']; refused []" in poc.text(participant)
    assert "refused [" not in server.replace("refused []", "")
    print(f"federation up and cross-validated in {elapsed:.1f} s")


def test_attested_tee_of_another_participant_is_refused_at_registration(poc) -> None:
    """dept-b's TLS credentials in a process whose attestation names dept-a: NVFlare's mutual
    TLS accepts the certificate, the identity-bound CC manager refuses the registration, and
    the attested participants carry on without it."""
    poc.install(POC_SERVER_NAME)
    poc.install("dept-a")
    poc.install("dept-b", attested_as="dept-a")
    for site in (POC_SERVER_NAME, "dept-a", "dept-b"):
        poc.start(site)
    poc.wait_for(
        "dept-a registered and dept-b refused",
        lambda: (
            "client dept-a registered" in poc.text(POC_SERVER_NAME)
            and "CC token presented by site 'dept-b' attests participant dept-a"
            in poc.text(POC_SERVER_NAME)
        ),
    )
    poc.wait_for(
        "a passed cross-site validation at the server",
        lambda: "Cross-site validation passed" in poc.text(POC_SERVER_NAME),
    )
    server = poc.text(POC_SERVER_NAME)
    assert "client registration refused: Participant dept-b" in server
    assert "client dept-b registered" not in server
    assert "Shutting down site server" not in server
    assert poc.processes[0].poll() is None  # the aggregator still serves the others


LORA_TRAINER = "coco_ai.federated.lora.LoraTrainer"
LORA_PERSISTOR = "coco_ai.federated.lora.LoraAdapterPersistor"
UPDATE_CHECK = "coco_ai.federated.lora.AdapterUpdateCheck"


@pytest.fixture(scope="module")
def northwind(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The tiny model, and the generated data split by topic across the participants."""
    import torch

    from coco_ai.workloads.models import build_tiny_model

    torch.set_num_threads(1)
    examples = generate_examples(120, seed=7)
    root = tmp_path_factory.mktemp("northwind")
    model = build_tiny_model(root / "tiny-1m", "1m", corpus_text(examples))
    split = split_by_topic(examples, PARTICIPANTS)
    data = root / "data"
    data.mkdir()
    for participant, records in split.items():
        (data / f"{participant}.jsonl").write_bytes(to_jsonl(records))
    return model, data, split


def write_lora_fedavg_job(
    job_dir: Path, model: Path, data: Path, output: Path, rounds: int
) -> None:
    """FedAvg (scatter and gather, weighted by local steps) over the LoRA adapter; the job's
    classes are installed code, so the job brings none (not BYOC)."""
    config = job_dir / "app" / "config"
    config.mkdir(parents=True)
    meta = {"name": "lora-fedavg", "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}}
    (job_dir / "meta.json").write_text(json.dumps({**meta, "min_clients": len(PARTICIPANTS)}))
    server = {
        "format_version": 2,
        "task_result_filters": [
            {
                "tasks": ["train"],
                "filters": [{"path": UPDATE_CHECK, "args": {"model_dir": str(model)}}],
            }
        ],
        "workflows": [
            {
                "id": "scatter_and_gather",
                "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
                "args": {
                    "min_clients": len(PARTICIPANTS),
                    "num_rounds": rounds,
                    "aggregator_id": "aggregator",
                    "persistor_id": "persistor",
                    "shareable_generator_id": "shareable_generator",
                },
            }
        ],
        "components": [
            {
                "id": "persistor",
                "path": LORA_PERSISTOR,
                "args": {"model_dir": str(model), "output_dir": str(output)},
            },
            {
                "id": "shareable_generator",
                "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator."
                "FullModelShareableGenerator",
            },
            {
                "id": "aggregator",
                "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
                "InTimeAccumulateWeightedAggregator",
                "args": {"expected_data_kind": "WEIGHTS"},
            },
        ],
    }
    client = {
        "format_version": 2,
        "executors": [
            {
                "tasks": ["train"],
                "executor": {
                    "path": LORA_TRAINER,
                    "args": {"model_dir": str(model), "data_dir": str(data), "local_steps": 2},
                },
            }
        ],
    }
    (config / "config_fed_server.json").write_text(json.dumps(server))
    (config / "config_fed_client.json").write_text(json.dumps(client))


def test_lora_fedavg_job_runs_over_attested_parties(poc, northwind, tmp_path) -> None:
    """The data owner's admin credential (issued by the federation CA) submits a job; it runs
    two FedAvg rounds over the LoRA adapter of the tiny model, each participant training on its
    own topics only, and the aggregator keeps the averaged adapter."""
    model, data, split = northwind
    assert all(split.values()) and not (
        {topic_of(e) for e in split["dept-a"]} & {topic_of(e) for e in split["dept-b"]}
    )
    for site in SITES:
        poc.install(site, extra_allowed_classes=[LORA_TRAINER, LORA_PERSISTOR, UPDATE_CHECK])
        poc.start(site)
    poc.wait_for(
        "every participant registered",
        lambda: all(f"client {p} registered" in poc.text(POC_SERVER_NAME) for p in PARTICIPANTS),
    )
    job = tmp_path / "job"
    output = tmp_path / "aggregator-output"
    write_lora_fedavg_job(job, model, data, output, rounds=2)
    started = time.monotonic()
    meta = run_job(poc.admin_kit, ADMIN, job, timeout_s=150)
    elapsed = time.monotonic() - started
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert sorted(meta["job_deploy_detail"]) == sorted(f"{s}: OK" for s in SITES)
    with np.load(output / GLOBAL_ADAPTER_FILE) as final:
        weights = {k: final[k] for k in final.files}
    assert weights and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in weights)
    assert "refused" not in poc.text(POC_SERVER_NAME).replace("refused []", "")
    # LoRA starts with B = 0; after two averaged rounds of training it has moved.
    assert any(np.abs(v).max() > 0 for k, v in weights.items() if "lora_B" in k)
    assert all(np.isfinite(v).all() for v in weights.values())
    print(f"2 LoRA FedAvg rounds over 3 attested participants in {elapsed:.1f} s")
