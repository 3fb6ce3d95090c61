"""The promotion gate: prove the whole evidence chain of a stored checkpoint, then decide.

1. Cryptographic chain, by coco_ai.crypto (no key needed): the EAR token chains to the trust
   anchor and meets the run's policy (cpu0 and every gpuN affirming, at least `min_gpus` GPUs,
   this run's initdata digest and claims: run id, image digest), the manifest is signed by the
   TEE key attested in that token and was created while the token was valid, the manifest is the
   run's (replay check), and the ciphertext in the store matches the manifest.
2. Promotion policy, in Rego (`promotion.rego`, evaluated by regopy): metric thresholds and
   approved input, recipe and image digests, with a reason for every rule that denies.

One chain for every workload kind: the run's initdata names its kind (claim
`io.coco-ai.workload`, attested with the rest), and the kind's promotion rules
(coco_ai.workloads.kinds.PromotionRules) say which recipe tables its public config has, which
config fields name the input digests the manifest carries, and which metrics its thresholds bound.

Every failure raises PromotionRefused naming what failed. The evidence returned holds public
references only (digests, URIs, claims summary, the token itself), never a key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jwcrypto import jwk

from coco_ai.crypto.errors import (
    AttestationError,
    CheckpointError,
    IntegrityError,
    ManifestError,
    SignatureError,
)
from coco_ai.crypto.manifest import CONFIG_FILE, MANIFEST_FILE, SIGNATURE_FILE, TOKEN_FILE, Manifest
from coco_ai.crypto.transfer import read_manifest, verify_objects
from coco_ai.crypto.verify import VerificationPolicy, verify_signed_manifest
from coco_ai.digest import is_sha256
from coco_ai.guest.initdata import (
    AGENT_POLICY_KEY,
    CHECKPOINT_KEY_KEY,
    CUSTOM_KEY_PREFIX,
    IMAGE_DIGEST_KEY,
    RUN_ID_KEY,
    WORKLOAD_KEY,
    Initdata,
)
from coco_ai.kbs.ear import DEVELOPMENT_EVIDENCE, EarClaims
from coco_ai.kbs.errors import KbsError
from coco_ai.owner_policy import OwnerPolicy, SignedOwnerPolicy
from coco_ai.promotion import _policy
from coco_ai.promotion.errors import PromotionRefused
from coco_ai.storage import open_store

_HEX = re.compile(r"^[0-9a-f]+$")
_DIGEST_SETS = (
    "approved_base_models",
    "approved_datasets",
    "approved_training_recipes",
    "contributor_datasets",
    "approved_images",
)
#: the kind of a run whose initdata names none (initdata built before the workload claim)
DEFAULT_WORKLOAD = "finetune"


def workload_of(initdata: Initdata):
    """The workload kind (coco_ai.workloads.kinds.WorkloadKind) the run's initdata claims."""
    from coco_ai.workloads.kinds import workload_kind

    return workload_kind(initdata.claim(WORKLOAD_KEY) or DEFAULT_WORKLOAD)


