"""Incremental re-indexing: a new repository version re-embeds only changed and added documents,
drops removed ones, and gives the index a full build gives; a previous index that does not
authenticate, or is not the one named, fails the run before anything is staged.

The indexing workload runs in process against the real Trustee stand-in and guest emulator
(the fixtures of test_rag_index_e2e). The earlier run's index is what that run would have left:
the first build's files, encrypted under the key the run-key root gives an earlier run id."""

# ruff: noqa: F811 (the module fixtures of test_rag_index_e2e, imported to be shared)

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from coco_ai.crypto import decrypt_checkpoint, encrypt_checkpoint
from coco_ai.run_keys import derive_run_key
from coco_ai.workloads.rag_index.chunker import chunk_documents
from coco_ai.workloads.rag_index.config import ChunkerSettings, RagIndexConfig
from coco_ai.workloads.rag_index.corpus import Repository, revise_repository, to_jsonl
from coco_ai.workloads.rag_index.incremental import (
    ADDED,
    CHANGED,
    REUSED,
    PreviousIndex,
    plan_reuse,
    vector_settings,
)
from coco_ai.workloads.rag_index.workload import RagIndexWorkload
from coco_ai.workloads.tee import EXIT_DATASET, WorkloadError
from tests.workloads.test_rag_index_e2e import (  # noqa: F401 (fixtures)
    embedder,
    make_config,
    repository,
    stack,
    staged_files,
    store,
)

EARLIER_RUN = "run-rag-0"
pytestmark = pytest.mark.timeout(300)


def _version_two(repo: Repository) -> tuple[Repository, dict[str, str]]:
    """The repository fixture's next version: document 0 edited, document 1 removed (with its
    questions), one document added."""
    v2 = revise_repository(len(repo.documents), 11, changed=1, removed=1, added=1)
    assert v2.documents[1:-1] == repo.documents[2:]  # the fixture is generate_repository(12, 11)
    return v2, {
        "edited": repo.documents[0].id,
        "removed": repo.documents[1].id,
        "added": v2.documents[-1].id,
    }


@pytest.fixture(scope="module")
def earlier_index(tmp_path_factory, stack, store, embedder):
    """The first version's index as run EARLIER_RUN left it, and its manifest digest."""
    base = tmp_path_factory.mktemp("earlier")
    cfg = RagIndexConfig.from_dict(make_config(base, stack, store, embedder))
    RagIndexWorkload(cfg, out=io.StringIO()).run()
    plain = base / "plain"
    decrypt_checkpoint(cfg.staging_uri, plain, kek=stack.run_key)
    rekeyed = base / "index"
    manifest = encrypt_checkpoint(
        plain,
        rekeyed,
        kek=derive_run_key(stack.run_key_root, EARLIER_RUN),
        key_uri=f"kbs:///coco-ai-run/checkpoint/{EARLIER_RUN}",
        run_id=EARLIER_RUN,
        meta={"metrics": {}},
    )
    return rekeyed, manifest.digest(), plain


def _put_repository(stack, store: Path, name: str, repo: Repository) -> str:
    from coco_ai.crypto import encrypt_blob
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

    blob = encrypt_blob(
        to_jsonl(repo),
        kek=stack.dataset_key,
        key_uri=stack.dataset_key_uri,
        aad_context=REPOSITORY_AAD,
    )
    (store / name).write_bytes(blob)
    return f"file://{store}/{name}"


def _run(tmp_path, stack, store, embedder, repo_uri, previous=None, **override):
    cfg = make_config(tmp_path, stack, store, embedder, **override)
    cfg["repository"]["uri"] = repo_uri
    if previous is not None:
        cfg["previous_index"] = previous
    config = RagIndexConfig.from_dict(cfg)
    log = io.StringIO()
    result = RagIndexWorkload(config, out=log).run()
    out = tmp_path / "decrypted"
    decrypt_checkpoint(config.staging_uri, out, kek=stack.run_key)
    return result, out, log.getvalue()


def _previous(earlier_index) -> dict[str, str]:
    location, digest, _ = earlier_index
    return {"uri": f"file://{location}", "run_id": EARLIER_RUN, "manifest_digest": digest}


