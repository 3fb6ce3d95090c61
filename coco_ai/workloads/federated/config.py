"""The federated fine-tune workload's one validated configuration (standard library only).

One config shape for both roles of a federation run: the aggregator (NVFlare server) and each
participant (NVFlare client), each in its own TEE. ``party`` says which party this TEE is; the
workload refuses to run unless its own attestation's init_data claims name the same party
(coco_ai.federated.identity). A participant has a ``dataset`` (its data owner's encrypted data
set and key); the aggregator has none. Errors name the dotted field, as for the fine-tune
(coco_ai.workloads.finetune.config, whose field checks this module shares).

The recipe the data owner approves by digest is the ``lora``, ``training`` and ``federation``
tables; ``min_participants`` (the run's quorum) is outside it, so that a run may raise it
without changing the approved recipe — promotion holds it to the owner's floor.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.runs import RunRefs
from coco_ai.workloads.finetune.config import _CHECKS as _FINETUNE_CHECKS
from coco_ai.workloads.finetune.config import (
    BaseModelSettings,
    ConfigError,
    DatasetSettings,
    LoraSettings,
    build_checked,
    float_in,
    int_in,
    jsonable,
    one_of,
    read_config_file,
    run_config,
    text,
)

CONFIG_ENV = "COCO_AI_FEDERATED_CONFIG"
ROLES = ("aggregator", "participant")
RECIPE_TABLES = ("lora", "training", "federation")
_PARTICIPANT_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
_FEDERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class PartySettings:
    """Who this TEE is in the federation, and where the aggregator listens."""

    federation: str  # the data owner's federation id (its credentials' KBS path segment)
    role: str  # aggregator | participant
    participant_id: str  # also the NVFlare site name and the certificate's CN
    aggregator_id: str
    participants: tuple[str, ...]  # every participant id of this run (who may join)
    server_host: str = "localhost"  # what participants dial (a name in the aggregator's cert)
    server_port: int = 8002


@dataclass(frozen=True)
class FederatedTrainingSettings:
    """One participant's local training per round (coco_ai.workloads.federated.job.LoraTrainer)."""

    local_steps: int = 4
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0


@dataclass(frozen=True)
class FederationSettings:
    rounds: int = 3
    max_update_norm: float = 1e3  # the aggregator refuses an update with a larger L2 norm
    min_gpus: int = 1  # GPUs every peer's attestation must show (0 on the CPU-only emulator)
    # Trustee's sample/sampledevice evidence among peers: the development federation only;
    # part of the approved recipe, so a production policy never approves a run that set it
    allow_development_evidence: bool = False
    verify_frequency_s: int = 60  # how often peers re-check each other's attestation
    join_timeout_s: int = 300  # how long the aggregator waits for the quorum to register
    job_timeout_s: int = 3600


@dataclass(frozen=True)
class TrustSettings:
    """The attestation trust anchor peers' EAR tokens must chain to, and the pinned token
    signer (public PEM certificates: the owner policy's). The party accepts them only if its
    own token, fresh from its attestation agent, verifies under them: an anchor that is not the
    real Trustee's is refused before any peer is judged by it."""

    anchor_pem: str
    signer_pem: str | None = None


@dataclass(frozen=True)
class FederatedConfig:
    run_id: str
    staging_uri: str
    checkpoint_key_uri: str
    run_key_root_uri: str
    party: PartySettings
    base_model: BaseModelSettings
    trust: TrustSettings
    min_participants: int = 2  # the run's quorum: fewer accepted updates in any round fail it
    dataset: DatasetSettings | None = None  # participants only
    guest_api_url: str = "http://127.0.0.1:8006"
    store_attempts: int = 5
    store_backoff_s: float = 1.0
    tee_memory_bytes: int | None = None
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(dropout=0.0))
    training: FederatedTrainingSettings = field(default_factory=FederatedTrainingSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)

    def to_dict(self) -> dict[str, Any]:
        doc = jsonable(dataclasses.asdict(self))
        if doc["dataset"] is None:
            del doc["dataset"]
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedConfig:
        config = build_checked(cls, data, "", checks=_CHECKS, nested=_NESTED)
        party = config.party
        if party.role == "participant":
            if config.dataset is None:
                raise ConfigError("dataset: a participant needs its data set")
            if party.participant_id not in party.participants:
                raise ConfigError(
                    f"party.participant_id: {party.participant_id!r} is not among "
                    "party.participants"
                )
        else:
            if config.dataset is not None:
                raise ConfigError("dataset: the aggregator takes no data set")
            if party.participant_id != party.aggregator_id:
                raise ConfigError("party.participant_id: the aggregator's is party.aggregator_id")
        if party.aggregator_id in party.participants:
            raise ConfigError("party.participants: the aggregator is not a participant")
        if config.min_participants > len(party.participants):
            raise ConfigError(
                f"min_participants: {config.min_participants} is more than the "
                f"{len(party.participants)} participants of the run"
            )
        return config


