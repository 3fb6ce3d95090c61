"""The RAG indexing workload's one validated configuration (standard library only).

A config file is TOML (``.toml``) or JSON (anything else), shaped like
:func:`RagIndexConfig.to_dict`; unknown fields and out-of-range values are rejected with a
message naming the dotted field, as for the fine-tune (coco_ai.workloads.finetune.config, whose
field checks this module shares).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.digest import is_sha256
from coco_ai.runs import RUN_ID_RULE, RunRefs, is_run_id
from coco_ai.workloads.finetune.config import (
    ConfigError,
    build_checked,
    float_in,
    int_in,
    jsonable,
    kbs_uri,
    one_of,
    read_config_file,
    run_config,
    text,
)
from coco_ai.workloads.finetune.config import recipe_digest as _recipe_digest

CONFIG_ENV = "COCO_AI_RAG_INDEX_CONFIG"
INDEX_ENGINES = ("faiss-hnsw", "faiss-flat")


@dataclass(frozen=True)
class ChunkerSettings:
    """See coco_ai.workloads.rag_index.chunker."""

    # small windows and no title: on the generated corpus with all-MiniLM-L6-v2 these give hit
    # rate@5 0.97 vs 0.78 for 96/24 words with the title (docs/ARCHITECTURE.md, "Choices")
    max_words: int = 32
    overlap_words: int = 8  # < max_words
    title_prefix: bool = False


@dataclass(frozen=True)
class EmbeddingSettings:
    batch_size: int = 32
    max_seq_length: int = 256  # tokens; longer chunks are truncated (MiniLM was trained on 256)


@dataclass(frozen=True)
class IndexSettings:
    engine: str = "faiss-hnsw"  # faiss-hnsw (approximate) | faiss-flat (exact)
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 200
    ef_search: int = 128  # stored in the index: what the retrieval service searches with


@dataclass(frozen=True)
class EvaluationSettings:
    k: int = 5  # hit rate@k: a question is a hit when a top-k chunk is from its document


@dataclass(frozen=True)
class RepositorySettings:
    uri: str  # object-store URI of the encrypted repository (corpus.py, docs/formats/rag.md)
    key_uri: str  # kbs:///repo/type/tag of its key


@dataclass(frozen=True)
class EmbedderSettings:
    path: str  # BERT-style sentence embedder directory: local, file:// or object-store URI
    digest: str  # "sha256:<hex>" from coco_ai.workloads.models.model_digest


@dataclass(frozen=True)
class PreviousIndexSettings:
    """An earlier run's index whose embeddings this run may reuse (incremental re-indexing).

    Not a recipe table and no trust: the workload derives that run's key from the run-key root
    and reuses an embedding only where every file authenticates under it, the manifest is the
    one named here, and the document's text, the chunker, the embedding settings and the
    embedder are the same — so the index equals a full rebuild's, whatever Airflow names here."""

    uri: str  # the earlier run's encrypted index (its checkpoint URI, e.g. the served version's)
    run_id: str  # the run that built it: its key is derived from the root for this id
    manifest_digest: str  # "sha256:<hex>" of its manifest (the registry's tag)


