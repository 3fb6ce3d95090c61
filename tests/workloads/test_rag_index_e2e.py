"""The RAG indexing workload against the real Trustee stand-in (TLS on loopback), the real
guest-components emulator, real crypto, a real FAISS index and a file:// store; then every bad
input once (in process, the same code path: the subprocess adds only the one-line exit)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.crypto import encrypt_blob
from coco_ai.workloads.kinds import RAG_INDEX
from coco_ai.workloads.models import model_digest
from coco_ai.workloads.rag_index import workload as rag_workload
from coco_ai.workloads.rag_index.config import RagIndexConfig
from coco_ai.workloads.rag_index.corpus import generate_repository, to_jsonl
from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD, RagIndexWorkload
from coco_ai.workloads.tee import (
    EXIT_BASE_MODEL,
    EXIT_DATASET,
    EXIT_KEY_RELEASE,
    EXIT_RESOURCES,
    EXIT_STAGING,
    WorkloadError,
)

RUN_ID = "run-rag-1"
REPO_KEY_PATH = "default/rag/northwind"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repository():
    return generate_repository(12, seed=11)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from coco_ai.devstack.workload import start_local_stack

    with start_local_stack(
        tmp_path_factory.mktemp("trustee"), RUN_ID, kind=RAG_INDEX, dataset_key_path=REPO_KEY_PATH
    ) as s:
        yield s


@pytest.fixture(scope="module")
def embedder(tmp_path_factory, repository) -> Path:
    import torch

    from coco_ai.workloads.rag_index.embedder import build_tiny_embedder

    torch.set_num_threads(2)  # the box is shared
    texts = [d.text for d in repository.documents] + [q.question for q in repository.questions]
    return build_tiny_embedder(tmp_path_factory.mktemp("models") / "tiny-bert", texts)


def _doc_line(text: str) -> bytes:
    return json.dumps(
        {"type": "document", "id": "x-1", "kind": "manual", "title": "t", "text": text}
    ).encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory, stack, repository) -> Path:
    """The object store: the data owner's encrypted repositories (good and bad variants)."""
    root = tmp_path_factory.mktemp("store")
    stack.admin.set_resource("default/rag/other", secrets.token_bytes(32))

    def put(name: str, plaintext: bytes, *, kek=None, aad=REPOSITORY_AAD) -> None:
        blob = encrypt_blob(
            plaintext,
            kek=stack.dataset_key if kek is None else kek,
            key_uri=stack.dataset_key_uri,
            aad_context=aad,
        )
        (root / name).write_bytes(blob)

    good = to_jsonl(repository)
    put("northwind.enc", good)
    put("other-key.enc", good, kek=secrets.token_bytes(32))
    put("dataset-aad.enc", good, aad={"type": "coco-ai/dataset-jsonl", "version": 1})
    tampered = bytearray((root / "northwind.enc").read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    (root / "tampered.enc").write_bytes(bytes(tampered))
    put("non-utf8.enc", good + b"\xc3\x28\n")
    put("empty-doc.enc", good + _doc_line("   ") + b"\n")
    put("huge-doc.enc", good + _doc_line("word " * 300_000) + b"\n")
    put("no-questions.enc", good.split(b'{"type": "question"')[0])
    return root


def make_config(tmp_path: Path, stack, store: Path, embedder: Path, **override) -> dict:
    cfg = {
        "run_id": RUN_ID,
        "guest_api_url": stack.guest_url,
        "staging_uri": f"file://{tmp_path}/staging/{RUN_ID}",
        "checkpoint_key_uri": stack.checkpoint_key_uri,
        "run_key_root_uri": stack.run_key_root_uri,
        "store_attempts": 2,
        "store_backoff_s": 0.05,
        "repository": {"uri": f"file://{store}/northwind.enc", "key_uri": stack.dataset_key_uri},
        "embedder": {"path": str(embedder), "digest": model_digest(embedder)},
        "embedding": {"batch_size": 16, "max_seq_length": 64},
        "evaluation": {"k": 3},
    }
    for key, value in override.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def staged_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "staging"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def run_subprocess(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "rag_index.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "coco_ai.workloads.rag_index", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "2", **os.environ},
        timeout=240,
    )


def test_index_end_to_end(tmp_path, stack, store, embedder, repository) -> None:
    import faiss
    import numpy as np

    from coco_ai.crypto import decrypt_checkpoint, verify_checkpoint
    from coco_ai.crypto.manifest import CONFIG_FILE
    from coco_ai.crypto.verify import VerificationPolicy
    from coco_ai.storage import open_store
    from coco_ai.workloads.rag_index.embedder import Embedder

    cfg = make_config(tmp_path, stack, store, embedder)
    proc = run_subprocess(tmp_path, cfg)
    assert proc.returncode == 0, proc.stderr

    # the index in staging verifies without a key: token, TEE signature, digests
    staging = cfg["staging_uri"]
    verified = verify_checkpoint(
        staging, trust_anchor_pem=stack.trust_anchor_pem, policy=VerificationPolicy.for_run(RUN_ID)
    )
    m = verified.manifest
    assert m.base_model_digest == model_digest(embedder)
    blob = (store / "northwind.enc").read_bytes()
    assert m.dataset_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    config_json = open_store(staging).read_bytes(CONFIG_FILE)
    assert m.training_config_digest == "sha256:" + hashlib.sha256(config_json).hexdigest()
    assert json.loads(config_json) == RagIndexConfig.from_dict(cfg).to_dict()
    assert {f.path for f in m.files} == {
        "index.faiss",
        "chunks.jsonl",
        "documents.json",
        "index.json",
    }
    assert m.metrics["documents"] == 12 and m.metrics["questions"] == 36
    assert m.metrics["eval_k"] == 3 and 0 <= m.metrics["hit_rate_at_1"] <= 1
    assert m.metrics["hit_rate_at_1"] <= m.metrics["hit_rate_at_k"]
    assert m.metrics["ann_recall_at_10"] == pytest.approx(1.0)  # a dozen docs: HNSW is exact

    # what the data owner (or the attested retrieval service) reads with the run's key
    out = tmp_path / "decrypted"
    decrypt_checkpoint(staging, out, kek=stack.run_key)
    chunks = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    assert len(chunks) == m.metrics["chunks"]
    texts = {d.id: d.text for d in repository.documents}
    for c in chunks:  # every chunk cites its document and offsets exactly
        assert texts[c["doc_id"]][c["start"] : c["end"]] == c["text"]
    documents = json.loads((out / "documents.json").read_text())
    assert [d["sha256"] for d in documents] == [
        "sha256:" + hashlib.sha256(d.text.encode()).hexdigest() for d in repository.documents
    ]
    info = json.loads((out / "index.json").read_text())
    assert info["metrics"] == m.metrics and info["embedder_digest"] == m.base_model_digest
    index = faiss.read_index(str(out / "index.faiss"))
    assert index.ntotal == len(chunks) and index.d == m.metrics["embedding_dim"]
    # the index holds the chunks' vectors: each chunk's own embedding finds it first
    model = Embedder(embedder, max_seq_length=64, batch_size=16)
    probe = [0, len(chunks) // 2, len(chunks) - 1]
    _, ids = index.search(model.embed([chunks[i]["text"] for i in probe]), 1)
    assert np.array_equal(ids[:, 0], probe)

    # no key, document, chunk or question in the logs
    logs = proc.stdout + proc.stderr
    for secret in (stack.dataset_key, stack.run_key):
        assert secret.hex() not in logs
    assert not any(d.text[:40] in logs or d.title in logs for d in repository.documents)
    assert not any(q.question in logs or q.answer in logs for q in repository.questions)
    assert "hit rate@3" in logs


def test_failure_exits_with_one_line_and_uploads_nothing(tmp_path, stack, store, embedder) -> None:
    cfg = make_config(tmp_path, stack, store, embedder)
    cfg["repository"]["uri"] = f"file://{store}/tampered.enc"
    proc = run_subprocess(tmp_path, cfg)
    assert proc.returncode == EXIT_DATASET, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rag-index: error: repository ")
    assert "wrong key or tampered" in lines[0]
    assert staged_files(tmp_path) == []


BAD_INPUTS = [
    pytest.param(
        {"repository__key_uri": "kbs:///default/rag/absent"},
        EXIT_KEY_RELEASE,
        "key release failed for the repository key kbs:///default/rag/absent",
        id="key-absent",
    ),
    pytest.param(
        {"repository__key_uri": "kbs:///default/rag/other"},
        EXIT_DATASET,
        "does not decrypt under kbs:///default/rag/other",
        id="another-resources-key",  # released, but the blob is bound to its own key URI
    ),
    pytest.param(
        {"run_id": "some-other-run"},
        EXIT_KEY_RELEASE,
        "key release denied for the grant kbs:///coco-ai-run/grant/some-other-run",
        id="grant-of-another-run",
    ),
    pytest.param(
        {"repository__uri": "other-key.enc"}, EXIT_DATASET, "does not decrypt", id="other-key"
    ),
    pytest.param(
        {"repository__uri": "tampered.enc"}, EXIT_DATASET, "wrong key or tampered", id="tampered"
    ),
    pytest.param(
        {"repository__uri": "dataset-aad.enc"},
        EXIT_DATASET,
        "does not decrypt",
        id="a-data-set-is-not-a-repository",
    ),
    pytest.param({"repository__uri": "non-utf8.enc"}, EXIT_DATASET, "is not UTF-8", id="non-utf8"),
    pytest.param(
        {"repository__uri": "empty-doc.enc"},
        EXIT_DATASET,
        "'text' must be a non-empty string",
        id="empty-document",
    ),
    pytest.param(
        {"repository__uri": "huge-doc.enc"},
        EXIT_DATASET,
        "'text' longer than 1048576 characters",
        id="huge-document",
    ),
    pytest.param(
        {"repository__uri": "no-questions.enc"},
        EXIT_DATASET,
        "holds no evaluation questions",
        id="no-questions",
    ),
    pytest.param(
        {"repository__uri": "missing.enc"},
        EXIT_STAGING,
        "reading repository",
        id="repository-missing",
    ),
    pytest.param(
        {"tee_memory_bytes": 4096},  # refused before any key is released or document read
        EXIT_RESOURCES,
        "(the config's tee_memory_bytes); give the TEE more memory",
        id="inputs-larger-than-the-tee-memory",
    ),
    pytest.param(
        {"embedder__digest": "sha256:" + "0" * 64},
        EXIT_BASE_MODEL,
        "but the run names sha256:000",
        id="embedder-digest",
    ),
]


def _run_in_process(tmp_path, stack, store, embedder, override) -> tuple[WorkloadError, str]:
    fixed = {
        key: f"file://{store}/{value}" if key == "repository__uri" else value
        for key, value in override.items()
    }
    cfg = RagIndexConfig.from_dict(make_config(tmp_path, stack, store, embedder, **fixed))
    out = io.StringIO()
    with pytest.raises(WorkloadError) as info:
        RagIndexWorkload(cfg, out=out).run()
    return info.value, out.getvalue()


@pytest.mark.parametrize(("override", "code", "message"), BAD_INPUTS)
def test_bad_input_fails_closed(tmp_path, stack, store, embedder, override, code, message) -> None:
    error, log = _run_in_process(tmp_path, stack, store, embedder, override)
    assert error.exit_code == code, error.reason
    assert message in error.reason
    assert staged_files(tmp_path) == []
    assert stack.dataset_key.hex() not in error.reason + log


def test_oversized_repository_is_refused_before_it_is_read(
    tmp_path, stack, store, embedder, monkeypatch
) -> None:
    size = (store / "northwind.enc").stat().st_size
    monkeypatch.setattr(rag_workload, "MAX_REPOSITORY_BYTES", size - 1)
    error, log = _run_in_process(tmp_path, stack, store, embedder, {})
    assert error.exit_code == EXIT_DATASET
    assert f"is {size} bytes, over the limit of {size - 1}" in error.reason
    assert "failed (attempt" not in log  # not retried: a size is not a store failure
    assert staged_files(tmp_path) == []
