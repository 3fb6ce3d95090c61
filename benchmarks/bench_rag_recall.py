"""The RAG index engine's recall@10 and query speed against exact search, in one run.

FAISS HNSW (inner product, the rag_index workload's default settings: M 32, efConstruction 200,
efSearch 128) against FAISS flat (exact) over the same vectors and queries. The vectors are unit
rows drawn as a Gaussian mixture (clusters, like sentence embeddings of a topical corpus; no
embedder run, so the figure is about the index alone); queries are perturbed corpus rows.

    nice -n 5 .venv/bin/python benchmarks/bench_rag_recall.py [--quick]

Prints JSON: recall@10 of HNSW vs exact (goal >= 0.95); queries/s of each, batched (500 at
once) and one at a time (as a retrieval service asks), and their ratios.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import faiss
    import numpy as np

    from coco_ai.workloads.rag_index import index as engine
    from coco_ai.workloads.rag_index.config import IndexSettings

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20k vectors instead of 100k")
    args = parser.parse_args()
    n, dim, clusters, queries, k = (20_000 if args.quick else 100_000), 384, 200, 500, 10
    faiss.omp_set_num_threads(1)  # a shared 2-core box: one thread, comparable figures
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    q = vectors[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    start = time.perf_counter()
    hnsw = engine.build_index(vectors, IndexSettings())
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _, approx = engine.search(hnsw, q, k)
    hnsw_s = time.perf_counter() - start
    start = time.perf_counter()
    _, exact = engine.exact_search(vectors, q, k)
    exact_s = time.perf_counter() - start
    # one query at a time, as the retrieval service asks: flat search cannot batch them into GEMM
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    single = {}
    for name, index in (("hnsw", hnsw), ("exact", flat)):
        start = time.perf_counter()
        for row in q[:100]:
            index.search(row[None, :], k)
        single[name] = (time.perf_counter() - start) / 100
    print(
        json.dumps(
            {
                "benchmark": "rag_index_recall",
                "vectors": n,
                "dimension": dim,
                "queries": queries,
                "engine": f"faiss {faiss.__version__} HNSW, M 32, efConstruction 200, efSearch 128",
                "recall_at_10_vs_exact": engine.recall_vs_exact(approx, exact),
                "hnsw_build_seconds": build_s,
                "hnsw_queries_per_s": queries / hnsw_s,
                "exact_queries_per_s": queries / exact_s,
                "batch_speedup_vs_exact": exact_s / hnsw_s,
                "single_query_ms_hnsw": 1000 * single["hnsw"],
                "single_query_ms_exact": 1000 * single["exact"],
                "single_query_speedup_vs_exact": single["exact"] / single["hnsw"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