@dataclass(frozen=True)
class PromotionExpectations:
    """What this run's checkpoint must prove to be promoted.

    `init_data_digest` is the run's initdata digest, lowercase hex (`Initdata.digest().hex()`);
    the token's cpu0 `init_data` must carry it, in whichever encoding and hardware-field size its
    verifier uses (see `init_data_matches`). Thresholds left None are not applied; the approved
    digest sets are required (an empty set approves nothing).
    """

    run_id: str
    #: approved digests of the inputs the manifest's base_model_digest and dataset_digest name
    #: (the fine-tune's base model and data set; rag_index's embedder and document repository)
    approved_base_models: frozenset[str]
    approved_datasets: frozenset[str]
    #: approved recipes (coco_ai.workloads.finetune.config.recipe_digest over the kind's recipe
    #: tables) and image digests; empty approves nothing
    approved_training_recipes: frozenset[str] = frozenset()
    approved_images: frozenset[str] = frozenset()
    #: ear.appraisal-policy-id values accepted on every submod
    appraisal_policy_ids: frozenset[str] = frozenset({"default"})
    #: sample / sampledevice evidence proves nothing about hardware: refused unless the owner
    #: policy is a development one
    allow_development_evidence: bool = False
    #: the kind whose promotion rules apply (coco_ai.workloads.kinds)
    workload: str = DEFAULT_WORKLOAD
    #: the served version is replaced only by one whose champion metric is no worse than the
    #: champion's by more than this share; None: no comparison (the owner policy says so)
    champion_max_regression: float | None = 0.0
    owner_policy_digest: str | None = None  # "sha256:<hex>" of the owner policy JWS
    init_data_digest: str | None = None
    image_digest: str | None = None
    checkpoint_key_uri: str | None = None
    #: further init_data_claims the token must carry (key release's, via RunRefs.expected_claims)
    init_data_claims: Mapping[str, str] = field(default_factory=dict)
    min_gpus: int = 1
    token_signer_pem: bytes | None = None  # the pinned attestation-service signer, if any
    #: the kind's thresholds (coco_ai.workloads.kinds.Threshold names) to apply, by name
    thresholds: Mapping[str, float] = field(default_factory=dict)
    leeway: int = 0  # clock skew tolerated when judging the token, seconds
    #: a federated aggregator's contributors: the data sets the owner approves for participants
    #: (coco_ai.promotion.contributions)
    contributor_datasets: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for what in (*_DIGEST_SETS, "appraisal_policy_ids"):
            if isinstance(getattr(self, what), str | bytes):
                raise ValueError(f"invalid promotion expectations: {what} must be a set")
            object.__setattr__(self, what, frozenset(getattr(self, what)))
        bad = []
        if not isinstance(self.run_id, str) or not self.run_id:
            bad.append("run_id must be a non-empty string")
        for what in _DIGEST_SETS:
            bad += [
                f"{what}: {d!r} is not 'sha256:<64 hex>'"
                for d in getattr(self, what)
                if not is_sha256(d)
            ]
        if self.image_digest is not None and not is_sha256(self.image_digest):
            bad.append(f"image_digest {self.image_digest!r} is not 'sha256:<64 hex>'")
        if self.init_data_digest is not None and not (
            _HEX.match(self.init_data_digest) and len(self.init_data_digest) in (64, 96, 128)
        ):
            bad.append("init_data_digest must be a sha256/384/512 digest in lowercase hex")
        if isinstance(self.min_gpus, bool) or not isinstance(self.min_gpus, int):
            bad.append("min_gpus must be an integer")
        elif self.min_gpus < 0:
            bad.append("min_gpus must not be negative")
        limits = {**self.thresholds, "champion_max_regression": self.champion_max_regression}
        for what, value in limits.items():
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                bad.append(f"{what} must be a finite number")
        try:
            rules = self.rules
        except ValueError as exc:
            bad.append(str(exc))
        else:
            bad += [
                f"{name} is not a threshold of {self.workload} outputs"
                for name in self.thresholds
                if rules.threshold(name) is None
            ]
        if bad:
            raise ValueError("invalid promotion expectations: " + "; ".join(bad))

    @classmethod
    def from_owner_policy(
        cls,
        owner: SignedOwnerPolicy,
        *,
        initdata: Initdata,
        run_id: str | None = None,
        leeway: int = 0,
    ) -> PromotionExpectations:
        """What a checkpoint of the run that carried `initdata` must prove under the data owner's
        signed policy. Approvals, thresholds, GPU count, evidence rules and the attestation
        signer all come from the policy; the run contributes only its identity (the initdata,
        whose digest the token must carry, and the claims in it). `run_id`, when given, must be
        the initdata's."""
        claimed_run = initdata.claim(RUN_ID_KEY)
        if not claimed_run:
            raise ValueError(f"the run's initdata carries no {RUN_ID_KEY} claim")
        if run_id is not None and run_id != claimed_run:
            raise ValueError(f"the initdata is run {claimed_run!r}'s, not run {run_id!r}'s")
        policy = owner.policy
        kind = workload_of(initdata)
        section = policy.for_workload(kind.name)
        check_code_binding(initdata, policy)
        approved = {
            spec.manifest_field: section.approved_inputs.get(spec.name, frozenset())
            for spec in kind.inputs
        }
        return cls(
            run_id=claimed_run,
            approved_base_models=approved.get("base_model_digest", frozenset()),
            approved_datasets=approved.get("dataset_digest", frozenset()),
            approved_training_recipes=section.approved_recipes,
            approved_images=policy.approved_image_digests,
            appraisal_policy_ids=policy.appraisal_policy_ids,
            allow_development_evidence=policy.allow_development_evidence,
            workload=kind.name,
            champion_max_regression=section.champion_max_regression,
            owner_policy_digest=owner.digest,
            init_data_digest=initdata.digest().hex(),
            image_digest=initdata.claim(IMAGE_DIGEST_KEY),
            checkpoint_key_uri=initdata.claim(CHECKPOINT_KEY_KEY),
            init_data_claims={
                k: v for k, v in initdata.data.items() if k.startswith(CUSTOM_KEY_PREFIX)
            },
            min_gpus=policy.min_gpus,
            token_signer_pem=policy.token_signer_pem.encode(),
            thresholds=section.limits(),
            leeway=leeway,
            contributor_datasets=_contributor_datasets(policy, kind.name),
        )

    @property
    def kind(self):
        """The workload kind (coco_ai.workloads.kinds.WorkloadKind) whose rules apply."""
        from coco_ai.workloads.kinds import workload_kind

        return workload_kind(self.workload)

    @property
    def rules(self):
        """The kind's promotion rules (coco_ai.workloads.kinds.PromotionRules)."""
        return self.kind.promotion

    def verification_policy(self) -> VerificationPolicy:
        claims = {**self.init_data_claims, RUN_ID_KEY: self.run_id}
        if self.image_digest is not None:
            claims[IMAGE_DIGEST_KEY] = self.image_digest
        return VerificationPolicy(
            run_id=self.run_id,
            min_gpus=self.min_gpus,
            init_data_claims=claims,
            init_data_digest=(
                None if self.init_data_digest is None else bytes.fromhex(self.init_data_digest)
            ),
            leeway=self.leeway,
            token_signer_pem=self.token_signer_pem,
        )

    def policy_data(self) -> dict[str, Any]:
        """`data.promotion` for the Rego policy."""
        data: dict[str, Any] = {
            "min_gpus": self.min_gpus,
            "approved_base_models": sorted(self.approved_base_models),
            "approved_datasets": sorted(self.approved_datasets),
            "approved_training_recipes": sorted(self.approved_training_recipes),
            "approved_images": sorted(self.approved_images),
            "appraisal_policy_ids": sorted(self.appraisal_policy_ids),
            "allow_development_evidence": self.allow_development_evidence,
            "labels": {
                **{spec.manifest_field: spec.label for spec in self.kind.inputs},
                "recipe": self.rules.recipe_label,
            },
            "metric_bounds": [
                {"metric": t.metric, "minimum": t.minimum, "limit": self.thresholds[t.name]}
                for t in self.rules.thresholds
                if t.metric is not None and t.name in self.thresholds
            ],
        }
        # the fine-tune's derived rule: relative improvement of eval_loss over eval_loss_before
        if "min_relative_improvement" in self.thresholds:
            data["min_relative_improvement"] = self.thresholds["min_relative_improvement"]
        if self.checkpoint_key_uri is not None:
            data["checkpoint_key_uri"] = self.checkpoint_key_uri
        return data


