"""Fixtures for the federation tests: one Trustee stand-in (TLS, development policy set, real
Rego), its admin client, federation parties, each a guest-components emulator on loopback whose
initdata names the party's identity and, as the pipeline adds it, its run id (and binds the
approved code), and the harness of the real NVFlare federations on loopback (`poc`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.federated.credentials import CredentialBundle, issue_federation, provision, revoke
from coco_ai.federated.identity import AGGREGATOR, PARTICIPANT, FederationIdentity
from coco_ai.federated.local import POC_SERVER_NAME, prepare_kits, start_site, stop_site
from coco_ai.federated.startup_kit import install_confidential_kit
from coco_ai.guest.client import GuestClient
from coco_ai.guest.emulator import GuestComponentsEmulator, RunningServer, serve_in_thread
from coco_ai.guest.initdata import RUN_ID_KEY, build_initdata
from coco_ai.kbs.admin_auth import admin_auth_for
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.trustee_dev.server import RunningServer as TrusteeServer
from coco_ai.trustee_dev.server import serve_in_thread as serve_trustee
from coco_ai.workloads.dataset import corpus_text, generate_examples, to_jsonl
from coco_ai.workloads.federated.job import write_fedavg_job
from coco_ai.workloads.federated.quality import trainer_args
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

FEDERATION = "northwind-fed"
RUN_ID = "fl-run-1"


@pytest.fixture(scope="session")
def trustee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrusteeServer]:
    admin_key = ed25519.Ed25519PrivateKey.generate()
    public_pem = admin_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = serve_trustee(
        tmp_path_factory.mktemp("trustee-state"),
        public_pem,
        policy_set="dev",
        approved_images=[APPROVED_IMAGE],
    )
    server.admin_private_pem = admin_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trustee_ca(trustee: TrusteeServer) -> bytes:
    return Path(trustee.tls_ca_path).read_bytes()


@pytest.fixture(scope="session")
def admin(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[KbsAdminClient]:
    auth = admin_auth_for(trustee.standin.trustee_version, trustee.admin_private_pem)  # type: ignore[attr-defined]
    with KbsAdminClient(trustee.url, auth=auth, ca_cert=trustee_ca) as client:
        yield client


class Party:
    """One emulated federation party: its guest components on loopback and a client to them."""

    def __init__(self, identity: FederationIdentity | None, initdata, gpus: int) -> None:
        self.identity = identity
        self.emulator = GuestComponentsEmulator(initdata, gpus=gpus)
        self.server: RunningServer = serve_in_thread(self.emulator)
        self.url = self.server.url
        self.client = GuestClient(self.url)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture(scope="session")
def party_factory(trustee: TrusteeServer, trustee_ca: bytes) -> Iterator[Callable[..., Party]]:
    started: list[Party] = []
    cache: dict[tuple, Party] = {}

    def make(
        participant_id: str,
        *,
        role: str = "participant",
        federation: str = FEDERATION,
        run_id: str | None = RUN_ID,
        gpus: int = 1,
        claims: dict[str, str] | None = None,
    ) -> Party:
        key = (
            participant_id,
            role,
            federation,
            run_id,
            gpus,
            tuple(sorted((claims or {}).items())),
        )
        if key in cache:
            return cache[key]
        identity = FederationIdentity(federation, role, participant_id)
        if claims is None:
            claims = identity.claims()
            if run_id is not None:
                claims[RUN_ID_KEY] = run_id
        initdata = build_initdata(
            trustee.url,
            trustee_ca,
            claims,
            image=APPROVED_IMAGE,
            module=APPROVED_MODULE,
        )
        party = Party(identity, initdata, gpus)
        started.append(party)
        cache[key] = party
        return party

    yield make
    for party in started:
        party.close()


# -- real NVFlare federations on loopback ------------------------------------------------------

POC_FEDERATION = "fed-poc"
PARTICIPANTS = ("dept-a", "dept-b", "dept-c")
SITES = (POC_SERVER_NAME, *PARTICIPANTS)
ADMIN = "admin@nvidia.com"  # the POC admin kit's name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def poc_federation(admin):
    """The data owner's federation: CA, every party's bundle in Trustee, the admin credential."""
    issued = issue_federation(POC_FEDERATION, POC_SERVER_NAME, PARTICIPANTS, admin_name=ADMIN)
    provision(admin, issued)
    yield issued
    revoke(admin, [b.identity for b in issued.bundles])


class PocFederation:
    """Kits installed from Trustee-released bundles; site processes started on demand."""

    def __init__(self, root: Path, trustee, party_factory, federation) -> None:
        self.root = root
        self.prod = prepare_kits(root / "poc", PARTICIPANTS, port=free_port())
        self.trustee = trustee
        self.party_factory = party_factory
        self.bundles = {b.identity.participant_id: b for b in federation.bundles}
        self.processes: dict = {}
        self.admin_kit = self.prod / ADMIN
        self.record_dir = root / "aggregator-record"
        federation.admin.write_startup_files(self.admin_kit / "startup")

    def guest(self, site: str, **kwargs) -> Party:
        role = AGGREGATOR if site == POC_SERVER_NAME else PARTICIPANT
        return self.party_factory(site, role=role, federation=POC_FEDERATION, **kwargs)

    def install(
        self,
        site: str,
        *,
        attested_as: str | None = None,
        cc_guest_url: str | None = None,
        bundle: CredentialBundle | None = None,
        gpus: int = 1,
        verify_frequency_s: int = 20,
        extra_allowed_classes: Sequence[str] = (),
    ) -> Party:
        """Install `site`'s kit with the bundle its guest obtains from Trustee (or `bundle`, one
        it did not obtain); with `attested_as` the CC components use the guest of that other
        identity, with `cc_guest_url` that URL. Returns the site's own guest."""
        guest = self.guest(site, gpus=gpus)
        if bundle is None:
            identity = self.bundles[site].identity
            released = guest.client.get_resource(identity.credential_path().uri())
            bundle = CredentialBundle.from_bytes(released, identity)
            assert bundle == self.bundles[site]
        if cc_guest_url is None:
            cc_guest_url = (self.guest(attested_as) if attested_as else guest).url
        install_confidential_kit(
            self.prod / site,
            bundle,
            guest_api_url=cc_guest_url,
            trust_anchor_path=str(self.trustee.token_anchor_path),
            token_signer_path=str(self.trustee.token_signer_path),
            cc_enabled_sites=SITES,
            allow_development_evidence=True,
            verify_frequency_s=verify_frequency_s,
            extra_allowed_classes=extra_allowed_classes,
            record_dir=str(self.record_dir) if site == POC_SERVER_NAME else None,
        )
        return guest

    def start(self, site: str) -> None:
        role = AGGREGATOR if site == POC_SERVER_NAME else PARTICIPANT
        self.processes[site] = start_site(self.prod / site, site, role, self.log(site))

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
            server = self.processes.get(POC_SERVER_NAME)
            if server is not None and server.poll() is not None:
                break  # the server is gone
            time.sleep(0.5)
        logs = "\n".join(f"--- {s}\n{self.text(s)[-3000:]}" for s in SITES)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        for process in self.processes.values():
            stop_site(process)


@pytest.fixture()
def poc(tmp_path, trustee, party_factory, poc_federation) -> Iterator[PocFederation]:
    fed = PocFederation(tmp_path, trustee, party_factory, poc_federation)
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def northwind(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The tiny model, and the generated data split by topic across the participants."""
    import torch

    from coco_ai.workloads.federated.data import split_by_topic
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
    job_dir: Path,
    model: Path,
    data: Path,
    output: Path,
    rounds: int,
    *,
    min_clients: int = len(PARTICIPANTS),
    wait_time_after_min_received: int = 10,
) -> None:
    """The one FedAvg job (as the aggregator writes it) for the loopback federation."""
    write_fedavg_job(
        job_dir,
        name="lora-fedavg",
        model_dir=str(model),
        output_dir=str(output),
        min_clients=min_clients,
        rounds=rounds,
        trainer_args=trainer_args(model, data, local_steps=2),
        workflow_args={"wait_time_after_min_received": wait_time_after_min_received},
    )