def test_new_version_reembeds_only_changed_and_added_documents(
    tmp_path, stack, store, embedder, repository, earlier_index
) -> None:
    import faiss
    import numpy as np

    v2, which = _version_two(repository)
    uri = _put_repository(stack, store, "northwind-v2.enc", v2)
    result, out, log = _run(tmp_path / "inc", stack, store, embedder, uri, _previous(earlier_index))

    metrics = result.metrics
    assert metrics["documents_reused"] == len(v2.documents) - 2
    assert metrics["documents_changed"] == 1 and metrics["documents_added"] == 1
    assert metrics["documents_removed"] == 1
    settings = RagIndexConfig.from_dict(make_config(tmp_path, stack, store, embedder)).chunker
    fresh_docs = [d for d in v2.documents if d.id in (which["edited"], which["added"])]
    assert metrics["chunks_embedded"] == len(chunk_documents(fresh_docs, settings))
    assert metrics["chunks_embedded"] < metrics["chunks"]

    documents = json.loads((out / "documents.json").read_text())
    status = {d["id"]: d["status"] for d in documents}
    assert status[which["edited"]] == CHANGED and status[which["added"]] == ADDED
    assert which["removed"] not in status
    assert sum(s == REUSED for s in status.values()) == metrics["documents_reused"]
    info = json.loads((out / "index.json").read_text())
    assert info["incremental"]["removed"] == [which["removed"]]
    assert info["incremental"]["previous_run_id"] == EARLIER_RUN
    assert "incremental: reused" in log and which["removed"] not in log  # ids stay encrypted

    # the same index a full build of the new version gives
    full, full_out, _ = _run(tmp_path / "full", stack, store, embedder, uri)
    assert full.metrics["chunks_embedded"] == full.metrics["chunks"] == metrics["chunks"]
    assert full.metrics["documents_added"] == len(v2.documents)
    assert (out / "chunks.jsonl").read_text() == (full_out / "chunks.jsonl").read_text()
    inc_vectors = faiss.read_index(str(out / "index.faiss"))
    full_vectors = faiss.read_index(str(full_out / "index.faiss"))
    a = inc_vectors.reconstruct_n(0, inc_vectors.ntotal)
    b = full_vectors.reconstruct_n(0, full_vectors.ntotal)
    assert np.allclose(a, b, atol=1e-5)
    for name in ("hit_rate_at_1", "hit_rate_at_k", "mrr_at_k"):
        assert metrics[name] == pytest.approx(full.metrics[name])


