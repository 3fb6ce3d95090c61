"""Re-check a promotion offline from its record, with the data owner's public key alone.

`coco-ai verify` runs this. The promotion record (`<checkpoint>.promotion.json`,
docs/formats/promotion.md) is unsigned and may have been written by anyone; nothing in it is
trusted on its own: the owner policy it carries must verify under the owner's key (given by the
verifier, never read from the record), the initdata must be the one whose digest the attested
token carries, and every other field must agree with what the checkpoint, its model signature
and (with a registry) the registry prove. Then everything the promotion step checked is checked
again: `verify_for_promotion` under the policy (EAR chain to the policy's anchor, pinned signer,
appraisal ids, affirming CPU and GPUs, no development evidence unless allowed, initdata and its
claims, manifest signed by the attested key, every digest, approved inputs, recipe and image,
thresholds), the OpenSSF model signature against one of the policy's promotion signers, the
champion rule, and with a registry its version, tags and the serving alias (never backwards).

Each check reports passed, failed (with a reason naming what) or not run; `Audit.exit_code`
maps failures to the codes of `coco-ai checkpoint` (3 integrity, 4 attestation, signature or
policy).

A promoted RAG index is audited exactly as a model: the run's initdata names its workload kind,
and the owner policy's section and the kind's rules (coco_ai.workloads.kinds) supply the
registered name, approvals, thresholds and the champion metric.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.check_status import FAILED, NOT_RUN, PASSED
from coco_ai.crypto.manifest import MANIFEST_FILE
from coco_ai.digest import is_sha256
from coco_ai.guest.initdata import RUN_ID_KEY
from coco_ai.owner_policy import OwnerPolicyError, SignedOwnerPolicy, verify_owner_policy
from coco_ai.promotion.errors import PromotionRefused, SignatureInvalid
from coco_ai.promotion.promote import RECORD_FORMAT, champion_problems, default_record_uri
from coco_ai.promotion.registry import (
    DEFAULT_ALIAS,
    METRIC_TAG_PREFIX,
    TAG_PREFIX,
    RegisteredVersion,
    find_model_version,
    model_versions,
    provenance_tags,
    version_by_alias,
)
from coco_ai.promotion.signing import default_signature_uri, verify_model_signature
from coco_ai.promotion.verify import PromotionEvidence, PromotionExpectations, verify_for_promotion

#: failure classes, as exit codes (coco_ai.crypto.cli)
INTEGRITY, ATTESTATION = 3, 4

RECORD = "promotion record"
OWNER_POLICY = "owner policy"
INITDATA = "initdata"
CHAIN = "evidence chain"
CONSISTENCY = "record consistency"
MODEL_SIGNATURE = "model signature"
CHAMPION = "champion"
REGISTRY = "registry version"
ALIAS = "registry alias"
CHECK_NAMES = (
    RECORD,
    OWNER_POLICY,
    INITDATA,
    CHAIN,
    CONSISTENCY,
    MODEL_SIGNATURE,
    CHAMPION,
    REGISTRY,
    ALIAS,
)

#: reason labels of verify_for_promotion that mean the stored bytes are wrong (not the proof)
_INTEGRITY_LABELS = ("ciphertext", "manifest", "checkpoint", "storage", "training config")
#: provenance keys that name locations: a bundle may be verified from a copy elsewhere
_LOCATION_KEYS = ("checkpoint_uri",)
_RECORD_STRINGS = (
    "model_name",
    "run_id",
    "checkpoint_uri",
    "manifest_digest",
    "owner_policy",
    "owner_policy_digest",
    "initdata",
    "signature_uri",
    "signature_digest",
)
_RECORD_DIGESTS = ("manifest_digest", "owner_policy_digest", "signature_digest")
#: a record's champion: these, plus the figure of the kind's champion metric (e.g. eval_loss)
_CHAMPION_FIELDS = ("version", "manifest_digest", "created_at")


@dataclass(frozen=True)
class AuditCheck:
    name: str
    status: str  # PASSED, FAILED or NOT_RUN
    reason: str
    kind: int | None = None  # INTEGRITY or ATTESTATION when failed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "reason": self.reason}


@dataclass
class Audit:
    """The checks of one promoted checkpoint, in order."""

    checkpoint_uri: str
    checks: list[AuditCheck] = field(default_factory=list)
    policy: dict[str, Any] | None = None  # the applied owner policy: id, version, digest

    @property
    def verified(self) -> bool:
        """Every check passed, or did not apply (no registry given: the registry checks)."""
        return not any(c.status == FAILED for c in self.checks) and all(
            c.status == PASSED for c in self.checks if c.name not in (REGISTRY, ALIAS)
        )

    @property
    def exit_code(self) -> int:
        """0 verified; 3 when any failure is one of integrity (stored bytes or record differ),
        else 4 (attestation, signature, policy)."""
        kinds = {c.kind for c in self.checks if c.status == FAILED}
        if not kinds and self.verified:
            return 0
        return INTEGRITY if INTEGRITY in kinds else ATTESTATION

    def check(self, name: str) -> AuditCheck:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_uri": self.checkpoint_uri,
            "verdict": "verified" if self.verified else "failed",
            "exit_code": self.exit_code,
            "owner_policy": self.policy,
            "checks": [c.to_dict() for c in self.checks],
        }

    def _add(self, name: str, status: str, reason: str, kind: int | None = None) -> None:
        self.checks.append(AuditCheck(name, status, reason, kind if status == FAILED else None))

    def _skip_rest(self, why: str) -> Audit:
        done = {c.name for c in self.checks}
        for name in CHECK_NAMES:
            if name not in done:
                self._add(name, NOT_RUN, why)
        return self


@dataclass(frozen=True)
class PromotionRecord:
    """A parsed promotion record (shape checked; its content is judged by the audit)."""

    model_name: str
    run_id: str
    checkpoint_uri: str
    manifest_digest: str
    owner_policy: str
    owner_policy_digest: str
    initdata: str
    signature_uri: str
    signature_digest: str
    champion: dict[str, Any] | None
    promoted_at: int

    @classmethod
    def from_bytes(cls, data: bytes) -> PromotionRecord:
        try:
            doc = json.loads(data)
        except ValueError:
            raise ValueError("is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("is not a JSON object")
        if doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"format is not {RECORD_FORMAT!r}")
        bad = [
            f"{name} must be a non-empty string"
            for name in _RECORD_STRINGS
            if not _text(doc.get(name))
        ]
        bad += [
            f"{name} must be 'sha256:<64 hex>'"
            for name in _RECORD_DIGESTS
            if _text(doc.get(name)) and not is_sha256(doc[name])
        ]
        promoted_at = doc.get("promoted_at")
        if isinstance(promoted_at, bool) or not isinstance(promoted_at, int):
            bad.append("promoted_at must be an integer")
        champion = doc.get("champion")
        if champion is not None and not _champion_shape(champion):
            bad.append(
                "champion must be null or {version: int >= 1, manifest_digest: 'sha256:<64 hex>', "
                "created_at: number, <champion metric>: number or null}"
            )
        unknown = sorted(set(doc) - {*_RECORD_STRINGS, "format", "promoted_at", "champion"})
        if unknown:
            bad.append(f"unknown field(s) {unknown}")
        if bad:
            raise ValueError("; ".join(bad))
        strings = {name: doc[name] for name in _RECORD_STRINGS}
        return cls(**strings, champion=champion, promoted_at=promoted_at)


def audit_promotion(
    checkpoint_uri: str,
    *,
    owner_public_key_pem: bytes,
    policy_jws: str | None = None,
    registry_uri: str | None = None,
    model_name: str | None = None,
    alias: str = DEFAULT_ALIAS,
    storage_options: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Audit:
    """Re-check the promotion of the checkpoint at `checkpoint_uri` from its record.

    `policy_jws`, a newer owner policy, must verify under the same key, be the same policy id
    and have a version at least the record's; it is then the one applied. With `registry_uri`
    the registry is checked too (model `model_name`, default the policy's); a registry that
    cannot be read raises RegistryError."""
    from coco_ai.guest.initdata import Initdata, InitdataError
    from coco_ai.storage.store import open_store, split_object_uri

    options = dict(storage_options or {})
    audit = Audit(checkpoint_uri)

    # -- the record: read and shaped, nothing in it trusted yet
    record_uri = default_record_uri(checkpoint_uri)
    try:
        parent, leaf = split_object_uri(record_uri)
        record = PromotionRecord.from_bytes(open_store(parent, **options).read_bytes(leaf))
    except FileNotFoundError:
        audit._add(RECORD, FAILED, f"no promotion record at {record_uri}", INTEGRITY)
        return audit._skip_rest("no promotion record")
    except (ValueError, OSError) as exc:
        audit._add(RECORD, FAILED, f"{record_uri}: {exc}", INTEGRITY)
        return audit._skip_rest("the promotion record is unusable")
    audit._add(RECORD, PASSED, f"{record_uri} ({RECORD_FORMAT})")

    # -- the owner policy: verified under the owner's key, never taken from the record alone
    try:
        applied, recorded = _owner_policy(record, owner_public_key_pem, policy_jws)
    except OwnerPolicyError as exc:
        audit._add(OWNER_POLICY, FAILED, str(exc), ATTESTATION)
        return audit._skip_rest("no owner policy verified")
    audit.policy = {
        "policy_id": applied.policy.policy_id,
        "version": applied.policy.version,
        "digest": applied.digest,
        "recorded_version": recorded.policy.version,
    }
    newer = "" if applied is recorded else f" (record's version {recorded.policy.version})"
    audit._add(
        OWNER_POLICY,
        PASSED,
        f"{applied.policy.policy_id} version {applied.policy.version}{newer} verifies under the "
        f"owner's key, {applied.digest}",
    )

    # -- the run's initdata: its run id the record's, its digest the one the token attests
    try:
        store = open_store(checkpoint_uri, **options)
    except (ValueError, OSError) as exc:
        audit._add(INITDATA, FAILED, f"checkpoint store {checkpoint_uri}: {exc}", INTEGRITY)
        return audit._skip_rest("the checkpoint store cannot be opened")
    try:
        initdata = Initdata.parse(record.initdata)
        if initdata.claim(RUN_ID_KEY) != record.run_id:
            raise ValueError(f"its {RUN_ID_KEY} is not the record's run_id {record.run_id!r}")
        expectations = PromotionExpectations.from_owner_policy(applied, initdata=initdata)
        governed = applied.policy.for_workload(expectations.workload).registry_name
        if governed != record.model_name:
            raise ValueError(
                f"it is a {expectations.workload} run, whose outputs the owner policy registers "
                f"as {governed!r}, not the record's model_name {record.model_name!r}"
            )
    except (InitdataError, ValueError) as exc:
        audit._add(INITDATA, FAILED, f"record's initdata: {exc}", INTEGRITY)
        return audit._skip_rest("the run's initdata is unusable")
    audit.checks.append(_attested_initdata(store, initdata, applied))

    # -- everything the promotion step checked, again
    evidence: PromotionEvidence | None = None
    try:
        evidence = verify_for_promotion(
            checkpoint_uri,
            trust_anchor_pem=applied.policy.trust_anchor_pem.encode(),
            expectations=expectations,
            now=now,
            storage_options=options,
        )
    except PromotionRefused as exc:
        integrity = any(r.split(":")[0] in _INTEGRITY_LABELS for r in exc.reasons)
        audit._add(CHAIN, FAILED, "; ".join(exc.reasons), INTEGRITY if integrity else ATTESTATION)
    else:
        audit._add(
            CHAIN,
            PASSED,
            f"EAR token to the policy's anchor, {evidence.attestation['gpu_count']} GPU(s) "
            f"affirming, manifest {evidence.manifest_digest} signed by the attested key, "
            f"recipe {evidence.training_recipe_digest}, ciphertext and policy "
            f"{evidence.policy_digest}",
        )

    # -- the record against the checkpoint
    problems = _consistency(record, store)
    if problems:
        audit._add(CONSISTENCY, FAILED, "; ".join(problems), INTEGRITY)
    else:
        audit._add(CONSISTENCY, PASSED, "manifest digest and run id are the stored manifest's")

    # -- the model signature, by one of the policy's promotion signers
    audit.checks.append(_model_signature(checkpoint_uri, record, applied, options))

    # -- champion and registry
    audit.checks.append(_champion(record, evidence, applied, expectations))
    if registry_uri is None:
        audit._add(REGISTRY, NOT_RUN, "no registry given")
        audit._add(ALIAS, NOT_RUN, "no registry given")
        return audit
    # an unreadable registry raises RegistryError: an error, not a verdict
    name = model_name or record.model_name  # the policy's name for the kind (checked above)
    metric = expectations.rules.champion_metric
    audit.checks.append(_registry_version(record, evidence, name, registry_uri, metric))
    audit.checks.append(_alias(name, alias, registry_uri))
    return audit


# ---- the checks --------------------------------------------------------------------------------


def _owner_policy(
    record: PromotionRecord, owner_key: bytes, policy_jws: str | None
) -> tuple[SignedOwnerPolicy, SignedOwnerPolicy]:
    """(applied, recorded): the record's policy verified; a given newer one applied instead."""
    try:
        recorded = verify_owner_policy(record.owner_policy, owner_key)
    except OwnerPolicyError as exc:
        raise OwnerPolicyError(f"record's owner_policy: {exc}") from None
    if recorded.digest != record.owner_policy_digest:
        raise OwnerPolicyError(
            f"record's owner_policy_digest {record.owner_policy_digest} is not the digest of its "
            f"owner_policy ({recorded.digest})"
        )
    if record.model_name not in recorded.policy.registry_names:
        raise OwnerPolicyError(
            f"record's owner_policy governs {sorted(recorded.policy.registry_names)}, not the "
            f"record's model_name {record.model_name!r}"
        )
    if policy_jws is None:
        return recorded, recorded
    try:
        given = verify_owner_policy(policy_jws, owner_key)
    except OwnerPolicyError as exc:
        raise OwnerPolicyError(f"given --policy: {exc}") from None
    if given.policy.policy_id != recorded.policy.policy_id:
        raise OwnerPolicyError(
            f"given --policy is {given.policy.policy_id!r}, the record's is "
            f"{recorded.policy.policy_id!r}"
        )
    if given.policy.version < recorded.policy.version:
        raise OwnerPolicyError(
            f"given --policy version {given.policy.version} is older than the record's "
            f"version {recorded.policy.version}"
        )
    return given, recorded


def _attested_initdata(store, initdata, applied: SignedOwnerPolicy) -> AuditCheck:
    """Does the checkpoint's token (verified as the chain check does) carry this initdata?"""
    from coco_ai.crypto.errors import CheckpointError
    from coco_ai.crypto.manifest import TOKEN_FILE
    from coco_ai.crypto.transfer import read_manifest
    from coco_ai.kbs.ear import init_data_matches, verify_ear_token
    from coco_ai.kbs.errors import KbsError

    try:
        manifest, _ = read_manifest(store)
        claims = verify_ear_token(
            store.read_bytes(TOKEN_FILE).decode(),
            applied.policy.trust_anchor_pem.encode(),
            now=manifest.created_at,
            signer_pem=applied.policy.token_signer_pem.encode(),
        )
    except (CheckpointError, KbsError, OSError, ValueError):
        return AuditCheck(
            INITDATA, NOT_RUN, "the checkpoint's attestation token does not verify (evidence chain)"
        )
    if not init_data_matches(claims.init_data(), initdata.digest()):
        return AuditCheck(
            INITDATA,
            FAILED,
            f"record's initdata (digest {initdata.digest().hex()}) is not the one the attested "
            f"token carries ({claims.init_data()})",
            ATTESTATION,
        )
    return AuditCheck(
        INITDATA, PASSED, f"run {initdata.claim(RUN_ID_KEY)}, digest attested by the token"
    )


def _consistency(record: PromotionRecord, store) -> list[str]:
    from coco_ai.crypto.errors import CheckpointError
    from coco_ai.crypto.transfer import read_manifest

    try:
        manifest, _ = read_manifest(store)
    except (CheckpointError, OSError) as exc:
        return [f"{MANIFEST_FILE} unreadable: {exc}"]
    problems = []
    if manifest.digest() != record.manifest_digest:
        problems.append(
            f"record's manifest_digest {record.manifest_digest} is not the digest of the "
            f"checkpoint's {MANIFEST_FILE} ({manifest.digest()})"
        )
    if manifest.run_id != record.run_id:
        problems.append(f"record's run_id {record.run_id!r} is not the manifest's")
    return problems


def _model_signature(
    checkpoint_uri: str, record: PromotionRecord, applied: SignedOwnerPolicy, options: dict
) -> AuditCheck:
    if record.signature_uri == default_signature_uri(record.checkpoint_uri):
        signature_uri = default_signature_uri(checkpoint_uri)  # beside the checkpoint, wherever
    else:
        signature_uri = record.signature_uri
    failures = []
    with tempfile.TemporaryDirectory(prefix="coco-ai-verify-") as tmp:
        for i, pem in enumerate(applied.policy.promotion_signers):
            key_path = Path(tmp) / f"signer-{i}.pub"
            key_path.write_text(pem)
            try:
                signed = verify_model_signature(
                    checkpoint_uri,
                    public_key_path=key_path,
                    signature_uri=signature_uri,
                    storage_options=options,
                )
            except SignatureInvalid as exc:
                failures.append(f"{signature_uri}: {exc}")
                continue
            if signed.signature_digest != record.signature_digest:
                return AuditCheck(
                    MODEL_SIGNATURE,
                    FAILED,
                    f"{signature_uri} verifies but its digest {signed.signature_digest} is not "
                    f"the record's signature_digest {record.signature_digest}",
                    INTEGRITY,
                )
            return AuditCheck(
                MODEL_SIGNATURE,
                PASSED,
                f"{signature_uri} covers {len(signed.files)} file(s), signed by promotion "
                f"signer {i} of the owner policy",
            )
    unique = list(dict.fromkeys(failures))
    return AuditCheck(
        MODEL_SIGNATURE,
        FAILED,
        "no promotion signer of the owner policy verifies it: " + "; ".join(unique),
        ATTESTATION,
    )


def _champion(
    record: PromotionRecord,
    evidence: PromotionEvidence | None,
    applied: SignedOwnerPolicy,
    expectations: PromotionExpectations,
) -> AuditCheck:
    champion = record.champion
    if champion is None:
        return AuditCheck(CHAMPION, PASSED, "the record names no champion it replaced")
    if evidence is None:
        return AuditCheck(CHAMPION, NOT_RUN, "the evidence chain did not verify")
    rules = expectations.rules
    problems = champion_problems(
        champion,
        created_at=evidence.created_at,
        metric=rules.champion_metric,
        value=evidence.metrics.get(rules.champion_metric),
        higher_is_better=rules.higher_is_better,
        max_regression=applied.policy.for_workload(expectations.workload).champion_max_regression,
    )
    if problems:
        return AuditCheck(
            CHAMPION, FAILED, "record's champion: " + "; ".join(problems), ATTESTATION
        )
    return AuditCheck(
        CHAMPION,
        PASSED,
        f"newer and not worse than version {champion.get('version')} it replaced (figures from "
        "the record; checked against the registry when one is given)",
    )


def _registry_version(
    record: PromotionRecord,
    evidence: PromotionEvidence | None,
    name: str,
    registry_uri: str,
    metric: str,
) -> AuditCheck:
    found = find_model_version(name, record.manifest_digest, registry_uri=registry_uri)
    if found is None:
        return AuditCheck(
            REGISTRY,
            FAILED,
            f"no version of {name} is registered for manifest {record.manifest_digest}",
            INTEGRITY,
        )
    expected = {
        "manifest_digest": record.manifest_digest,
        "run_id": record.run_id,
        "owner_policy_digest": record.owner_policy_digest,
        "signature_digest": record.signature_digest,
    }
    if evidence is not None:
        # the record's values win: the applied policy may be newer than the recorded one
        provenance = evidence.provenance()
        expected = {
            **{k: v for k, v in provenance.items() if k not in _LOCATION_KEYS},
            **expected,
        }
    differing = [
        f"{tag} is {found.tags.get(tag)!r}, the checkpoint and record say {value!r}"
        for tag, value in provenance_tags(expected).items()
        if found.tags.get(tag) != value
    ]
    differing += _champion_in_registry(record, found, name, registry_uri, metric)
    if differing:
        return AuditCheck(
            REGISTRY, FAILED, f"{name} version {found.version}: " + "; ".join(differing), INTEGRITY
        )
    return AuditCheck(
        REGISTRY, PASSED, f"{name} version {found.version}: its tags agree with the record"
    )


def _champion_in_registry(
    record: PromotionRecord, found: RegisteredVersion, name: str, registry_uri: str, metric: str
) -> list[str]:
    champion = record.champion
    if champion is None:
        return []
    version = champion.get("version")
    served = next(
        (v for v in model_versions(name, registry_uri=registry_uri) if v.version == version), None
    )
    if served is None or not isinstance(version, int) or version >= found.version:
        return [f"record's champion version {version!r} is no earlier version of {name}"]
    registered = {
        "manifest_digest": served.tags.get(TAG_PREFIX + "manifest_digest"),
        "created_at": _float(served.tags.get(TAG_PREFIX + "created_at")),
        metric: _float(served.tags.get(METRIC_TAG_PREFIX + metric)),
    }
    return [
        f"record's champion {key} {champion.get(key)!r} is not version {version}'s {value!r}"
        for key, value in registered.items()
        if champion.get(key) != value
    ]


def _alias(name: str, alias: str, registry_uri: str) -> AuditCheck:
    served = version_by_alias(name, alias, registry_uri=registry_uri)
    if served is None:
        return AuditCheck(ALIAS, FAILED, f"{name} has no alias {alias!r}", ATTESTATION)
    versions = sorted(model_versions(name, registry_uri=registry_uri), key=lambda v: v.version)
    problems = []
    later = [v.version for v in versions if v.version > served.version]
    if later:
        problems.append(
            f"alias {alias!r} points at version {served.version} but version(s) {later} were "
            "registered after it: the alias was moved back"
        )
    created = [(v.version, _float(v.tags.get(TAG_PREFIX + "created_at"))) for v in versions]
    for (before, at_before), (after, at_after) in itertools.pairwise(created):
        if at_before is None or at_after is None or at_after <= at_before:
            problems.append(
                f"version {after} (created_at {at_after}) is not newer than version {before} "
                f"(created_at {at_before})"
            )
    if problems:
        return AuditCheck(ALIAS, FAILED, "; ".join(problems), ATTESTATION)
    return AuditCheck(
        ALIAS,
        PASSED,
        f"{alias!r} serves version {served.version}, the newest of {len(versions)}; "
        "creation times increase with the version",
    )


def _champion_shape(champion: Any) -> bool:
    if not isinstance(champion, dict) or not set(_CHAMPION_FIELDS) <= set(champion):
        return False
    figures = [champion[k] for k in set(champion) - set(_CHAMPION_FIELDS)]
    version = champion["version"]
    return (
        isinstance(version, int)
        and not isinstance(version, bool)
        and version >= 1
        and is_sha256(champion["manifest_digest"])
        and _number(champion["created_at"])
        and len(figures) == 1  # which metric it must be is the kind's, checked by the champion
        and (figures[0] is None or _number(figures[0]))
    )


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