def _contributor_datasets(policy: OwnerPolicy, workload: str) -> frozenset[str]:
    """For a federated aggregator: the participants' data sets the owner approves (its
    ``workloads.fl_participant`` section); none without that section."""
    from coco_ai.promotion.contributions import PARTICIPANT_WORKLOAD

    if workload != "fl_aggregator" or PARTICIPANT_WORKLOAD not in policy.workloads:
        return frozenset()
    return policy.workloads[PARTICIPANT_WORKLOAD].approved_inputs.get("dataset", frozenset())


def check_code_binding(initdata: Initdata, policy: OwnerPolicy) -> None:
    """Raise ValueError unless `initdata` binds the guest to the approved image it names: the
    Kata agent policy that starts only that image, and the owner's image security policy.

    The resource policy demanded the same before releasing any key; a verifier re-checks it from
    the initdata itself (whose digest the token carries), so it holds even if Trustee ran a
    weaker resource policy. An image the owner does not approve is left to the promotion
    policy, which names it.
    """
    from coco_ai.guest.agent_policy import agent_policy_text
    from coco_ai.guest.image_policy import IMAGE_POLICY_URI
    from coco_ai.policies import workload_modules

    image = policy.approved_image(initdata.claim(IMAGE_DIGEST_KEY))
    if image is None:
        return
    module = workload_of(initdata).module
    claimed = initdata.claim(AGENT_POLICY_KEY)
    if claimed != agent_policy_text(image, module):
        other = any(claimed == agent_policy_text(image, m) for m in workload_modules())
        raise ValueError(
            f"the run's initdata does not carry the agent policy that starts only {image} "
            f"with the launch of {module}, the workload it claims ("
            + ("it starts another workload" if other else "missing, permissive or another image's")
            + "): the host could have run other code"
        )
    if initdata.image_security_policy_uri != IMAGE_POLICY_URI:
        raise ValueError(
            f"the run's initdata does not point the image puller at the owner's image policy "
            f"{IMAGE_POLICY_URI} (it names {initdata.image_security_policy_uri!r})"
        )


