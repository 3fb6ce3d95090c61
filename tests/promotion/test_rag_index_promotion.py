"""Promotion of a real RAG index, on the same chain as a model: the rag_index workload runs once
against the Trustee stand-in and the guest-components emulator (real attestation, real FAISS,
real crypto), then its output is promoted under the data owner's policy section for rag_index,
registered in MLflow and re-checked by `coco-ai verify`'s audit; and refused, registry untouched,
for each thing that must not pass."""

from __future__ import annotations

import hashlib
import io
import math
import shutil
from pathlib import Path

import pytest

from coco_ai.crypto.manifest import SIGNATURE_FILE
from coco_ai.owner_policy import OwnerPolicy, verify_owner_policy
from coco_ai.promotion import PromotionRefused, model_versions, promote, sqlite_registry_uri
from coco_ai.promotion.audit import audit_promotion
from coco_ai.workloads.kinds import RAG_INDEX
from coco_ai.workloads.models import model_digest
from coco_ai.workloads.rag_index.config import RagIndexConfig, recipe_digest
from coco_ai.workloads.rag_index.corpus import generate_repository, to_jsonl
from coco_ai.workloads.rag_index.workload import RagIndexWorkload

from .conftest import flip_ciphertext, other_key_signature

RUN_ID = "run-rag-promote-1"
INDEX_NAME = "northwind-index"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from coco_ai.devstack.workload import start_local_stack

    with start_local_stack(
        tmp_path_factory.mktemp("trustee"), RUN_ID, kind=RAG_INDEX, dataset_key_path="r/rag/v1"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def built(tmp_path_factory, stack):
    """The workload's real output in staging: (index dir, its config, embedder dir)."""
    import torch

    from coco_ai.workloads.rag_index.embedder import build_tiny_embedder

    torch.set_num_threads(2)  # the box is shared
    work = tmp_path_factory.mktemp("rag")
    repository = generate_repository(8, seed=5)
    texts = [d.text for d in repository.documents] + [q.question for q in repository.questions]
    embedder = build_tiny_embedder(work / "tiny-bert", texts)
    blob = stack.encrypt_repository(to_jsonl(repository))
    (work / "repo.enc").write_bytes(blob)
    config = RagIndexConfig.from_dict(
        {
            "run_id": RUN_ID,
            "guest_api_url": stack.guest_url,
            "staging_uri": f"file://{work}/staging/{RUN_ID}",
            "checkpoint_key_uri": stack.checkpoint_key_uri,
            "run_key_root_uri": stack.run_key_root_uri,
            "repository": {"uri": f"file://{work}/repo.enc", "key_uri": stack.dataset_key_uri},
            "embedder": {"path": str(embedder), "digest": model_digest(embedder)},
            "embedding": {"batch_size": 16, "max_seq_length": 64},
            "evaluation": {"k": 3},
        }
    )
    result = RagIndexWorkload(config, out=io.StringIO()).run()
    return (
        Path(f"{work}/staging/{RUN_ID}"),
        config,
        result,
        "sha256:" + hashlib.sha256(blob).hexdigest(),
    )


def _policy(owner, stack, built, **section):
    """The owner policy with a rag_index section approving this run's inputs and recipe;
    `section` replaces fields of that section."""
    from coco_ai.devstack.stack import local_image_reference

    _, config, _, repository_digest = built
    rag = {
        "registry_name": INDEX_NAME,
        "approved": {
            "documents": [repository_digest],
            "embedder": [config.embedder.digest],
            "recipes": [recipe_digest(config.to_dict())],
        },
        "thresholds": {"min_hit_rate_at_k": 0.0},
        "champion": {"max_regression": 0.0},
    }
    rag.update(section)
    doc = owner.policy_doc(
        attestation__trust_anchor_pem=stack.trust_anchor_pem.decode(),
        attestation__token_signer_pem=stack.token_signer_pem.decode(),
        approved__images=[local_image_reference()],
        workloads={"rag_index": rag},
    )
    return verify_owner_policy(OwnerPolicy.from_dict(doc).sign(owner.private_pem), owner.public_pem)


@pytest.fixture
def registry(tmp_path) -> str:
    return sqlite_registry_uri(tmp_path / "mlflow.db")


def _copy(built, tmp_path: Path) -> Path:
    dst = tmp_path / "index-copy"
    shutil.copytree(built[0], dst)
    return dst


def _refused(index: Path, policy, stack, promotion_keys, registry, **kwargs) -> str:
    with pytest.raises(PromotionRefused) as refused:
        promote(
            str(index),
            owner_policy=policy,
            initdata=kwargs.pop("initdata", stack.initdata),
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
            **kwargs,
        )
    assert model_versions(INDEX_NAME, registry_uri=registry) == []
    return "; ".join(refused.value.reasons)


def test_a_real_index_is_promoted_registered_and_verified(
    built, stack, owner, promotion_keys, registry, tmp_path
):
    index = _copy(built, tmp_path)
    policy = _policy(owner, stack, built)
    result = promote(
        str(index),
        owner_policy=policy,
        initdata=stack.initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
        narrowing={"min_ann_recall_at_10": 0.99},
    )
    assert (result.model_name, result.version, result.alias) == (INDEX_NAME, 1, "serving")
    evidence = result.evidence
    assert evidence.workload == "rag_index"
    assert evidence.manifest_digest == built[2].manifest_digest
    assert evidence.dataset_digest == built[3]  # the repository the TEE read
    assert evidence.base_model_digest == built[1].embedder.digest
    assert evidence.training_recipe_digest == recipe_digest(built[1].to_dict())
    [version] = model_versions(INDEX_NAME, registry_uri=registry)
    assert version.tags["coco-ai.workload"] == "rag_index"
    assert float(version.tags["coco-ai.metric.hit_rate_at_k"]) == evidence.metrics["hit_rate_at_k"]
    assert result.to_dict()["workload"] == "rag_index"

    audit = audit_promotion(
        str(index), owner_public_key_pem=owner.public_pem, registry_uri=registry
    )
    assert audit.verified, audit.to_dict()
    # the audit is not a rubber stamp: the same index with a tampered signature file fails it
    (index / SIGNATURE_FILE).write_bytes((index / SIGNATURE_FILE).read_bytes()[:-8] + b"AAAAAAAA")
    assert not audit_promotion(str(index), owner_public_key_pem=owner.public_pem).verified


def test_the_champion_rule_compares_hit_rate_at_k_higher_is_better():
    """The champion rule compares hit_rate_at_k, higher is better."""
    from coco_ai.promotion.promote import champion_problems

    served = {"version": 1, "manifest_digest": "sha256:" + "0" * 64, "created_at": 1}
    rules = RAG_INDEX.promotion
    args = {"metric": rules.champion_metric, "higher_is_better": rules.higher_is_better}
    worse = champion_problems(
        {**served, "hit_rate_at_k": 0.9}, created_at=2, value=0.8, max_regression=0.0, **args
    )
    assert worse == [
        "champion: hit_rate_at_k 0.8 is worse than version 1's 0.9 (allowed regression 0)"
    ]
    assert (
        champion_problems(
            {**served, "hit_rate_at_k": 0.9}, created_at=2, value=0.95, max_regression=0.0, **args
        )
        == []
    )


REFUSALS = {
    "unapproved recipe": (
        {"approved": "recipes"},
        "promotion policy: indexing recipe sha256:",
    ),
    "repository not approved": (
        {"approved": "documents"},
        "promotion policy: document repository sha256:",
    ),
    "embedder not approved": ({"approved": "embedder"}, "promotion policy: embedder sha256:"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_an_index_outside_the_approvals_is_refused(
    case, built, stack, owner, promotion_keys, registry, tmp_path
):
    change, reason = REFUSALS[case]
    _, config, _, repository_digest = built
    approved = {
        "documents": [repository_digest],
        "embedder": [config.embedder.digest],
        "recipes": [recipe_digest(config.to_dict())],
    }
    approved[change["approved"]] = ["sha256:" + "e" * 64]
    policy = _policy(owner, stack, built, approved=approved)
    refused = _refused(_copy(built, tmp_path), policy, stack, promotion_keys, registry)
    assert reason in refused and "is not approved" in refused


def test_a_metric_below_the_owners_threshold_is_refused(
    built, stack, owner, promotion_keys, registry, tmp_path
):
    measured = built[2].metrics["hit_rate_at_1"]
    limit = (math.floor(measured * 100) + 2) / 100  # above what was measured, two decimals
    policy = _policy(owner, stack, built, thresholds={"min_hit_rate_at_1": limit})
    refused = _refused(_copy(built, tmp_path), policy, stack, promotion_keys, registry)
    assert "promotion policy: hit_rate_at_1 " in refused
    assert f"is below the minimum {limit}" in refused


def test_a_run_may_tighten_the_recall_floor_but_not_loosen_it(
    built, stack, owner, promotion_keys, registry, tmp_path
):
    policy = _policy(owner, stack, built)  # min_ann_recall_at_10 not set: the kind's 0.95
    refused = _refused(
        _copy(built, tmp_path),
        policy,
        stack,
        promotion_keys,
        registry,
        narrowing={"min_ann_recall_at_10": 0.5},
    )
    assert "min_ann_recall_at_10=0.5 is looser than the data owner's 0.95" in refused


def test_a_policy_without_a_rag_index_section_promotes_no_index(
    built, stack, owner, promotion_keys, registry, tmp_path
):
    from coco_ai.devstack.stack import local_image_reference

    doc = owner.policy_doc(
        attestation__trust_anchor_pem=stack.trust_anchor_pem.decode(),
        attestation__token_signer_pem=stack.token_signer_pem.decode(),
        approved__images=[local_image_reference()],
    )
    policy = verify_owner_policy(
        OwnerPolicy.from_dict(doc).sign(owner.private_pem), owner.public_pem
    )
    refused = _refused(_copy(built, tmp_path), policy, stack, promotion_keys, registry)
    assert "approves no rag_index outputs" in refused


def test_an_index_signed_by_a_key_the_token_does_not_attest_is_refused(
    built, stack, owner, promotion_keys, registry, tmp_path, other_p256_pem
):
    index = _copy(built, tmp_path)
    other_key_signature(index, other_p256_pem)  # the genuine token stays beside it
    refused = _refused(index, _policy(owner, stack, built), stack, promotion_keys, registry)
    assert refused.startswith("manifest signature:")


def test_another_runs_index_is_refused(built, stack, owner, promotion_keys, registry, tmp_path):
    """The index is presented as the output of run 2, whose initdata (bound to the same approved
    image and module) differs only in the run id: the token attests run 1's."""
    from coco_ai.devstack.stack import local_image_reference
    from coco_ai.guest.initdata import CUSTOM_KEY_PREFIX, RUN_ID_KEY, build_initdata

    claims = {k: v for k, v in stack.initdata.data.items() if k.startswith(CUSTOM_KEY_PREFIX)}
    claims[RUN_ID_KEY] = "run-rag-promote-2"
    other = build_initdata(
        stack.trustee_url, None, claims, image=local_image_reference(), module=RAG_INDEX.module
    )
    refused = _refused(
        _copy(built, tmp_path),
        _policy(owner, stack, built),
        stack,
        promotion_keys,
        registry,
        initdata=other,
    )
    assert "attestation:" in refused and RUN_ID not in refused.split("attestation:")[0]


def test_a_tampered_index_ciphertext_is_refused(
    built, stack, owner, promotion_keys, registry, tmp_path
):
    index = _copy(built, tmp_path)
    flip_ciphertext(index)
    refused = _refused(index, _policy(owner, stack, built), stack, promotion_keys, registry)
    assert "ciphertext:" in refused
