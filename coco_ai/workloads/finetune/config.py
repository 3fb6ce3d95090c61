"""The fine-tune workload's one validated configuration.

Standard library only (with the project's standard-library modules for digests and KBS
resource URIs): the training core (and the GPU benchmark, on an image without the crypto
stack) imports the LoRA and training sections from here.

A config file is TOML (``.toml``) or JSON (anything else), shaped like
:func:`FinetuneConfig.to_dict`.
Unknown fields and out-of-range values are rejected with a message naming the dotted field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.digest import is_sha256
from coco_ai.kbs.resource_path import parse_resource_uri
from coco_ai.runs import RUN_ID_RULE, RunRefs, is_run_id

CONFIG_ENV = "COCO_AI_FINETUNE_CONFIG"

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_DEVICES = ("auto", "cpu", "cuda")
_PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 1
    learning_rate: float = 1e-3
    max_steps: int | None = None  # None: as many as the epochs give
    batch_size: int = 8
    seed: int = 0
    max_seq_length: int = 256
    # tokens per packed row: a step's records are laid end to end in rows this long (a longer
    # record gets a row of its own); attention stays within each record (see train.py)
    pack_length: int = 256
    eval_fraction: float = 0.2
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16
    sample_questions: int = 3  # held-out questions answered greedily before and after
    max_new_tokens: int = 48


@dataclass(frozen=True)
class DatasetSettings:
    uri: str  # object-store URI of the encrypted JSONL
    key_uri: str  # kbs:///repo/type/tag of its data key


@dataclass(frozen=True)
class BaseModelSettings:
    path: str  # local directory or object-store URI of a Hugging Face causal-LM directory
    digest: str  # "sha256:<hex>" from coco_ai.workloads.models.model_digest


@dataclass(frozen=True)
class FinetuneConfig:
    run_id: str
    staging_uri: str
    checkpoint_key_uri: str  # the name of the run's derived key (coco_ai.run_keys)
    run_key_root_uri: str  # the data owner's run-key root it is derived from
    dataset: DatasetSettings
    base_model: BaseModelSettings
    guest_api_url: str = "http://127.0.0.1:8006"
    store_attempts: int = 5  # object-store operations: bounded retries with exponential backoff
    store_backoff_s: float = 1.0  # first retry delay; doubles each attempt
    # the TEE's memory when the guest cannot tell it (local mode: the host's is not the TEE's);
    # the workload uses the least of this, its cgroup limit and MemTotal (coco_ai.workloads.tee)
    tee_memory_bytes: int | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (defaults filled in); what the manifest's config digest covers."""
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        return _build(cls, data, "")


#: the parts of a config that are the training recipe the data owner approves (by digest); the
#: rest (run id, URIs, digests of the inputs) differs on every run and is checked on its own
RECIPE_TABLES = ("lora", "training")


def recipe_digest(config: Mapping[str, Any], tables: tuple[str, ...] = RECIPE_TABLES) -> str:
    """``sha256:`` of the canonical JSON of the config's recipe tables (defaults filled in).

    ``config`` is a validated config's ``to_dict()`` (or the parsed ``training_config.json``);
    the data owner lists approved recipes by this digest in the owner policy. ``tables``: the
    recipe tables of another workload kind (coco_ai.workloads.kinds).
    """
    import hashlib

    from coco_ai.kbs.wire import canonical_json

    recipe = {name: config[name] for name in tables}
    return "sha256:" + hashlib.sha256(canonical_json(recipe)).hexdigest()


def recipe_for(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe tables a run with these optional ``lora`` / ``training`` settings trains with
    (validated, defaults filled; ``None`` values keep the defaults, as in config_for_run): what
    the data owner digests with :func:`recipe_digest` to approve it."""
    tables = {LoraSettings: "lora", TrainingSettings: "training"}
    recipe = {}
    for cls, name in tables.items():
        values = {k: v for k, v in (settings.get(name) or {}).items() if v is not None}
        recipe[name] = jsonable(dataclasses.asdict(_build(cls, values, name + ".")))
    return recipe


def run_config(
    refs: RunRefs,
    references: Mapping[str, Any],
    settings: Mapping[str, Any],
    tables: tuple[str, ...],
) -> dict[str, Any]:
    """A pipeline run's config, not yet validated: the run's own references (run id, staging,
    checkpoint key, run-key root) and the workload's input `references`, plus the non-``None``
    values of the optional `tables` in `settings`. One rule for every workload kind."""
    unknown = sorted(set(settings) - set(tables))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown settings table (expected {', '.join(tables)})")
    config: dict[str, Any] = {
        "run_id": refs.run_id,
        "staging_uri": refs.staging_uri,
        "checkpoint_key_uri": refs.checkpoint_key.uri(),
        "run_key_root_uri": refs.run_key_root.uri(),
        **references,
    }
    for table in tables:
        values = {k: v for k, v in (settings.get(table) or {}).items() if v is not None}
        if values:
            config[table] = values
    return config


def config_for_run(refs: RunRefs, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a pipeline run: references from ``refs`` (key release's output) and the
    optional ``lora`` / ``training`` tables of ``settings`` (``None`` values keep the defaults).

    Validated here, so that a bad setting fails before a confidential VM starts, and again by
    the workload inside the TEE.
    """
    dataset, base_model = refs.input("dataset"), refs.input("base_model")
    if dataset.key is None:
        raise ConfigError("dataset.key_uri: the run names no key for its data set")
    config = run_config(
        refs,
        {
            "dataset": {"uri": dataset.uri, "key_uri": dataset.key.uri()},
            "base_model": {"path": base_model.uri, "digest": str(base_model.digest)},
        },
        settings,
        RECIPE_TABLES,
    )
    return FinetuneConfig.from_dict(config).to_dict()


def load_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a config file (TOML if it ends in .toml, JSON otherwise)."""
    return FinetuneConfig.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The object in a config file (TOML if it ends in .toml, JSON otherwise), not yet checked."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {_fmt(path)}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold an object at the top level")
    return data


def _fmt(path: Path) -> str:
    return "TOML" if path.suffix == ".toml" else "JSON"


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# ---- validation -------------------------------------------------------------------------------

_NESTED = {
    "dataset": DatasetSettings,
    "base_model": BaseModelSettings,
    "lora": LoraSettings,
    "training": TrainingSettings,
}


def build_checked(
    cls: type,
    data: Any,
    prefix: str,
    *,
    checks: Mapping[str, Callable[[str, Any], Any]],
    nested: Mapping[str, type] | None = None,
) -> Any:
    """``cls`` from ``data``: every field checked by ``checks[dotted name]``; ``nested`` names
    the top-level fields that are tables of their own. Errors name the dotted field."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table/object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{dotted}: required field missing")
            continue
        raw = data[name]
        if nested and name in nested:
            values[name] = build_checked(nested[name], raw, dotted + ".", checks=checks)
        else:
            values[name] = checks[dotted](dotted, raw)
    return cls(**values)


