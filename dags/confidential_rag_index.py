"""Confidential RAG indexing: attest, release keys, index a document repository in a TEE,
verify, promote the encrypted index, revoke.

The fine-tune's pipeline and operators with another workload kind (``rag_index``): the TEE
decrypts the data owner's repository in memory, chunks and embeds it, builds a FAISS index,
encrypts it under the run's key and signs its manifest with the attested key; promotion verifies
the same chain as for a model and registers the index under the owner policy's name for RAG
indexes. Deployment settings come from ``[coco_ai]`` (``documents_uri``, ``documents_key_uri``,
``embedder``, ``reindex_cron`` …); per-run choices from the trigger form below.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param, conf

from coco_ai.kbs.resource_path import RESOURCE_URI_PATTERN
from coco_ai_airflow.keys import KeyReleaseOperator
from coco_ai_airflow.pipeline import (
    attestation_gate,
    confidential_pipeline,
    encrypted_upload,
    revoke_keys,
    schedule,
    tee_params,
)
from coco_ai_airflow.promotion import AttestedModelPromotionOperator, ServedVersionOperator
from coco_ai_airflow.workload import ConfidentialWorkloadOperator


def _setting(option: str) -> str:
    return conf.get("coco_ai", option)


#: Data owners publish a new encrypted repository version as an event on this Asset, with extra
#: {"documents_uri": "<object URI>", "documents_key_uri": "kbs:///..."}; each event starts a run.
DOCUMENTS = Asset(name="coco_ai_rag_documents", uri="x-coco-ai://datasets/rag-documents")
#: Each promotion emits an event here carrying references only (registry version, digests).
PROMOTED_INDEX = Asset(name="coco_ai_promoted_index", uri="x-coco-ai://indexes/rag")

DATA, CHUNKS, INDEX, PROMOTE = ("Documents", "Chunking", "Vector index", "Promotion gate")

PARAMS = {
    "documents_uri": Param(
        _setting("documents_uri"),
        type="string",
        title="Document repository URI",
        description="Object-store URI of the encrypted document repository (coco-ai rag "
        "encrypt). Only the TEE can decrypt it; Airflow sees the URI.",
        section=DATA,
    ),
    "documents_key_uri": Param(
        _setting("documents_key_uri"),
        type="string",
        pattern=RESOURCE_URI_PATTERN,  # the KBS client's own rule, for the form
        title="Repository key (KBS resource)",
        description="kbs:///repo/type/tag of the repository's key in Trustee; released only to "
        "attested TEEs.",
        section=DATA,
    ),
    "embedder": Param(
        _setting("embedder"),
        type="string",
        title="Embedder",
        description="Sentence-embedder directory (path or object-store URI); its digest is "
        "recorded in the signed manifest and must be approved by the data owner.",
        section=DATA,
    ),
    "max_words": Param(
        32, type="integer", minimum=8, maximum=512, title="Chunk size (words)", section=CHUNKS
    ),
    "overlap_words": Param(
        8,
        type="integer",
        minimum=0,
        maximum=256,
        title="Chunk overlap (words)",
        description="Less than the chunk size.",
        section=CHUNKS,
    ),
    "incremental": Param(
        True,
        type="boolean",
        title="Incremental",
        description="Reuse the served index's embeddings for documents that did not change "
        "(same text, chunking and embedder); off: embed every document again. The TEE reuses "
        "nothing that does not authenticate under the earlier run's key.",
        section=INDEX,
    ),
    "engine": Param(
        "faiss-hnsw",
        type="string",
        enum=["faiss-hnsw", "faiss-flat"],
        values_display={
            "faiss-hnsw": "FAISS HNSW (approximate, fast)",
            "faiss-flat": "FAISS flat (exact)",
        },
        title="Index engine",
        section=INDEX,
    ),
    "ef_search": Param(
        128,
        type="integer",
        minimum=8,
        maximum=4096,
        title="HNSW efSearch",
        description="Search breadth stored in the index (HNSW only).",
        section=INDEX,
    ),
    "eval_k": Param(
        5, type="integer", minimum=1, maximum=100, title="Hit rate @k (k)", section=INDEX
    ),
    **tee_params(_setting("default_tee"), "indexing"),
    "min_hit_rate_at_k": Param(
        None,
        type=["null", "number"],
        minimum=0,
        maximum=1,
        title="Minimum hit rate @k",
        description="Promote only if at least this share of the owner's held-out questions "
        "finds its document in the top k. Empty: the data owner's floor. May only tighten the "
        "owner's signed policy; a looser value fails the run.",
        section=PROMOTE,
    ),
    "min_ann_recall_at_10": Param(
        None,
        type=["null", "number"],
        minimum=0,
        maximum=1,
        title="Minimum recall@10 vs exact search",
        description="Promote only if the approximate index returns at least this share of the "
        "exact top 10. Empty: the data owner's floor (0.95 unless the policy says otherwise). "
        "May only tighten it.",
        section=PROMOTE,
    ),
}

with DAG(
    dag_id="confidential_rag_index",
    description="Encrypted vector index of a confidential document repository, built in a TEE "
    "with attested key release and promotion",
    doc_md=__doc__,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    # re-index when a new repository version lands and, if reindex_cron is set, by the clock
    schedule=schedule(DOCUMENTS, _setting("reindex_cron")),
    catchup=False,
    max_active_runs=conf.getint("coco_ai", "max_active_runs"),
    # Only the idempotent tasks set retries; a short delay suits transient network errors.
    default_args={"retry_delay": timedelta(seconds=15)},
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["confidential-computing", "coco", "rag"],
) as dag:
    gate = attestation_gate()
    key_release = KeyReleaseOperator(
        task_id="key_release",
        retries=2,  # the grant goes to a path fixed by the run id: writing it again is harmless
        workload="rag_index",
        inputs={
            "documents": {
                "uri": "{{ params.documents_uri }}",
                "key_uri": "{{ params.documents_key_uri }}",
            },
            "embedder": {"uri": "{{ params.embedder }}"},
        },
        doc_md="""Pins the inputs (digests of the encrypted repository and of the embedder),
