"""The confidential RAG indexing: keys → documents → chunks → embeddings → FAISS index →
encrypted, signed index in staging.

Runs inside the TEE (or beside the guest-components emulator), with the discipline of the
fine-tune (coco_ai.workloads.tee): the repository key and the run's checkpoint key come from the
confidential data hub; the documents, chunks, embeddings and the index exist only in this
process's memory and a private temp dir (tmpfs when there is one) removed before exit; what
leaves is ciphertext, the manifest, its signature, the EAR token and the public config. Any
failure raises :class:`WorkloadError` before anything is uploaded.

The manifest (checkpoint format v2) names the repository ciphertext's digest as
``dataset_digest``, the embedder's directory digest as ``base_model_digest``, the config's
digest as ``training_config_digest`` (the config, with the chunker, embedding and index
settings, is public beside it) and the retrieval metrics; it is manifest version 4: it also
lists one keyed digest per document (coco_ai.workloads.rag_index.inclusion), which reveals no id
or text but lets the data owner prove a document's inclusion. Ids and plain text digests stay in
the encrypted ``documents.json``.

With ``previous_index`` in the config the build is incremental
(coco_ai.workloads.rag_index.incremental): unchanged documents keep the earlier index's vectors,
changed and added ones are embedded, removed ones dropped. The signed metrics count each
(``documents_reused`` / ``_added`` / ``_changed`` / ``_removed``, ``chunks_embedded``); which
document is which stays encrypted, in ``documents.json`` and ``index.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.workloads.models import ModelError
from coco_ai.workloads.rag_index.config import RagIndexConfig
from coco_ai.workloads.rag_index.corpus import (
    MAX_REPOSITORY_BYTES,
    Repository,
    RepositoryError,
    parse_repository,
)
from coco_ai.workloads.tee import (
    EXIT_BASE_MODEL,
    EXIT_DATASET,
    EXIT_KEY_RELEASE,
    TeeWorkload,
    WorkloadError,
    private_tmpdir,
    sha256_digest,
    split_object_uri,
)

# aad context every encrypted document repository is bound to (with its key URI): a data set or
# any other blob under the same key cannot be passed off as a repository, nor the reverse
REPOSITORY_AAD = {"type": "coco-ai/rag-repository-jsonl", "version": 1}
#: the k of the approximate index's recall against exact search (a metric of every run)
RECALL_K = 10


@dataclass(frozen=True)
class IndexResult:
    manifest_digest: str
    checkpoint_id: str
    staging_uri: str
    metrics: dict[str, float | int]
    timings: dict[str, float]


def config_bytes(config: RagIndexConfig) -> bytes:
    """The RFC 8785 canonical JSON of the validated config: the public file beside the manifest."""
    from coco_ai.kbs.wire import canonical_json

    return canonical_json(config.to_dict())


class RagIndexWorkload(TeeWorkload):
    """One run of the indexing workload. ``guest`` is a ``GuestClient`` (injected in tests)."""

    NAME = "rag-index"
    config: RagIndexConfig

    def run(self) -> IndexResult:
        cfg = self.config
        phase = self._phase
        with ExitStack() as stack:
            guest = self._guest_client(stack)
            with phase("staging_check"):
                self._check_staging()
            with phase("memory_check"):  # before any key is released or input loaded
                self._check_memory(
                    {"document repository": cfg.repository.uri, "embedder": cfg.embedder.path},
                    cfg.tee_memory_bytes,
                )
            with phase("keys"):  # the first key request attests
                repo_key = self._fetch_key(guest, cfg.repository.key_uri, "repository key")
                checkpoint_key = self._run_key(guest)
            with phase("repository"):
                repository, repository_digest = self._load_repository(repo_key)
                del repo_key

            plain = private_tmpdir("coco-ai-rag-index-")
            stack.callback(shutil.rmtree, plain, ignore_errors=True)
            with phase("embedder_check"):
                embedder = self._embedder(plain / "embedder")
            with phase("previous_index"):
                previous = self._previous_index(guest, plain / "previous")
            index_dir = plain / "index"
            index_dir.mkdir()
            metrics = self._index(repository, embedder, index_dir, previous)
            del previous
            del repository

            encrypted = Path(tempfile.mkdtemp(prefix="coco-ai-index-"))
            stack.callback(shutil.rmtree, encrypted, ignore_errors=True)
            with phase("attest"):  # right before encrypting: created_at inside the token's life
                token, tee_key = self._attestation_token(guest)
            with phase("encrypt"):
                manifest = self._encrypt(
                    index_dir, encrypted, checkpoint_key, repository_digest, metrics
                )
                del checkpoint_key
                shutil.rmtree(index_dir)  # plaintext gone before anything leaves the TEE
            with phase("sign"):
                self._sign(manifest, encrypted, token, tee_key)
                del tee_key
            with phase("upload"):
                self._upload(encrypted)
        self.log("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        self.log(f"done: index {manifest.checkpoint_id} in {cfg.staging_uri}")
        return IndexResult(
            manifest.digest(),
            manifest.checkpoint_id,
            cfg.staging_uri,
            manifest.metrics,
            dict(self.timings),
        )

    def _load_repository(self, key: bytes) -> tuple[Repository, str]:
        from coco_ai.crypto import decrypt_blob
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.storage import open_store

        cfg = self.config
        parent, name = split_object_uri(cfg.repository.uri)

        def read() -> bytes:
            store = open_store(parent)
            size = store.size(name)
            if size > MAX_REPOSITORY_BYTES:  # refused before reading it into memory
                raise _TooLarge(size)
            return store.read_bytes(name)

        try:
            blob = self._store_call(
                f"reading repository {cfg.repository.uri}",
                read,
                retry=lambda exc: not isinstance(exc, _TooLarge),
            )
        except _TooLarge as exc:
            raise WorkloadError(
                f"repository {cfg.repository.uri} is {exc.size} bytes, over the limit of "
                f"{MAX_REPOSITORY_BYTES}",
                EXIT_DATASET,
            ) from None
        digest = sha256_digest(blob)
        try:
            plaintext = decrypt_blob(
                blob, kek=key, aad_context=REPOSITORY_AAD, key_uri=cfg.repository.key_uri
            )
        except CheckpointError as exc:
            raise WorkloadError(
                f"repository {cfg.repository.uri} does not decrypt under "
                f"{cfg.repository.key_uri} (wrong key or tampered): {type(exc).__name__}: {exc}",
                EXIT_DATASET,
            ) from None
        try:
            repository = parse_repository(plaintext)
        except RepositoryError as exc:
            raise WorkloadError(f"repository {cfg.repository.uri}: {exc}", EXIT_DATASET) from None
        self.log(
            f"repository {digest}: {len(repository.documents)} documents, "
            f"{len(repository.questions)} evaluation questions"
        )
        return repository, digest

    def _embedder(self, scratch: Path):
        """The embedder, downloaded first if remote; its digest must match the run's."""
        from coco_ai.workloads.rag_index.embedder import Embedder

        cfg = self.config
        model_dir = self._pinned_model(cfg.embedder.path, cfg.embedder.digest, scratch, "embedder")
        try:
            embedder = Embedder(
                model_dir,
                max_seq_length=cfg.embedding.max_seq_length,
                batch_size=cfg.embedding.batch_size,
            )
        except ModelError as exc:
            raise WorkloadError(f"embedder {cfg.embedder.path}: {exc}", EXIT_BASE_MODEL) from None
        self.log(f"embedding dimension {embedder.dim}")
        return embedder

    def _previous_index(self, guest, scratch: Path):
        """The earlier index named by the config, decrypted under its run's key (derived from
        the run-key root here) and read; None for a full build. A named index that does not
        authenticate, or is not the named manifest, fails the run: someone tampered with it."""
        from coco_ai.crypto import decrypt_checkpoint
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.run_keys import RunKeyError, derive_run_key
        from coco_ai.workloads.rag_index.incremental import PreviousIndexError, read_previous

        cfg = self.config
        named = cfg.previous_index
        if named is None:
            return None
        root = self._fetch_key(guest, cfg.run_key_root_uri, "run-key root")
        try:
            key = derive_run_key(root, named.run_id)
        except RunKeyError as exc:
            raise WorkloadError(f"previous index key: {exc}", EXIT_KEY_RELEASE) from None
        del root
        what = f"previous index {named.uri} (run {named.run_id})"
        try:
            manifest = self._store_call(
                f"reading {what}",
                lambda: decrypt_checkpoint(named.uri, scratch, kek=key),
                retry=lambda exc: not isinstance(exc, CheckpointError | ValueError),
            )
            if manifest.run_id != named.run_id or manifest.digest() != named.manifest_digest:
                raise PreviousIndexError(
                    f"its manifest (run {manifest.run_id}, {manifest.digest()}) is not the one "
                    f"named ({named.manifest_digest})"
                )
            previous = read_previous(scratch)
        except (CheckpointError, ValueError) as exc:  # PreviousIndexError is a ValueError
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkloadError(
                f"{what} cannot be reused: {type(exc).__name__}: {first}", EXIT_DATASET
            ) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.log(f"{what}: {len(previous.documents)} documents")
        return previous

    def _index(self, repository: Repository, embedder, out: Path, previous) -> dict[str, Any]:
        """Chunk, embed (what the earlier index does not already hold), index, evaluate; write
        the index directory; the metrics."""
        import numpy as np

        from coco_ai.workloads.rag_index import index as engine
        from coco_ai.workloads.rag_index.chunker import chunk_documents
        from coco_ai.workloads.rag_index.incremental import plan_reuse, vector_settings

        cfg = self.config
        with self._phase("chunk"):
            chunks = chunk_documents(repository.documents, cfg.chunker)
            settings = cfg.to_dict()
            plan = plan_reuse(
                previous,
                repository.documents,
                chunks,
                vector_settings(cfg.embedder.digest, settings["chunker"], settings["embedding"]),
            )
        if previous is not None:
            self.log(
                "incremental: "
                + ", ".join(f"{k.removeprefix('documents_')} {v}" for k, v in plan.counts().items())
                + (f" (nothing reused: {plan.reason})" if plan.reason else "")
            )
        with self._phase("embed"):
            start = time.perf_counter()
            todo = [i for i in range(len(chunks)) if i not in plan.reused]
            fresh = embedder.embed([chunks[i].embed_text for i in todo]) if todo else None
            vectors = np.empty((len(chunks), embedder.dim), dtype=np.float32)
            for i, vector in plan.reused.items():
                vectors[i] = vector
            if fresh is not None:
                vectors[todo] = fresh
            embed_s = max(time.perf_counter() - start, 1e-9)
        self.log(
            f"{len(todo)} of {len(chunks)} chunks embedded ({len(todo) / embed_s:.1f} chunks/s)"
        )
        with self._phase("build_index"):
            start = time.perf_counter()
            index = engine.build_index(vectors, cfg.index)
            build_s = time.perf_counter() - start
        with self._phase("evaluate"):
            questions = embedder.embed([q.question for q in repository.questions])
            k = cfg.evaluation.k
            _, ranked = engine.search(index, questions, max(k, RECALL_K))
            quality = engine.retrieval_quality(
                ranked[:, :k], chunks, [q.doc_id for q in repository.questions]
            )
            _, exact = engine.exact_search(vectors, questions, RECALL_K)
            recall = engine.recall_vs_exact(ranked[:, : exact.shape[1]], exact)
        metrics: dict[str, Any] = {
            "documents": len(repository.documents),
            "chunks": len(chunks),
            "questions": len(repository.questions),
            "embedding_dim": embedder.dim,
            "eval_k": k,
            "hit_rate_at_1": quality.hit_rate_at_1,
            "hit_rate_at_k": quality.hit_rate_at_k,
            "mrr_at_k": quality.mrr_at_k,
            "ann_recall_at_10": recall,
            "embed_chunks_per_s": len(todo) / embed_s,
            "index_build_seconds": build_s,
            "chunks_embedded": len(todo),
            **plan.counts(),
        }
        self.log(
            f"retrieval: hit rate@1 {quality.hit_rate_at_1:.3f}, hit rate@{k} "
            f"{quality.hit_rate_at_k:.3f}, MRR@{k} {quality.mrr_at_k:.3f}, "
            f"recall@{RECALL_K} vs exact {recall:.3f}"
        )
        with self._phase("write_index"):
            engine.write_index_dir(
                out,
                index,
                chunks,
                repository.documents,
                plan.status,
                {
                    "engine": cfg.index.engine,
                    "faiss_version": engine.faiss_version(),
                    "dimension": embedder.dim,
                    "metric": "inner_product",
                    "normalized": True,
                    "embedder_digest": cfg.embedder.digest,
                    "chunker": cfg.to_dict()["chunker"],
                    "embedding": cfg.to_dict()["embedding"],
                    "index": cfg.to_dict()["index"],
                    "metrics": metrics,
                    "incremental": self._incremental_record(plan),
                },
            )
        return metrics

    def _incremental_record(self, plan) -> dict[str, Any] | None:
        """index.json's account of what was reused (encrypted with the index: ids stay inside)."""
        named = self.config.previous_index
        if named is None:
            return None
        return {
            "previous_run_id": named.run_id,
            "previous_manifest_digest": named.manifest_digest,
            "removed": plan.removed,
            "nothing_reused_because": plan.reason or None,
        }

    def _encrypt(self, src: Path, dst: Path, key: bytes, repository_digest: str, metrics):
        from coco_ai.crypto import encrypt_checkpoint
        from coco_ai.crypto.manifest import CONFIG_FILE
        from coco_ai.workloads.rag_index.inclusion import document_digests
        from coco_ai.workloads.rag_index.index import DOCUMENTS_FILE

        cfg = self.config
        public_config = config_bytes(cfg)
        indexed = json.loads((src / DOCUMENTS_FILE).read_text(encoding="utf-8"))
        documents = document_digests(key, cfg.run_id, ((d["id"], d["sha256"]) for d in indexed))
        manifest = encrypt_checkpoint(
            str(src),
            str(dst),
            kek=key,
            key_uri=cfg.checkpoint_key_uri,
            run_id=cfg.run_id,
            meta={
                "base_model_digest": cfg.embedder.digest,
                "dataset_digest": repository_digest,
                "training_config_digest": sha256_digest(public_config),
                "metrics": metrics,
                "documents": documents,
            },
        )
        (dst / CONFIG_FILE).write_bytes(public_config)
        self.log(f"index encrypted: {len(manifest.files)} files under {cfg.checkpoint_key_uri}")
        return manifest


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