@dataclass(frozen=True)
class RagIndexConfig:
    run_id: str
    staging_uri: str
    checkpoint_key_uri: str  # the name of the run's derived key (coco_ai.run_keys)
    run_key_root_uri: str
    repository: RepositorySettings
    embedder: EmbedderSettings
    guest_api_url: str = "http://127.0.0.1:8006"
    store_attempts: int = 5
    store_backoff_s: float = 1.0
    chunker: ChunkerSettings = field(default_factory=ChunkerSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    previous_index: PreviousIndexSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (defaults filled in); what the manifest's config digest covers.
        Without a previous index the key is absent (a full build's config is unchanged)."""
        doc = jsonable(dataclasses.asdict(self))
        if doc["previous_index"] is None:
            del doc["previous_index"]
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RagIndexConfig:
        config = build_checked(cls, data, "", checks=_CHECKS, nested=_NESTED)
        _check_chunker(config.chunker, "chunker.")
        if config.previous_index is not None and config.previous_index.run_id == config.run_id:
            raise ConfigError("previous_index.run_id: an index cannot reuse its own run's index")
        return config


#: the recipe the data owner approves by digest: how documents become an index
RECIPE_TABLES = ("chunker", "embedding", "index", "evaluation")


def recipe_digest(config: Mapping[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of the recipe tables of a validated config's dict."""
    return _recipe_digest(config, RECIPE_TABLES)


def recipe_for(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe tables a run with these optional settings indexes with (validated, defaults
    filled; ``None`` values keep the defaults, as in config_for_run): what the data owner
    digests with :func:`recipe_digest` to approve it."""
    recipe = {}
    for name in RECIPE_TABLES:
        values = {k: v for k, v in (settings.get(name) or {}).items() if v is not None}
        built = build_checked(_NESTED[name], values, name + ".", checks=_CHECKS)
        recipe[name] = jsonable(dataclasses.asdict(built))
    _check_chunker(ChunkerSettings(**recipe["chunker"]), "chunker.")
    return recipe


def config_for_run(refs: RunRefs, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a pipeline run: references from ``refs`` (inputs ``documents`` and
    ``embedder``), the optional recipe tables of ``settings`` (``None`` keeps a default) and
    its optional ``previous_index`` (``None``: a full build)."""
    documents, embedder = refs.input("documents"), refs.input("embedder")
    if documents.key is None:
        raise ConfigError("repository.key_uri: the run names no key for its documents")
    settings = dict(settings)
    previous = settings.pop("previous_index", None)
    references: dict[str, Any] = {
        "repository": {"uri": documents.uri, "key_uri": documents.key.uri()},
        "embedder": {"path": embedder.uri, "digest": str(embedder.digest)},
    }
    if previous is not None:
        references["previous_index"] = previous
    config = run_config(refs, references, settings, RECIPE_TABLES)
    return RagIndexConfig.from_dict(config).to_dict()


def load_config(path: str | Path) -> RagIndexConfig:
    """Read and validate a config file (TOML if it ends in .toml, JSON otherwise)."""
    return RagIndexConfig.from_dict(read_config_file(path))


def _check_chunker(chunker: ChunkerSettings, prefix: str) -> None:
    if chunker.overlap_words >= chunker.max_words:
        raise ConfigError(
            f"{prefix}overlap_words: {chunker.overlap_words} must be less than "
            f"{prefix}max_words ({chunker.max_words})"
        )


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {type(v).__name__}")
    return v


_NESTED = {
    "repository": RepositorySettings,
    "embedder": EmbedderSettings,
    "chunker": ChunkerSettings,
    "embedding": EmbeddingSettings,
    "index": IndexSettings,
    "evaluation": EvaluationSettings,
    "previous_index": PreviousIndexSettings,
}

_CHECKS = {
    "run_id": text(is_run_id, f"a run id ({RUN_ID_RULE})"),
    "staging_uri": text(),
    "checkpoint_key_uri": kbs_uri,
    "run_key_root_uri": kbs_uri,
    "guest_api_url": text(prefixes=("http://", "https://")),
    "store_attempts": int_in(1, 20),
    "store_backoff_s": float_in(0.0, 60.0),
    "repository.uri": text(),
    "repository.key_uri": kbs_uri,
    "embedder.path": text(),
    "embedder.digest": text(is_sha256, "a digest of the form sha256:<64 lowercase hex>"),
    "chunker.max_words": int_in(8, 512),
    "chunker.overlap_words": int_in(0, 256),
    "chunker.title_prefix": _boolean,
    "embedding.batch_size": int_in(1, 4096),
    "embedding.max_seq_length": int_in(8, 512),
    "index.engine": one_of(INDEX_ENGINES),
    "index.hnsw_m": int_in(4, 128),
    "index.ef_construction": int_in(8, 4096),
    "index.ef_search": int_in(8, 4096),
    "evaluation.k": int_in(1, 100),
    "previous_index.uri": text(),
    "previous_index.run_id": text(is_run_id, f"a run id ({RUN_ID_RULE})"),
    "previous_index.manifest_digest": text(
        is_sha256, "a digest of the form sha256:<64 lowercase hex>"
    ),
}
