"""One Trustee stand-in (TLS on loopback), one real index run (the rag_index workload beside its
emulator, a tiny random embedder, real FAISS), then the retrieval service of that index beside
its own emulator, and attested callers beside theirs."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from coco_ai.workloads.kinds import RAG_INDEX

INDEX_RUN = "run-rag-serve-index"
SERVICE_RUN = "run-rag-serve-1"
REPO_KEY_PATH = "default/rag/northwind"
# admitted by the service; mallory is not; dave is the one the data-owner command revokes and
# admits again (test_caller_admin.py)
CALLERS = ["alice", "bob", "carol", "dave"]


@pytest.fixture(scope="session")
def repository():
    from coco_ai.workloads.rag_index.corpus import generate_repository

    return generate_repository(10, seed=5)


@pytest.fixture(scope="session")
def embedder(tmp_path_factory, repository) -> Path:
    import torch

    from coco_ai.workloads.rag_index.embedder import build_tiny_embedder

    torch.set_num_threads(2)  # the box is shared
    texts = [d.text for d in repository.documents] + [q.question for q in repository.questions]
    return build_tiny_embedder(tmp_path_factory.mktemp("models") / "tiny-bert", texts)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, embedder):
    from coco_ai.devstack.workload import start_local_stack

    state = tmp_path_factory.mktemp("trustee")
    with start_local_stack(state, INDEX_RUN, kind=RAG_INDEX, dataset_key_path=REPO_KEY_PATH) as s:
        s.tls_ca_pem = (state / "tls-ca" / "ca.pem").read_bytes()
        yield s


@pytest.fixture(scope="session")
def index_uri(tmp_path_factory, stack, repository, embedder) -> str:
    """The index run's signed, encrypted index (staging: what promotion copies and pins), its
    key published for serving."""
    from coco_ai.workloads.models import model_digest
    from coco_ai.workloads.rag_index.config import RagIndexConfig
    from coco_ai.workloads.rag_index.corpus import to_jsonl
    from coco_ai.workloads.rag_index.workload import RagIndexWorkload
    from coco_ai.workloads.rag_serve.identity import publish_index_key

    root = tmp_path_factory.mktemp("store")
    blob = stack.encrypt_repository(to_jsonl(repository))
    (root / "northwind.enc").write_bytes(blob)
    staging = f"file://{root}/staging/{INDEX_RUN}"
    config = RagIndexConfig.from_dict(
        {
            "run_id": INDEX_RUN,
            "guest_api_url": stack.guest_url,
            "staging_uri": staging,
            "checkpoint_key_uri": stack.checkpoint_key_uri,
            "run_key_root_uri": stack.run_key_root_uri,
            "store_attempts": 2,
            "store_backoff_s": 0.05,
            "repository": {
                "uri": f"file://{root}/northwind.enc",
                "key_uri": stack.dataset_key_uri,
            },
            "embedder": {"path": str(embedder), "digest": model_digest(embedder)},
            "embedding": {"batch_size": 16, "max_seq_length": 64},
            "evaluation": {"k": 3},
        }
    )
    RagIndexWorkload(config, out=io.StringIO()).run()
    # the data owner publishes the index's key for the services that serve it
    publish_index_key(stack.admin, INDEX_RUN, stack.run_key)  # INDEX_RUN is the stack's run
    return staging


@pytest.fixture(scope="session")
def manifest_digest(index_uri) -> str:
    from coco_ai.crypto import read_manifest
    from coco_ai.storage import open_store

    manifest, _ = read_manifest(open_store(index_uri))
    return manifest.digest()


@pytest.fixture(scope="session")
def credentials(stack) -> dict[str, bytes]:
    from coco_ai.workloads.rag_serve.identity import issue_caller_credential

    return {c: issue_caller_credential(stack.admin, c) for c in [*CALLERS, "mallory"]}


@pytest.fixture(scope="session")
def clock_offset() -> list[float]:
    """Seconds added to the service's clock (to present a caller's token after it expired)."""
    return [0.0]


@pytest.fixture(scope="session")
def service_log() -> io.StringIO:
    """Everything the service logs (start-up, refreshes) while the suite runs."""
    return io.StringIO()


@pytest.fixture(scope="session")
def service(
    tmp_path_factory,
    stack,
    index_uri,
    manifest_digest,
    embedder,
    credentials,
    clock_offset,
    service_log,
    service_plaintext_dirs,
):
    from coco_ai.devstack.rag_service import start_rag_service
    from coco_ai.devstack.stack import local_image_reference
    from coco_ai.workloads.rag_serve import service as service_module

    def recorded_tmpdir(prefix: str) -> Path:
        made = real_tmpdir(prefix)
        service_plaintext_dirs.append(made)
        return made

    # the plaintext dirs this service makes, for the test that they are gone (other tests, or
    # another pytest-xdist worker, may have service dirs of their own in /dev/shm meanwhile)
    real_tmpdir = service_module.private_tmpdir
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service_module, "private_tmpdir", recorded_tmpdir)
        with start_rag_service(
            tmp_path_factory.mktemp("service"),
            **service_kwargs(stack, index_uri, manifest_digest, embedder),
            image=local_image_reference(),
            clock=lambda: time.time() + clock_offset[0],
            out=service_log,
        ) as running:
            yield running


@pytest.fixture(scope="session")
def service_plaintext_dirs() -> list[Path]:
    """The plaintext dirs the session's service made (filled by `service`)."""
    return []


def service_kwargs(stack, index_uri, manifest_digest, embedder, **override):
    kwargs = {
        "trustee_url": stack.trustee_url,
        "trustee_ca_pem": stack.tls_ca_pem,
        "trust_anchor_pem": stack.trust_anchor_pem,
        "run_id": SERVICE_RUN,
        "index_run_id": INDEX_RUN,
        "index_uri": index_uri,
        "index_manifest_digest": manifest_digest,
        "embedder_path": str(embedder),
        "callers": CALLERS,
        "limits": {"max_body_bytes": 4096, "max_query_chars": 512, "max_k": 10},
    }
    kwargs.update(override)
    return kwargs


@pytest.fixture(scope="session")
def caller_guests(stack):
    """The attested TEEs of every caller (each its own emulator and initdata)."""
    from coco_ai.devstack.rag_service import start_caller
    from coco_ai.devstack.stack import local_image_reference

    guests = {
        c: start_caller(
            stack.trustee_url,
            stack.tls_ca_pem,
            caller_id=c,
            run_id=f"run-caller-{c}",
            image=local_image_reference(),
        )
        for c in [*CALLERS, "mallory"]
    }
    yield guests
    for g in guests.values():
        g.stop()


@pytest.fixture(scope="session")
def trust(stack):
    from coco_ai.devstack.stack import local_image_reference
    from coco_ai.workloads.rag_serve.client import ServiceTrust

    return ServiceTrust(
        trust_anchor_pem=stack.trust_anchor_pem,
        approved_image_digests=frozenset({local_image_reference().partition("@")[2]}),
    )
