"""The retrieval service's configuration (standard library only; docs/formats/rag.md §5.1).

Nothing here is trusted for security: which index, which manifest, which trust anchor and which
callers come from the service's attested initdata (coco_ai.workloads.rag_serve.identity); the
config only says where things are (the index's store location, the embedder's directory, the
anchor file, the guest API, the listening address) and sets the request limits. A value that
disagrees with the initdata makes the service refuse to start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.runs import RUN_ID_RULE, is_run_id
from coco_ai.workloads.finetune.config import (
    ConfigError,
    build_checked,
    float_in,
    int_in,
    jsonable,
    read_config_file,
    text,
)

CONFIG_ENV = "COCO_AI_RAG_SERVE_CONFIG"
#: where the launcher leaves secrets it unsealed for the service (the sealed-secrets seam)
CREDENTIALS_DIR_ENV = "COCO_AI_RAG_SERVE_CREDENTIALS_DIR"
ANSWER_MODES = ("extractive", "generative")


@dataclass(frozen=True)
class Limits:
    """Request limits (docs/formats/rag.md §5.3); a request over one is refused with 400/413."""

    max_body_bytes: int = 16_384
    max_query_chars: int = 2_048
    max_k: int = 20
    max_messages: int = 16


@dataclass(frozen=True)
class ServeConfig:
    run_id: str  # the service's own run id (its initdata's io.coco-ai.run-id)
    index_uri: str  # store location of the index run's encrypted, signed checkpoint
    embedder_path: str  # directory of the embedder (its digest must be the manifest's)
    # the attestation trust anchor, a PEM file or the PEM itself (exactly one; a pod has no
    # volume): its SHA-256 must be the initdata's io.coco-ai.rag-trust-anchor
    trust_anchor_file: str = ""
    trust_anchor_pem: str = ""
    guest_api_url: str = "http://127.0.0.1:8006"
    host: str = "127.0.0.1"
    port: int = 8080
    # TLS with a certificate for the attested TEE key (what callers pin); plain HTTP is allowed
    # on loopback only
    tls: bool = True
    store_attempts: int = 5
    store_backoff_s: float = 1.0
    credential_refresh_s: float = 30.0  # how soon a revoked caller credential stops working
    # the index store's credentials as a CoCo sealed secret ("sealed.…": a signed pointer, no
    # secret), unsealed through the CDH at start; the resource it names must be the one the
    # initdata pins (io.coco-ai.rag-store-options). How a Kata pod, which admits no volume and
    # no env, gets them (docs/formats/rag.md §5.1)
    sealed_storage_options: str = ""
    default_k: int = 5
    # extractive (the default: better than SmolLM2-135M generating, docs/formats/rag.md §5.4) or
    # generative: a causal LM at generator_path, pinned by the initdata, answers from the chunks
    answer_mode: str = "extractive"
    generator_path: str = ""
    max_new_tokens: int = 48
    limits: Limits = field(default_factory=Limits)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeConfig:
        config = build_checked(cls, data, "", checks=_CHECKS, nested={"limits": Limits})
        if config.default_k > config.limits.max_k:
            raise ConfigError(f"default_k: {config.default_k} exceeds limits.max_k")
        if bool(config.trust_anchor_file) == bool(config.trust_anchor_pem):
            raise ConfigError("trust_anchor_file, trust_anchor_pem: exactly one is required")
        if config.answer_mode == "generative" and not config.generator_path:
            raise ConfigError("generator_path: required when answer_mode is generative")
        return config


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {type(v).__name__}")
    return v


def _optional_text(name: str, v: Any) -> str:
    return v if v == "" else text()(name, v)


def load_config(path: str | Path) -> ServeConfig:
    return ServeConfig.from_dict(read_config_file(path))


_CHECKS = {
    "run_id": text(is_run_id, f"a run id ({RUN_ID_RULE})"),
    "index_uri": text(),
    "embedder_path": text(),
    "trust_anchor_file": _optional_text,
    "trust_anchor_pem": _optional_text,
    "sealed_storage_options": lambda name, v: (
        v if v == "" else text(lambda t: t.startswith("sealed."), "a sealed secret")(name, v)
    ),
    "guest_api_url": text(prefixes=("http://", "https://")),
    "host": text(),
    "port": int_in(0, 65535),
    "tls": _boolean,
    "store_attempts": int_in(1, 20),
    "store_backoff_s": float_in(0, 60),
    "credential_refresh_s": float_in(0.1, 3600),
    "default_k": int_in(1, 100),
    "answer_mode": text(lambda v: v in ANSWER_MODES, " or ".join(ANSWER_MODES)),
    "generator_path": _optional_text,
    "max_new_tokens": int_in(1, 512),
    "limits.max_body_bytes": int_in(256, 1_048_576),
    "limits.max_query_chars": int_in(16, 65_536),
    "limits.max_k": int_in(1, 100),
    "limits.max_messages": int_in(1, 256),
}