@dataclass(frozen=True)
class PromotionEvidence:
    """Public references proving where a promoted checkpoint came from (no key, no plaintext).

    For every kind alike: base_model_digest and dataset_digest are the manifest's input digests
    (rag_index: the embedder and the document repository)."""

    checkpoint_uri: str
    manifest_digest: str  # "sha256:<hex>" of manifest.json (canonical manifest bytes)
    run_id: str
    checkpoint_id: str
    key_uri: str  # the checkpoint key's kbs:/// reference (the key stays in Trustee)
    created_at: int
    base_model_digest: str | None
    dataset_digest: str | None
    training_config_digest: str | None
    metrics: dict[str, float]
    token: str  # the EAR token (public evidence)
    token_digest: str  # "sha256:<hex>" of token.jwt
    manifest_signature_digest: str  # "sha256:<hex>" of manifest.jws
    init_data: str | None
    image_digest: str | None
    attestation: dict[str, Any]  # claims summary: submod statuses, GPU count, TEE, iat/exp
    tee_key_thumbprint: str  # RFC 7638 SHA-256 thumbprint of the attested key that signed
    policy_digest: str  # "sha256:<hex>" of the promotion policy text that allowed it
    owner_policy_digest: str | None = None  # "sha256:<hex>" of the owner policy JWS applied
    training_recipe_digest: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # stored file -> "sha256:<hex>"
    workload: str = DEFAULT_WORKLOAD  # the kind of the run (its initdata's claim)

    def provenance(self) -> dict[str, Any]:
        """What the model registry records (see docs/formats/promotion.md)."""
        return {
            "checkpoint_uri": self.checkpoint_uri,
            "workload": self.workload,
            "manifest_digest": self.manifest_digest,
            "token_digest": self.token_digest,
            "run_id": self.run_id,
            "checkpoint_id": self.checkpoint_id,
            "key_uri": self.key_uri,
            "base_model_digest": self.base_model_digest,
            "dataset_digest": self.dataset_digest,
            "training_config_digest": self.training_config_digest,
            "init_data": self.init_data,
            "image_digest": self.image_digest,
            "tee": self.attestation.get("tee"),
            "gpu_count": self.attestation.get("gpu_count"),
            "token_issued_at": self.attestation.get("issued_at"),
            "token_expires_at": self.attestation.get("expires_at"),
            "tee_key_thumbprint": self.tee_key_thumbprint,
            "promotion_policy_digest": self.policy_digest,
            "owner_policy_digest": self.owner_policy_digest,
            "training_recipe_digest": self.training_recipe_digest,
            "created_at": self.created_at,
            "metrics": dict(self.metrics),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for XCom or an Asset event's extra)."""
        return asdict(self)


def verify_for_promotion(
    checkpoint_uri: str,
    *,
    trust_anchor_pem: bytes,
    expectations: PromotionExpectations,
    now: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> PromotionEvidence:
    """Verify the stored checkpoint end to end and evaluate the promotion policy.

    Raises PromotionRefused with every reason found. An unauthentic manifest (token, signature
    or replay failure) stops at once; once the manifest is proven authentic the ciphertext check
    and the policy both run, so one refusal names all their failures.
    """
    try:
        store = open_store(checkpoint_uri, **dict(storage_options or {}))
        _, manifest_bytes = read_manifest(store)
        signature = _read_text(store, SIGNATURE_FILE)
        token = _read_text(store, TOKEN_FILE)
        # The same bytes are verified here and recorded in the evidence below.
        manifest, claims, signer = verify_signed_manifest(
            manifest_bytes,
            signature,
            token,
            trust_anchor_pem=trust_anchor_pem,
            policy=expectations.verification_policy(),
            now=now,
        )
        attestation = _attestation_summary(claims)
    except (CheckpointError, KbsError, OSError, ValueError) as exc:
        raise PromotionRefused([_label(exc)]) from None

    reasons = []
    # each object's SHA-256 from the verifying read: model signing hashes SHA-256 whatever
    # digest the manifest lists (BLAKE3 from version 5), and must sign exactly these bytes
    object_sha256s: dict[str, str] = {}
    try:
        object_sha256s = verify_objects(store, manifest, sha256s=True)
    except (CheckpointError, OSError) as exc:
        reasons.append(_label(exc))
    config_text = _read_text(store, CONFIG_FILE)
    recipe, config_reasons = _training_config(config_text, manifest, expectations)
    reasons += config_reasons
    policy_data = expectations.policy_data()
    if expectations.workload == "fl_aggregator" and not config_reasons:
        contribution_reasons = _contributions(
            config_text, manifest, claims, trust_anchor_pem, expectations
        )
        reasons += contribution_reasons
        if not contribution_reasons:  # every contribution approved: so is the record
            policy_data["approved_datasets"] = [manifest.dataset_digest]

    checkpoint = {
        "uri": checkpoint_uri,
        "manifest_digest": manifest.digest(),
        "run_id": manifest.run_id,
        "checkpoint_id": manifest.checkpoint_id,
        "key_uri": manifest.key_uri,
        "created_at": manifest.created_at,
        "base_model_digest": manifest.base_model_digest,
        "dataset_digest": manifest.dataset_digest,
        "training_config_digest": manifest.training_config_digest,
        "training_recipe_digest": recipe,
        "file_count": len(manifest.files),
    }
    decision = _policy.evaluate(
        {
            "attestation": {**attestation, "verified": True},
            "checkpoint": checkpoint,
            "metrics": dict(manifest.metrics),
        },
        policy_data,
    )
    reasons += [f"promotion policy: {d}" for d in decision.deny]
    if reasons or not decision.allow:
        raise PromotionRefused(reasons or ["promotion policy did not allow the checkpoint"])

    assert signature is not None and token is not None  # verify_signed_manifest checked both
    files = dict(object_sha256s)
    files[MANIFEST_FILE] = manifest.digest()
    files[SIGNATURE_FILE] = _sha256(signature.encode())
    files[TOKEN_FILE] = _sha256(token.encode())
    assert config_text is not None  # _training_config refused its absence
    files[CONFIG_FILE] = _sha256(config_text.encode())
    return PromotionEvidence(
        checkpoint_uri=checkpoint_uri,
        manifest_digest=manifest.digest(),
        run_id=manifest.run_id,
        checkpoint_id=manifest.checkpoint_id,
        key_uri=manifest.key_uri,
        created_at=manifest.created_at,
        base_model_digest=manifest.base_model_digest,
        dataset_digest=manifest.dataset_digest,
        training_config_digest=manifest.training_config_digest,
        metrics=dict(manifest.metrics),
        token=token,
        token_digest=files[TOKEN_FILE],
        manifest_signature_digest=files[SIGNATURE_FILE],
        init_data=attestation["init_data"],
        image_digest=attestation["image_digest"],
        attestation=attestation,
        tee_key_thumbprint=jwk.JWK(**signer).thumbprint(),
        policy_digest=decision.policy_digest,
        owner_policy_digest=expectations.owner_policy_digest,
        training_recipe_digest=recipe,
        files=files,
        workload=expectations.workload,
    )


# ---- internals ---------------------------------------------------------------------------------


def _read_text(store, name: str) -> str | None:
    return store.read_bytes(name).decode() if store.exists(name) else None


def _attestation_summary(claims: EarClaims) -> dict[str, Any]:
    """The claims a reviewer needs, not the whole token (which the evidence also carries)."""
    evidence = claims.annotated_evidence("cpu0")
    tees = sorted(
        k
        for k, v in evidence.items()
        if isinstance(v, dict) and k not in ("init_data_claims", "runtime_data_claims")
    )
    init_claims = claims.init_data_claims() or {}
    names = claims.submod_names()
    return {
        "appraisal_policy_ids": {
            name: claims.submod(name).get("ear.appraisal-policy-id") for name in names
        },
        "development_evidence": any(
            kind in claims.annotated_evidence(name)
            for name in names
            for kind in DEVELOPMENT_EVIDENCE
        ),
        "tee": tees[0] if tees else None,
        "submods": {name: claims.submod(name).get("ear.status") for name in claims.submod_names()},
        "gpu_count": len(claims.gpu_submods()),
        "issued_at": claims.issued_at,
        "expires_at": claims.expires_at,
        "init_data": claims.init_data(),
        "run_id": init_claims.get(RUN_ID_KEY),
        "image_digest": init_claims.get(IMAGE_DIGEST_KEY),
    }


def _contributions(
    text: str | None,
    manifest: Manifest,
    claims: EarClaims,
    trust_anchor_pem: bytes,
    expectations: PromotionExpectations,
) -> list[str]:
    from coco_ai.promotion.contributions import contribution_problems

    assert text is not None  # _training_config refused its absence
    return contribution_problems(
        json.loads(text),
        dataset_digest=manifest.dataset_digest,
        run_id=expectations.run_id,
        aggregator_claims=claims.init_data_claims() or {},
        trust_anchor_pem=trust_anchor_pem,
        token_signer_pem=expectations.token_signer_pem,
        approved_images=expectations.approved_images,
        approved_datasets=expectations.contributor_datasets,
        appraisal_policy_ids=expectations.appraisal_policy_ids,
        allow_development_evidence=expectations.allow_development_evidence,
        min_gpus=expectations.min_gpus,
        min_participants=expectations.thresholds.get("min_participants"),
        leeway=expectations.leeway,
    )


def _training_config(
    text: str | None, manifest: Manifest, expectations: PromotionExpectations
) -> tuple[str | None, list[str]]:
    """(recipe digest, reasons) for the public training_config.json beside the manifest: it must
    be the config whose digest the TEE signed, and belong to this run, its inputs and its key.
    The recipe is the digest of the kind's recipe tables."""
    from coco_ai.workloads.finetune.config import recipe_digest

    tables = expectations.rules.recipe_tables
    if text is None:
        return None, [f"training config: {CONFIG_FILE} is missing beside the manifest"]
    if _sha256(text.encode()) != manifest.training_config_digest:
        return None, [
            f"training config: {CONFIG_FILE} is not the config the TEE signed "
            f"(digest differs from the manifest's training_config_digest)"
        ]
    try:
        config = json.loads(text)
        recipe = recipe_digest(config, tables)
    except (ValueError, KeyError, TypeError):
        return None, [
            f"training config: {CONFIG_FILE} lacks the {tables} tables of a "
            f"{expectations.workload} config"
        ]
    reasons = []
    if config.get("run_id") != manifest.run_id:
        reasons.append(f"training config: names run {config.get('run_id')!r}, not the manifest's")
    for spec in expectations.kind.inputs:
        if spec.config_digest is None:
            continue  # the config names the input by URI only; its digest is the TEE's to sign
        table, name = spec.config_digest
        named = config.get(table)
        if not isinstance(named, dict) or named.get(name) != getattr(manifest, spec.manifest_field):
            reasons.append(f"training config: {spec.label} digest differs from the manifest's")
    if config.get("checkpoint_key_uri") != manifest.key_uri:
        reasons.append("training config: checkpoint key differs from the manifest's")
    if (
        expectations.checkpoint_key_uri is not None
        and config.get("checkpoint_key_uri") != expectations.checkpoint_key_uri
    ):
        reasons.append("training config: checkpoint key is not the one the run's initdata names")
    return recipe, reasons


_LABELS: tuple[tuple[type[BaseException], str], ...] = (
    (AttestationError, "attestation"),  # includes ReplayError (another run's checkpoint)
    (SignatureError, "manifest signature"),
    (IntegrityError, "ciphertext"),
    (ManifestError, "manifest"),
    (CheckpointError, "checkpoint"),
    (KbsError, "attestation token"),
    (OSError, "storage"),
    (ValueError, "checkpoint"),
)


def _label(exc: BaseException) -> str:
    label = next(name for kind, name in _LABELS if isinstance(exc, kind))
    detail = exc.detail if isinstance(exc, KbsError) else str(exc)
    return f"{label}: {detail}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
