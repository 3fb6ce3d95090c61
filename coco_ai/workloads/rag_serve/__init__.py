"""The attested retrieval service: ``coco-ai rag serve``, ``python -m coco_ai.workloads.rag_serve``.

It runs as its own run in a TEE (role ``rag_serve``): it attests, derives the key of the index
run its initdata names, verifies and decrypts that run's promoted index into memory, and serves
retrieval and extractive answers with citations over HTTP, to callers whose credential Trustee
released to them after attestation; callers verify the service's own attestation first
(:mod:`coco_ai.workloads.rag_serve.client`). Design: docs/ARCHITECTURE.md ("Retrieval
service"); wire format: docs/formats/rag.md §5. No Airflow import.
"""
