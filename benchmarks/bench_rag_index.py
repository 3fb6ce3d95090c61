"""The cost of confidentiality in the RAG indexing workload, in one run.

``confidential``: the whole workload (Trustee stand-in over TLS, guest-components emulator, key
release after attestation, the encrypted repository decrypted, chunk + embed + FAISS index +
evaluation, the index encrypted, TEE signature, upload to a file:// staging store). ``bare``:
the same computation (the workload's own ``_index`` step: chunk, embed, index, evaluate, write the
index directory) on the plaintext repository with the embedder already on disk, no keys, no
crypto. Same process, same embedder, rounds alternate. Goal (issue 13): throughput of the
confidential run ≥ 0.90 of bare (overhead ≤ 10 %).

The box is shared (2 cores): ratios use process CPU seconds (one torch thread) as well as wall
seconds; both are printed.

    nice -n 5 .venv/bin/python benchmarks/bench_rag_index.py [--quick] [--rounds N]

``--quick`` uses the tiny random embedder (fixed costs dominate: a floor, not the figure);
the default uses all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from coco_ai.crypto import encrypt_blob
    from coco_ai.devstack.workload import start_local_stack
    from coco_ai.workloads.kinds import RAG_INDEX
    from coco_ai.workloads.models import model_digest
    from coco_ai.workloads.rag_index.config import RagIndexConfig
    from coco_ai.workloads.rag_index.corpus import generate_repository, to_jsonl
    from coco_ai.workloads.rag_index.embedder import Embedder, build_tiny_embedder, minilm_dir
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD, RagIndexWorkload

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny embedder, 12 documents")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rag-"))
    repo = generate_repository(12 if args.quick else 35, seed=3)
    if args.quick:
        embedder_dir = build_tiny_embedder(tmp / "tiny", [d.text for d in repo.documents])
    else:
        embedder_dir = minilm_dir(tmp / "cache")

    run_id = "run-bench-rag"
    with start_local_stack(
        tmp / "trustee", run_id, kind=RAG_INDEX, dataset_key_path="default/rag/bench"
    ) as stack:
        (tmp / "repo.enc").write_bytes(
            encrypt_blob(
                to_jsonl(repo),
                kek=stack.dataset_key,
                key_uri=stack.dataset_key_uri,
                aad_context=REPOSITORY_AAD,
            )
        )

        def config(round_no: int) -> RagIndexConfig:
            return RagIndexConfig.from_dict(
                {
                    "run_id": run_id,
                    "guest_api_url": stack.guest_url,
                    "staging_uri": f"file://{tmp}/staging/{round_no}",
                    "checkpoint_key_uri": stack.checkpoint_key_uri,
                    "run_key_root_uri": stack.run_key_root_uri,
                    "repository": {
                        "uri": f"file://{tmp}/repo.enc",
                        "key_uri": stack.dataset_key_uri,
                    },
                    "embedder": {"path": str(embedder_dir), "digest": model_digest(embedder_dir)},
                }
            )

        def bare(round_no: int) -> int:
            cfg = config(round_no)
            workload = RagIndexWorkload(cfg, out=io.StringIO())
            embedder = Embedder(
                embedder_dir,
                max_seq_length=cfg.embedding.max_seq_length,
                batch_size=cfg.embedding.batch_size,
            )
            out = tmp / f"bare-{round_no}"
            out.mkdir()
            return workload._index(repo, embedder, out, None)["chunks"]

        def confidential(round_no: int) -> int:
            return RagIndexWorkload(config(round_no), out=io.StringIO()).run().metrics["chunks"]

        results: dict[str, list[tuple[float, float, int]]] = {"bare": [], "confidential": []}
        for r in range(args.rounds):
            order = ("bare", "confidential") if r % 2 == 0 else ("confidential", "bare")
            for name in order:
                wall, cpu = time.perf_counter(), time.process_time()
                chunks = (bare if name == "bare" else confidential)(r)
                results[name].append(
                    (time.perf_counter() - wall, time.process_time() - cpu, chunks)
                )

    def median(name: str, i: int) -> float:
        return statistics.median(x[i] for x in results[name])

    chunks = results["bare"][0][2]
    summary = {
        "benchmark": "rag_index_confidential_overhead",
        "embedder": "tiny-bert" if args.quick else "all-MiniLM-L6-v2",
        "documents": len(repo.documents),
        "chunks": chunks,
        "rounds": args.rounds,
        "bare_wall_s": median("bare", 0),
        "confidential_wall_s": median("confidential", 0),
        "bare_cpu_s": median("bare", 1),
        "confidential_cpu_s": median("confidential", 1),
        "docs_per_s_confidential_wall": len(repo.documents) / median("confidential", 0),
        "chunks_per_s_confidential_wall": chunks / median("confidential", 0),
        # throughput ratios confidential / bare (goal >= 0.90)
        "ratio_wall": median("bare", 0) / median("confidential", 0),
        "ratio_cpu": median("bare", 1) / median("confidential", 1),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