def recipe_for(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe tables (``lora``, ``training``, ``federation``) a run with these optional
    settings trains with, validated, defaults filled (``None`` values keep the defaults): what
    the data owner digests (coco_ai.workloads.finetune.config.recipe_digest) to approve it."""
    defaults = {"lora": FederatedConfig.__dataclass_fields__["lora"].default_factory()}
    recipe = {}
    for name in RECIPE_TABLES:
        cls = _NESTED[name]
        values = {k: v for k, v in (settings.get(name) or {}).items() if v is not None}
        base = dataclasses.asdict(defaults[name]) if name in defaults else {}
        built = build_checked(cls, {**base, **values}, name + ".", checks=_CHECKS)
        recipe[name] = jsonable(dataclasses.asdict(built))
    return recipe


def load_config(path: str | Path) -> FederatedConfig:
    return FederatedConfig.from_dict(read_config_file(path))


def config_for_run(refs: RunRefs, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The config of one party of a pipeline run: the run's references; the party table, whose
    federation, role and participant id come from the party's own claims in ``refs`` (its
    initdata) and the rest (aggregator, participants, address) from ``settings``; the trust and
    optional recipe tables of ``settings``; a participant's data set from its keyed input.
    Validated here and again in the TEE (which also checks its attestation names the party)."""
    from coco_ai.federated.identity import FederationIdentity, FederationIdentityError

    settings = dict(settings)
    references: dict[str, Any] = {}
    for table in ("party", "trust"):
        if table not in settings:
            raise ConfigError(f"{table}: the federation settings name no {table} table")
        references[table] = dict(settings.pop(table))
    try:
        identity = FederationIdentity.from_claims(refs.party_claims)
    except FederationIdentityError as exc:
        raise ConfigError(f"party: the run's references name no federation party: {exc}") from None
    references["party"].update(
        federation=identity.federation,
        role=identity.role,
        participant_id=identity.participant_id,
    )
    if settings.get("min_participants") is not None:
        references["min_participants"] = settings.pop("min_participants")
    settings.pop("min_participants", None)
    base_model = refs.input("base_model")
    references["base_model"] = {"path": base_model.uri, "digest": str(base_model.digest)}
    if "dataset" in refs.inputs:
        dataset = refs.input("dataset")
        if dataset.key is None:
            raise ConfigError("dataset.key_uri: the run names no key for its data set")
        references["dataset"] = {"uri": dataset.uri, "key_uri": dataset.key.uri()}
    config = run_config(refs, references, settings, RECIPE_TABLES)
    return FederatedConfig.from_dict(config).to_dict()


def _participants(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, list | tuple) or not v:
        raise ConfigError(f"{name}: expected a non-empty list of participant ids")
    for p in v:
        if not isinstance(p, str) or not _PARTICIPANT_ID.match(p):
            raise ConfigError(f"{name}: {p!r} is not a participant id ([a-z0-9_-], 1-64)")
    if len(set(v)) != len(v):
        raise ConfigError(f"{name}: duplicate participant ids")
    return tuple(v)


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {v!r}")
    return v


_NESTED = {
    "party": PartySettings,
    "base_model": BaseModelSettings,
    "trust": TrustSettings,
    "dataset": DatasetSettings,
    "lora": LoraSettings,
    "training": FederatedTrainingSettings,
    "federation": FederationSettings,
}

_PARTICIPANT_ID_CHECK = text(lambda v: bool(_PARTICIPANT_ID.match(v)), "a participant id")
_CHECKS = {
    **_FINETUNE_CHECKS,  # the fields the fine-tune shares: references, store, lora, inputs
    "min_participants": int_in(1, 1000),
    "party.federation": text(lambda v: bool(_FEDERATION_ID.match(v)), "a federation id"),
    "party.role": one_of(ROLES),
    "party.participant_id": _PARTICIPANT_ID_CHECK,
    "party.aggregator_id": _PARTICIPANT_ID_CHECK,
    "party.participants": _participants,
    "party.server_host": text(lambda v: bool(_HOST.match(v)), "a host name or IP address"),
    "party.server_port": int_in(1, 65535),
    "trust.anchor_pem": text(lambda v: "-----BEGIN CERTIFICATE-----" in v, "a PEM certificate"),
    "trust.signer_pem": lambda name, v: None if v is None else text()(name, v),
    "training.local_steps": int_in(1, 100_000),
    "training.batch_size": int_in(1, 4096),
    "training.learning_rate": float_in(0.0, 1.0, lo_open=True),
    "training.seed": int_in(0, 2**32 - 1),
    "federation.rounds": int_in(1, 10_000),
    "federation.max_update_norm": float_in(0.0, 1e12, lo_open=True),
    "federation.min_gpus": int_in(0, 16),
    "federation.allow_development_evidence": _boolean,
    "federation.verify_frequency_s": int_in(5, 86_400),
    "federation.join_timeout_s": int_in(1, 86_400),
    "federation.job_timeout_s": int_in(1, 7 * 86_400),
}