def _build(cls: type, data: Any, prefix: str) -> Any:
    return build_checked(cls, data, prefix, checks=_CHECKS, nested=_NESTED)


def int_in(lo: int, hi: int, *, optional: bool = False):
    def check(name: str, v: Any) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}: expected an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: {v} is out of range [{lo}, {hi}]")
        return v

    return check


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{name}: expected a finite number, got {v!r}")
        v = float(v)
        bad_lo = v <= lo if lo_open else v < lo
        bad_hi = v >= hi if hi_open else v > hi
        if bad_lo or bad_hi:
            lb, hb = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ConfigError(f"{name}: {v} is out of range {lb}{lo}, {hi}{hb}")
        return v

    return check


def one_of(options: tuple[str, ...]):
    def check(name: str, v: Any) -> str:
        if v not in options:
            raise ConfigError(f"{name}: {v!r} is not one of {', '.join(options)}")
        return v

    return check


def text(valid: Callable[[str], bool] | None = None, what: str = "", *, prefixes=()):
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{name}: expected a non-empty string")
        if valid is not None and not valid(v):
            raise ConfigError(f"{name}: {v!r} is not {what}")
        if prefixes and not v.startswith(prefixes):
            raise ConfigError(f"{name}: {v!r} must start with one of {', '.join(prefixes)}")
        return v

    return check


def kbs_uri(name: str, v: Any) -> str:
    text()(name, v)
    try:
        parse_resource_uri(v)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return v


def _modules(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, list | tuple) or not v:
        raise ConfigError(f"{name}: expected a non-empty list of module names")
    for m in v:
        if not isinstance(m, str) or not _MODULE_NAME.match(m):
            raise ConfigError(f"{name}: {m!r} is not a module name")
    if len(set(v)) != len(v):
        raise ConfigError(f"{name}: duplicate module names")
    return tuple(v)


_URL = text(prefixes=("http://", "https://"))

_CHECKS = {
    "run_id": text(is_run_id, f"a run id ({RUN_ID_RULE})"),
    "staging_uri": text(),
    "checkpoint_key_uri": kbs_uri,
    "run_key_root_uri": kbs_uri,
    "guest_api_url": _URL,
    "store_attempts": int_in(1, 20),
    "store_backoff_s": float_in(0.0, 60.0),
    "tee_memory_bytes": int_in(1, 2**50, optional=True),
    "dataset.uri": text(),
    "dataset.key_uri": kbs_uri,
    "base_model.path": text(),
    "base_model.digest": text(is_sha256, "a digest of the form sha256:<64 lowercase hex>"),
    "lora.r": int_in(1, 1024),
    "lora.alpha": int_in(1, 4096),
    "lora.dropout": float_in(0.0, 1.0, hi_open=True),
    "lora.target_modules": _modules,
    "training.epochs": int_in(1, 1000),
    "training.learning_rate": float_in(0.0, 1.0, lo_open=True),
    "training.max_steps": int_in(1, 10_000_000, optional=True),
    "training.batch_size": int_in(1, 4096),
    "training.seed": int_in(0, 2**32 - 1),
    "training.max_seq_length": int_in(8, 131_072),
    "training.pack_length": int_in(8, 131_072),
    "training.eval_fraction": float_in(0.0, 0.9, lo_open=True),
    "training.device": one_of(_DEVICES),
    "training.precision": one_of(_PRECISIONS),
    "training.sample_questions": int_in(0, 64),
    "training.max_new_tokens": int_in(1, 2048),
}
