"""The RAG half of `coco-ai demo`: index the data owner's confidential repository with
`confidential_rag_index`, then start the attested retrieval service on the promoted index and ask
it one of the data owner's held-out questions as an attested caller — and once as an unattested
one, which must get 401 and nothing else.

Everything runs on the embedded default (the Trustee stand-in, emulated TEEs with sample
evidence); the answer's citations point into the documents, which never leave the TEEs in
plaintext. Returns references, the answer and its citations (public once the data owner chose to
show them: here the data owner runs the demo).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from coco_ai.devstack.stack import RAG_DAG_ID, StackInfo, local_image_reference

CALLER_ID = "demo-caller"


def run_rag_demo(
    info: StackInfo,
    *,
    progress: Callable[[str], None] = lambda message: None,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Index, promote, serve, ask; the summary's ``rag`` section."""
    client = info.client()
    try:
        summary = client.run_to_end(
            RAG_DAG_ID,
            {},
            note="coco-ai demo: RAG index",
            timeout_s=timeout_s,
            progress=progress,
            what=" through the REST API",
        )
        if summary["state"] != "success":
            return summary
        run_id = summary["run_id"]
        promoted = client.xcom(RAG_DAG_ID, run_id, "attested_promotion")
        refs = client.xcom(RAG_DAG_ID, run_id, "key_release")
    finally:
        client.close()
    summary["index"] = {
        "model_name": promoted["model_name"],
        "version": promoted["version"],
        "manifest_digest": promoted["manifest_digest"],
        "metrics": {
            k: promoted["metrics"][k]
            for k in ("documents", "chunks", "hit_rate_at_k", "ann_recall_at_10")
            if k in promoted["metrics"]
        },
    }
    summary["service"] = _ask_the_service(info, refs["run_id"], promoted, progress)
    return summary


def _ask_the_service(info: StackInfo, index_run_id: str, promoted: dict, progress) -> dict:
    from coco_ai.devstack.rag_service import start_rag_service
    from coco_ai.owner_policy import verify_owner_policy
    from coco_ai.workloads.rag_index.corpus import generate_repository
    from coco_ai.workloads.rag_serve.client import ServiceTrust
    from coco_ai.workloads.rag_serve.identity import issue_caller_credential, publish_index_key

    root, state = Path(info.root), Path(info.trustee_state_dir)
    tls_ca = (state / "tls-ca" / "ca.pem").read_bytes()
    image = local_image_reference()
    # The data owner publishes the promoted index's key for its services (one key, never the
    # root) and admits the demo's caller: a credential only its attested TEE receives.
    with info.data_owner_admin() as admin:
        publish_index_key(admin, index_run_id, info.data_owner_run_key(index_run_id))
        issue_caller_credential(admin, CALLER_ID)
    policy = verify_owner_policy(
        Path(info.owner_policy).read_bytes(), Path(info.owner_public_key).read_bytes()
    ).policy
    question = generate_repository().questions[0]  # the data owner's held-out evaluation set
    trust = ServiceTrust.from_owner_policy(
        policy, index_manifest_digest=promoted["manifest_digest"]
    )
    with open(root / "logs" / "rag-service.log", "a") as log:
        service = start_rag_service(
            root / "rag-service",
            trustee_url=info.trustee_url,
            trustee_ca_pem=tls_ca,
            trust_anchor_pem=(state / "ca.pem").read_bytes(),
            image=image,
            run_id=f"{index_run_id}-serve",
            index_run_id=index_run_id,
            index_uri=promoted["checkpoint_uri"],
            index_manifest_digest=promoted["manifest_digest"],
            embedder_path=info.embedder,
            callers=[CALLER_ID],
            out=log,
        )
        try:
            chat, unattested = _ask(info, service, tls_ca, image, trust, question, progress)
        finally:
            service.stop()
    citations = chat["citations"]
    return {
        "question": question.question,
        "answer": chat["choices"][0]["message"]["content"],
        "citations": [
            {"doc_id": x["doc_id"], "chunk": x["chunk"], "title": x["title"]} for x in citations
        ],
        "cites_the_answering_document": bool(citations)
        and citations[0]["doc_id"] == question.doc_id,
        "unattested_caller_status": unattested.status_code,
    }


def _ask(info: StackInfo, service, tls_ca: bytes, image: str, trust, question, progress):
    """(chat answer of an attested caller, the response an unattested one gets)."""
    import httpx

    from coco_ai.devstack.rag_service import start_caller
    from coco_ai.guest.client import GuestClient
    from coco_ai.workloads.rag_serve.client import RagServiceClient

    caller = start_caller(
        info.trustee_url, tls_ca, caller_id=CALLER_ID, run_id="demo-caller-run", image=image
    )
    try:
        progress(f"retrieval service on {service.url}; asking as attested caller {CALLER_ID}")
        with (
            GuestClient(caller.url) as guest,
            RagServiceClient.from_guest(service.url, trust, caller_id=CALLER_ID, guest=guest) as c,
        ):
            chat = c.chat([{"role": "user", "content": question.question}], top_k=3)
    finally:
        caller.stop()
    unattested = httpx.post(
        service.url + "/v1/retrieve",
        json={"query": question.question},
        verify=service.tls_context(),
        trust_env=False,
        timeout=60,
    )
    return chat, unattested
