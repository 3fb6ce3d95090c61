"""Promotion end to end: verify -> champion check -> sign -> record -> register, in that order.

The same steps for every workload kind (a fine-tuned model, a RAG index): the run's initdata
names the kind, the owner policy's section for it names the registered name, approvals and
thresholds, and the kind's rules (coco_ai.workloads.kinds) say which metric the champion rule
compares and in which direction.

Every decision comes from the data owner's signed policy (coco_ai.owner_policy) and the run's
initdata; the caller may only narrow the policy. Nothing reaches the registry unless every check
passed, the model signature and the promotion record were written; a refusal at any step leaves
the registry exactly as it was.

The promotion record (`<checkpoint>.promotion.json`, docs/formats/promotion.md) holds what a third
party needs beyond the checkpoint itself to re-check the promotion with `coco-ai verify` and the
owner's public key alone: the owner policy JWS that was applied, the run's initdata, the champion
the model replaced, and where its model signature is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.guest.initdata import Initdata
from coco_ai.owner_policy import OwnerPolicyError, SignedOwnerPolicy
from coco_ai.promotion.errors import PromotionRefused, SignatureInvalid
from coco_ai.promotion.registry import (
    DEFAULT_ALIAS,
    METRIC_TAG_PREFIX,
    TAG_PREFIX,
    RegisteredVersion,
    find_model_version,
    register_model_version,
    registry_lock,
    version_by_alias,
)
from coco_ai.promotion.signing import ModelSignature, sign_model
from coco_ai.promotion.verify import (
    PromotionEvidence,
    PromotionExpectations,
    verify_for_promotion,
    workload_of,
)
from coco_ai.storage.store import open_store, split_object_uri

RECORD_FORMAT = "coco-ai/promotion-record/v1"
RECORD_SUFFIX = ".promotion.json"


@dataclass(frozen=True)
class PromotionResult:
    evidence: PromotionEvidence
    signature: ModelSignature
    model_name: str
    version: int
    alias: str
    record_uri: str

    def to_dict(self) -> dict[str, Any]:
        """References only, JSON-serialisable (what the Airflow operator returns / emits)."""
        return {
            "model_name": self.model_name,
            "workload": self.evidence.workload,
            "version": self.version,
            "alias": self.alias,
            "checkpoint_uri": self.evidence.checkpoint_uri,
            "manifest_digest": self.evidence.manifest_digest,
            "token_digest": self.evidence.token_digest,
            "run_id": self.evidence.run_id,
            "signature_uri": self.signature.signature_uri,
            "signature_digest": self.signature.signature_digest,
            "record_uri": self.record_uri,
            "owner_policy_digest": self.evidence.owner_policy_digest,
            "metrics": dict(self.evidence.metrics),
            "attestation": dict(self.evidence.attestation),
        }


def default_record_uri(checkpoint_uri: str) -> str:
    """`<checkpoint>.promotion.json`: beside the checkpoint (its file set stays the manifest's)."""
    return checkpoint_uri.rstrip("/") + RECORD_SUFFIX


def promote(
    checkpoint_uri: str,
    *,
    owner_policy: SignedOwnerPolicy,
    initdata: Initdata,
    signing_key_path: str | Path,
    narrowing: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    registry_uri: str | None = None,
    alias: str = DEFAULT_ALIAS,
    signature_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> PromotionResult:
    """Verify the checkpoint of the run that carried `initdata` under `owner_policy` (narrowed
    by `narrowing`: min_gpus and the run's kind's thresholds, e.g. max_eval_loss or
    min_hit_rate_at_k), compare it with the served champion, sign it (OpenSSF model signing),
    write its promotion record, register it under the policy's name for the kind's outputs.

    Raises PromotionRefused (reasons listed) when verification, the policy, the champion rule
    or signing fails; the registry is untouched then. Re-promoting the served manifest returns
    its version.
    """
    policy = owner_policy.policy
    try:
        workload = workload_of(initdata).name
        governed = policy.for_workload(workload).registry_name
    except (OwnerPolicyError, ValueError) as exc:
        raise PromotionRefused([f"promotion expectations: {exc}"]) from None
    name = model_name or governed
    if name != governed:
        raise PromotionRefused(
            [f"owner policy governs model {governed!r} for {workload} outputs, not {name!r}"]
        )
    try:
        narrowed = policy.narrowed(workload=workload, **dict(narrowing or {}))
        expectations = PromotionExpectations.from_owner_policy(
            SignedOwnerPolicy(narrowed, owner_policy.jws), initdata=initdata
        )
    except (OwnerPolicyError, ValueError) as exc:
        raise PromotionRefused([f"promotion expectations: {exc}"]) from None
    evidence = verify_for_promotion(
        checkpoint_uri,
        trust_anchor_pem=policy.trust_anchor_pem.encode(),
        expectations=expectations,
        now=now,
        storage_options=storage_options,
    )
    # The champion check, the signature, the record and the registration as one step: a
    # concurrent run's promotion waits, then compares itself with what this one served.
    with registry_lock(registry_uri):
        champion = version_by_alias(name, alias, registry_uri=registry_uri) if alias else None
        served = _tag(champion, "manifest_digest") if champion is not None else None
        retry = served == evidence.manifest_digest
        if not retry:
            _check_challenger(evidence, champion, expectations, name, registry_uri)
        _check_signer(signing_key_path, policy.promotion_signers)
        record_uri = default_record_uri(checkpoint_uri)
        options = dict(storage_options or {})
        # A retry of the served manifest keeps the champion its first promotion replaced.
        replaced = (
            _recorded_champion(record_uri, evidence.manifest_digest, options)
            if retry
            else _champion_entry(champion, expectations)
        )
        try:
            signature = sign_model(
                checkpoint_uri,
                private_key_path=signing_key_path,
                signature_uri=signature_uri,
                expected_files=evidence.files,
                storage_options=storage_options,
            )
        except SignatureInvalid as exc:
            raise PromotionRefused([f"model signing: {exc}"]) from None
        record = promotion_record(
            evidence,
            owner_policy=owner_policy,
            initdata=initdata,
            model_name=name,
            champion=replaced,
            signature=signature,
            promoted_at=int(time.time() if now is None else now),
        )
        parent, leaf = split_object_uri(record_uri)
        open_store(parent, **options).put_bytes(leaf, record)
        provenance = {
            **evidence.provenance(),
            "signature_uri": signature.signature_uri,
            "signature_digest": signature.signature_digest,
            "record_uri": record_uri,
        }
        name, version = register_model_version(
            name, checkpoint_uri, provenance, alias, registry_uri=registry_uri
        )
        return PromotionResult(evidence, signature, name, version, alias, record_uri)


def promotion_record(
    evidence: PromotionEvidence,
    *,
    owner_policy: SignedOwnerPolicy,
    initdata: Initdata,
    model_name: str,
    champion: dict[str, Any] | None,
    signature: ModelSignature,
    promoted_at: int,
) -> bytes:
    """The record's bytes (sorted-key JSON; docs/formats/promotion.md)."""
    record = {
        "format": RECORD_FORMAT,
        "model_name": model_name,
        "run_id": evidence.run_id,
        "checkpoint_uri": evidence.checkpoint_uri,
        "manifest_digest": evidence.manifest_digest,
        "owner_policy": owner_policy.jws,
        "owner_policy_digest": owner_policy.digest,
        "initdata": initdata.toml,
        "champion": champion,
        "signature_uri": signature.signature_uri,
        "signature_digest": signature.signature_digest,
        "promoted_at": promoted_at,
    }
    return json.dumps(record, sort_keys=True, indent=1).encode()


def _champion_entry(
    champion: RegisteredVersion | None, expectations: PromotionExpectations
) -> dict[str, Any] | None:
    """The record's `champion`: the served version the challenger replaces, by reference, with
    its figure of the kind's champion metric (eval_loss for the fine-tune)."""
    if champion is None:
        return None
    metric = expectations.rules.champion_metric
    return {
        "version": champion.version,
        "manifest_digest": _tag(champion, "manifest_digest"),
        "created_at": _number_tag(champion, TAG_PREFIX + "created_at"),
        metric: _number_tag(champion, METRIC_TAG_PREFIX + metric),
    }


def _recorded_champion(
    record_uri: str, manifest_digest: str, options: dict[str, Any]
) -> dict[str, Any] | None:
    """The champion in the record an earlier promotion of the same manifest wrote, if any."""
    parent, leaf = split_object_uri(record_uri)
    try:
        record = json.loads(open_store(parent, **options).read_bytes(leaf))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("manifest_digest") != manifest_digest:
        return None
    champion = record.get("champion")
    return champion if isinstance(champion, dict) else None


def _check_signer(signing_key_path: str | Path, signers: tuple[str, ...]) -> None:
    """Refuse to sign with a key the owner policy does not name: consumers would refuse the
    signature, so the promotion would only look done."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(Path(signing_key_path).read_bytes(), None)
        mine = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (OSError, ValueError, TypeError):
        return  # sign_model names what is wrong with the key file
    for pem in signers:
        named = serialization.load_pem_public_key(pem.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if named == mine:
            return
    raise PromotionRefused(
        [
            "model signing: the promotion key is not one of the owner policy's "
            "promotion_signers, so no consumer would accept its signature"
        ]
    )


def _check_challenger(
    evidence: PromotionEvidence,
    champion: RegisteredVersion | None,
    expectations: PromotionExpectations,
    name: str,
    registry_uri: str | None,
) -> None:
    """Refuse a rollback (an already registered, older or not newer checkpoint) and, per the
    owner policy, a challenger whose champion metric is worse than the served champion's."""
    reasons = []
    earlier = find_model_version(name, evidence.manifest_digest, registry_uri=registry_uri)
    # A version still waiting for the alias was registered by a promotion of this manifest
    # that was killed before moving the alias: finishing it is no rollback (the champion rule
    # below still applies).
    if earlier is not None and not earlier.alias_pending:
        reasons.append(
            f"rollback: this checkpoint is already version {earlier.version} of {name}; "
            "moving the serving alias back to it is refused"
        )
    rules = expectations.rules
    reasons += champion_problems(
        _champion_entry(champion, expectations),
        created_at=evidence.created_at,
        metric=rules.champion_metric,
        value=evidence.metrics.get(rules.champion_metric),
        higher_is_better=rules.higher_is_better,
        max_regression=expectations.champion_max_regression,
    )
    if reasons:
        raise PromotionRefused(reasons)


def champion_problems(
    champion: Mapping[str, Any] | None,
    *,
    created_at: float,
    metric: str,
    value: Any,
    higher_is_better: bool,
    max_regression: float | None,
) -> list[str]:
    """Why a challenger created at `created_at` with `metric` at `value` may not replace
    `champion` (``{version, created_at, <metric>}``, as the promotion record holds it): it must
    be newer, and, unless the owner policy disables the comparison (`max_regression` None), no
    worse than the champion's figure by more than that share: at most champion × (1 +
    max_regression) for a lower-is-better metric (eval_loss), at least champion × (1 −
    max_regression) for a higher-is-better one (hit_rate_at_k). One rule for promote and
    coco-ai verify."""
    if champion is None:
        return []
    version = champion.get("version")
    served_at, served = champion.get("created_at"), champion.get(metric)
    problems = []
    if not _is_number(served_at):
        problems.append(
            f"champion: version {version} records no creation time, so no challenger can be "
            "shown to be newer"
        )
    elif created_at <= served_at:
        problems.append(
            f"rollback: checkpoint created at {created_at} is not newer than version {version} "
            f"(created at {int(served_at)})"
        )
    if max_regression is not None:
        if not _is_number(served) or not _is_number(value):
            problems.append(f"champion: {metric} of the challenger or the champion is unknown")
        elif (
            value < served * (1 - max_regression)
            if higher_is_better
            else value > served * (1 + max_regression)
        ):
            problems.append(
                f"champion: {metric} {value:g} is worse than version {version}'s "
                f"{served:g} (allowed regression {max_regression:g})"
            )
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tag(version: RegisteredVersion, key: str) -> str | None:
    return version.tags.get(TAG_PREFIX + key)


def _number_tag(version: RegisteredVersion, tag: str) -> float | None:
    try:
        return float(version.tags[tag])
    except (KeyError, ValueError):
        return None