def test_the_data_owner_reads_which_documents_were_reused_in_the_report(
    tmp_path, stack, store, embedder, repository, earlier_index, capsys
) -> None:
    """`coco-ai report` decrypts the index's documents.json and index.json locally (the ids and
    statuses never leave the TEE in plaintext otherwise)."""
    import html

    from coco_ai.cli import main

    v2, which = _version_two(repository)
    uri = _put_repository(stack, store, "northwind-v2-report.enc", v2)
    result, _, _ = _run(tmp_path / "inc", stack, store, embedder, uri, _previous(earlier_index))
    root = tmp_path / "root.key"
    root.write_bytes(stack.run_key_root)
    page = tmp_path / "report.html"
    args = [result.staging_uri, "--run-key-root-file", str(root), "--out", str(page)]
    assert main(["report", *args]) == 0
    text = page.read_text()
    assert "RAG index report" in text and html.escape(result.manifest_digest) in text
    for doc in v2.documents:
        assert html.escape(doc.title) in text
    rows = dict(
        re.findall(
            r"<code>([^<]+)</code></td><td>[^<]*</td><td>[^<]*</td><td>\d+</td>"
            r"<td class='status'>(\w+)</td>",
            text,
        )
    )
    assert rows[which["edited"]] == CHANGED and rows[which["added"]] == ADDED
    assert sum(v == REUSED for v in rows.values()) == len(v2.documents) - 2
    assert f"<span id='removed'>{which['removed']}</span>" in text
    assert f"{result.metrics['hit_rate_at_k']:.4f}" in text

    page.unlink()
    root.write_bytes(bytes(32))  # another root: no file authenticates, no page is written
    assert main(["report", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("coco-ai report: error: ") and result.staging_uri in err
    assert not page.exists()


def test_changed_settings_reuse_nothing(
    tmp_path, stack, store, embedder, repository, earlier_index
) -> None:
    uri = f"file://{store}/northwind.enc"
    result, out, log = _run(
        tmp_path,
        stack,
        store,
        embedder,
        uri,
        _previous(earlier_index),
        chunker={"max_words": 24, "overlap_words": 4},
    )
    assert result.metrics["documents_reused"] == 0
    assert result.metrics["documents_changed"] == len(repository.documents)
    assert result.metrics["chunks_embedded"] == result.metrics["chunks"]
    assert "nothing reused: settings differ: chunker" in log
    info = json.loads((out / "index.json").read_text())
    assert info["incremental"]["nothing_reused_because"] == "settings differ: chunker"


def _corrupted(earlier_index, tmp_path: Path) -> str:
    import shutil

    location, _, _ = earlier_index
    copy = tmp_path / "corrupted"
    shutil.copytree(location, copy)
    victim = next(p for p in sorted((copy / "objects").iterdir()) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0x01
    victim.write_bytes(bytes(data))
    return f"file://{copy}"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        pytest.param(
            lambda p, d, t: {**p, "manifest_digest": "sha256:" + "1" * 64},
            "is not the one named",
            id="other-manifest",
        ),
        pytest.param(
            lambda p, d, t: {**p, "run_id": "run-rag-9"},  # the key of another run: no file opens
            "cannot be reused",
            id="named-for-another-run",
        ),
        pytest.param(
            lambda p, d, t: {**p, "uri": _corrupted(d, t)},
            "cannot be reused",
            id="tampered-object",
        ),
        pytest.param(
            lambda p, d, t: {**p, "uri": f"file://{t}/absent"},
            "cannot be reused",
            id="absent",
        ),
    ],
)
def test_previous_index_that_does_not_authenticate_fails_closed(
    tmp_path, stack, store, embedder, earlier_index, tamper, message
) -> None:
    previous = tamper(_previous(earlier_index), earlier_index, tmp_path)
    cfg = make_config(tmp_path, stack, store, embedder)
    cfg["previous_index"] = previous
    with pytest.raises(WorkloadError) as info:
        RagIndexWorkload(RagIndexConfig.from_dict(cfg), out=io.StringIO()).run()
    assert info.value.exit_code == EXIT_DATASET, info.value.reason
    assert message in info.value.reason
    assert staged_files(tmp_path) == []


def test_config_refuses_a_run_reusing_its_own_index(tmp_path, stack, store, embedder) -> None:
    from coco_ai.workloads.finetune.config import ConfigError

    cfg = make_config(tmp_path, stack, store, embedder)
    cfg["previous_index"] = {"uri": "file:///x", "run_id": cfg["run_id"], "manifest_digest": "x"}
    with pytest.raises(ConfigError, match=r"previous_index\.manifest_digest"):
        RagIndexConfig.from_dict(cfg)
    cfg["previous_index"]["manifest_digest"] = "sha256:" + "0" * 64
    with pytest.raises(ConfigError, match="cannot reuse its own run's index"):
        RagIndexConfig.from_dict(cfg)


def test_plan_reuse_compares_text_title_and_every_vector_setting(repository) -> None:
    settings = vector_settings("sha256:" + "a" * 64, {"max_words": 32}, {"max_seq_length": 64})
    docs = repository.documents[:3]
    chunks = chunk_documents(docs, ChunkerSettings())
    by_doc: dict[str, list] = {}
    for i, c in enumerate(chunks):
        by_doc.setdefault(c.doc_id, []).append((c.text, [float(i)]))
    from coco_ai.workloads.rag_index.index import document_digest

    previous = PreviousIndex(
        settings=settings,
        documents={d.id: {"sha256": document_digest(d), "title": d.title} for d in docs},
        chunks=by_doc,
    )
    retitled = (dataclasses.replace(docs[0], title="Another title"), *docs[1:])
    plan = plan_reuse(previous, retitled, chunks, settings)
    assert plan.status == {docs[0].id: CHANGED, docs[1].id: REUSED, docs[2].id: REUSED}
    assert sorted(plan.reused) == [i for i, c in enumerate(chunks) if c.doc_id != docs[0].id]
    assert all(plan.reused[i] == [float(i)] for i in plan.reused)  # each chunk its own vector
    for key, value in (("max_seq_length", 128), ("embedder_digest", "sha256:" + "b" * 64)):
        full = plan_reuse(previous, docs, chunks, {**settings, key: value})
        assert full.reused == {} and full.reason == f"settings differ: {key}"
    assert plan_reuse(None, docs, chunks, settings).counts()["documents_added"] == 3