builds this run's initdata (KBS URL and CA, workload rag_index, run id, key references, image
digest) and writes the run's grant to Trustee: only a TEE whose attested initdata names this run
obtains it, and with it derives the run's index key from the data owner's root. XCom holds
references only.""",
    )
    served_index = ServedVersionOperator(
        task_id="served_index",
        workload="rag_index",
        enabled="{{ params.incremental }}",
        doc_md="""The registry's served index (the owner policy's name for RAG indexes, the
serving alias): its URI, run id and manifest digest, which the indexing workload may build on.
References only, and no trust: the TEE reuses an embedding only from an index that authenticates
under that run's key and for a document whose text and settings are unchanged.""",
    )
    confidential_rag_index = ConfidentialWorkloadOperator(
        task_id="confidential_rag_index",
        run_refs=key_release.output,
        tee="{{ params.tee }}",
        gpu_count="{{ params.gpu_count }}",
        settings={
            "chunker": {
                "max_words": "{{ params.max_words }}",
                "overlap_words": "{{ params.overlap_words }}",
            },
            "index": {"engine": "{{ params.engine }}", "ef_search": "{{ params.ef_search }}"},
            "evaluation": {"k": "{{ params.eval_k }}"},
            "previous_index": served_index.output,
        },
        doc_md="""Indexing inside the TEE. The workload fetches the repository and index keys
from the confidential data hub (after attestation), decrypts the documents in memory, chunks and
embeds them, builds the FAISS index, measures retrieval on the owner's held-out questions,
encrypts the index and signs its manifest with the attested TEE key. No document, chunk,
embedding or question leaves it in plaintext.""",
    )
    upload = encrypted_upload(confidential_rag_index, key_release, "index")
    attested_promotion = AttestedModelPromotionOperator(
        task_id="attested_promotion",
        checkpoint=upload.output,
        run_refs=key_release.output,
        min_gpus="{{ params.gpu_count }}",
        thresholds={
            "min_hit_rate_at_k": "{{ params.min_hit_rate_at_k }}",
            "min_ann_recall_at_10": "{{ params.min_ann_recall_at_10 }}",
        },
        outlets=[PROMOTED_INDEX],
        doc_md="""Verifies the whole chain under the data owner's signed policy, exactly as for
a model (EAR token genuine and affirming for CPU and every GPU, this run's initdata, approved
image, repository, embedder and indexing recipe, manifest signed by the attested key while the
token was valid, ciphertext digests, retrieval thresholds, no worse than the served index), then
signs the index (OpenSSF model signing), writes the promotion record and registers it under the
owner policy's index name. Params can only tighten the policy; `coco-ai verify` re-checks it.""",
    )
    confidential_pipeline(
        gate,
        key_release,
        confidential_rag_index,
        upload,
        attested_promotion,
        revoke=revoke_keys(),
    )
