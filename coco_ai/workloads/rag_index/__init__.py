"""The confidential RAG indexing workload: ``python -m coco_ai.workloads.rag_index --config FILE``.

``config``, ``corpus`` and ``chunker`` are standard library only; ``embedder`` (torch,
transformers) and ``index`` (faiss) hold the heavy parts; ``workload`` wires them to the guest
API, the checkpoint format and storage (coco_ai.workloads.tee).
"""
