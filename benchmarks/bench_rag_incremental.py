"""Incremental re-indexing against a full rebuild, and the indexing workload's memory as the
corpus grows, in one run.

``incremental``: the data owner's repository gets a new version (``--changed`` share of documents
edited, ``--removed`` dropped, ``--added`` new); the whole confidential workload (Trustee
stand-in, guest emulator, key release, decrypt, chunk, embed, FAISS, evaluate, encrypt, sign,
stage) indexes it twice per round, alternating: once building on the earlier version's index
(``previous_index``, what the DAG does by default) and once from scratch. The headline is the
full build's time over the incremental one (a speed-up; same process, same embedder).

``memory``: the same workload as a child process (``python -m coco_ai.workloads.rag_index``, the
path the product runs) on corpora of 1×, 2×, 5× and 10× the base size; peak RSS of each child
(``wait4``) and the growth per document and per chunk, fitted by least squares.

    nice -n 5 .venv/bin/python benchmarks/bench_rag_incremental.py [--quick] [--rounds N]

``--quick``: the tiny random embedder and a 12-document base (fixed costs dominate); the default
uses all-MiniLM-L6-v2 and the generator's largest repository (35 documents) as the base.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALES = (1, 2, 5, 10)


def scaled_repository(base_docs: int, copies: int):
    """``copies`` generated repositories (seeds 0…), ids made unique: a corpus ``copies`` × as
    large with the same statistics (the generator alone holds at most 35 documents)."""
    from coco_ai.workloads.rag_index.corpus import Repository, generate_repository

    documents, questions = [], []
    for seed in range(copies):
        repo = generate_repository(base_docs, seed)
        documents += [dataclasses.replace(d, id=f"{d.id}-s{seed}") for d in repo.documents]
        questions += [dataclasses.replace(q, doc_id=f"{q.doc_id}-s{seed}") for q in repo.questions]
    return Repository(tuple(documents), tuple(questions))


def main() -> None:
    import torch

    from coco_ai.crypto import decrypt_checkpoint, encrypt_blob, encrypt_checkpoint
    from coco_ai.devstack.workload import start_local_stack
    from coco_ai.run_keys import derive_run_key
    from coco_ai.workloads.kinds import RAG_INDEX
    from coco_ai.workloads.models import model_digest
    from coco_ai.workloads.rag_index.config import RagIndexConfig
    from coco_ai.workloads.rag_index.corpus import capacity, revise_repository, to_jsonl
    from coco_ai.workloads.rag_index.embedder import build_tiny_embedder, minilm_dir
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD, RagIndexWorkload

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny embedder, 12 documents")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changed", type=float, default=0.1, help="share of documents edited")
    parser.add_argument("--removed", type=float, default=0.05, help="share of documents dropped")
    parser.add_argument("--added", type=float, default=0.05, help="new documents, as a share")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rag-inc-"))
    base = 12 if args.quick else capacity()
    n = base - max(1, round(args.added * base))  # room for the added documents
    changed = max(1, round(args.changed * n))
    removed = max(1, round(args.removed * n))
    added = base - n
    v1 = revise_repository(n)
    v2 = revise_repository(n, changed=changed, removed=removed, added=added)
    if args.quick:
        texts = [d.text for d in scaled_repository(base, max(SCALES)).documents]
        embedder_dir = build_tiny_embedder(tmp / "tiny", texts)
    else:
        embedder_dir = minilm_dir(tmp / "cache")
    embedder = {"path": str(embedder_dir), "digest": model_digest(embedder_dir)}

    run_id = "run-bench-rag-inc"
    earlier = "run-bench-rag-inc-0"
    with start_local_stack(
        tmp / "trustee", run_id, kind=RAG_INDEX, dataset_key_path="default/rag/bench"
    ) as stack:

        def publish(name: str, repo) -> str:
            blob = encrypt_blob(
                to_jsonl(repo),
                kek=stack.dataset_key,
                key_uri=stack.dataset_key_uri,
                aad_context=REPOSITORY_AAD,
            )
            (tmp / name).write_bytes(blob)
            return f"file://{tmp}/{name}"

        def config(staging: str, repo_uri: str, previous: dict | None = None) -> dict:
            cfg = {
                "run_id": run_id,
                "guest_api_url": stack.guest_url,
                "staging_uri": f"file://{tmp}/staging/{staging}",
                "checkpoint_key_uri": stack.checkpoint_key_uri,
                "run_key_root_uri": stack.run_key_root_uri,
                "repository": {"uri": repo_uri, "key_uri": stack.dataset_key_uri},
                "embedder": embedder,
            }
            if previous is not None:
                cfg["previous_index"] = previous
            return cfg

        def index(cfg: dict):
            return RagIndexWorkload(RagIndexConfig.from_dict(cfg), out=io.StringIO()).run()

        # the earlier version's index as an earlier run of the pipeline leaves it
        first = index(config("v1", publish("v1.enc", v1)))
        plain = tmp / "v1-plain"
        decrypt_checkpoint(first.staging_uri, plain, kek=stack.run_key)
        manifest = encrypt_checkpoint(
            plain,
            tmp / "v1-index",
            kek=derive_run_key(stack.run_key_root, earlier),
            key_uri=f"kbs:///coco-ai-run/checkpoint/{earlier}",
            run_id=earlier,
            meta={"metrics": {}},
        )
        previous = {
            "uri": f"file://{tmp}/v1-index",
            "run_id": earlier,
            "manifest_digest": manifest.digest(),
        }
        v2_uri = publish("v2.enc", v2)

        timings: dict[str, list[float]] = {"incremental": [], "full": []}
        metrics: dict[str, dict] = {}
        for r in range(args.rounds):
            order = ("incremental", "full") if r % 2 == 0 else ("full", "incremental")
            for name in order:
                cfg = config(f"{name}-{r}", v2_uri, previous if name == "incremental" else None)
                start = time.perf_counter()
                metrics[name] = index(cfg).metrics
                timings[name].append(time.perf_counter() - start)

        memory = [] if args.skip_memory else measure_memory(tmp, base, config, publish)

    inc, full = metrics["incremental"], metrics["full"]
    summary = {
        "benchmark": "rag_index_incremental",
        "embedder": "tiny-bert" if args.quick else "all-MiniLM-L6-v2",
        "rounds": args.rounds,
        "load_average_1m": os.getloadavg()[0],
        "documents": inc["documents"],
        "chunks": inc["chunks"],
        "documents_reused": inc["documents_reused"],
        "documents_changed": inc["documents_changed"],
        "documents_added": inc["documents_added"],
        "documents_removed": inc["documents_removed"],
        "chunks_embedded_incremental": inc["chunks_embedded"],
        "chunks_embedded_full": full["chunks_embedded"],
        "incremental_wall_s": statistics.median(timings["incremental"]),
        "full_wall_s": statistics.median(timings["full"]),
        # the headline: how many times faster the default (incremental) path is than a rebuild
        "speedup_full_over_incremental": statistics.median(timings["full"])
        / statistics.median(timings["incremental"]),
        "same_retrieval_quality": all(
            abs(inc[k] - full[k]) < 1e-9 for k in ("hit_rate_at_1", "hit_rate_at_k", "mrr_at_k")
        ),
        "memory": memory,
    }
    if len(memory) > 1:
        summary["rss_growth_bytes_per_document"] = _slope(memory, "documents")
        summary["rss_growth_bytes_per_chunk"] = _slope(memory, "chunks")
        summary["rss_10x_over_1x"] = memory[-1]["peak_rss_bytes"] / memory[0]["peak_rss_bytes"]
    print(json.dumps(summary, indent=1))


def measure_memory(tmp: Path, base: int, config, publish) -> list[dict]:
    """Peak RSS of the indexing workload process per corpus scale (full builds)."""
    rows = []
    for scale in SCALES:
        repo = scaled_repository(base, scale)
        repo_uri = publish(f"mem-{scale}.enc", repo)
        path = tmp / f"mem-{scale}.json"
        path.write_text(json.dumps(config(f"mem-{scale}", repo_uri)))
        log = tmp / f"mem-{scale}.log"
        with log.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "coco_ai.workloads.rag_index", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        text = log.read_text()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"scale {scale}: the workload failed: {text[-2000:]}")
        chunks = int(re.search(r"(\d+) of (\d+) chunks embedded", text).group(2))
        rows.append(
            {
                "scale": scale,
                "documents": len(repo.documents),
                "chunks": chunks,
                "repository_bytes": Path(repo_uri.removeprefix("file://")).stat().st_size,
                "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
            }
        )
    return rows


def _slope(rows: list[dict], x: str) -> float:
    xs = [r[x] for r in rows]
    ys = [r["peak_rss_bytes"] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )


if __name__ == "__main__":
    main()
