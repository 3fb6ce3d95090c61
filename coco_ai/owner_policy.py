"""The data owner's signed policy: what may be trained, on what, and what may be promoted.

One JSON document (docs/formats/owner-policy.md), signed offline with the data owner's P-256 key
as a compact JWS (ES256, ``typ`` ``coco-ai-owner-policy+jws``). It carries everything a verifier
must not take from Airflow: the approved base-model, data-set, training-recipe and image
digests, the attestation trust anchor and the EAR signer, the accepted appraisal-policy ids,
whether development (sample) evidence is acceptable, the minimum GPU count, the metric
thresholds, the champion rule, and the keys allowed to sign promoted models.

The top-level approvals, thresholds, champion rule and ``model_name`` govern the fine-tune's
outputs; each other workload kind (coco_ai.workloads.kinds) whose outputs may be promoted has a
section under ``workloads`` with its own registry name, approved inputs and recipes, thresholds
and champion rule (:class:`WorkloadPolicy`). Attestation and promotion signers are shared: one
chain of trust for every kind.

Whoever verifies (the promotion step, `coco-ai verify`, a serving TEE) holds the owner's public
key from its own configuration — never from an Airflow Connection, Variable, Param or XCom — and
takes every decision from the document that key verifies. Airflow may only *narrow* it
(:meth:`OwnerPolicy.narrowed`): a Param asking for fewer GPUs or a looser threshold is refused.
The same document serves fine-tuning, RAG and federated learning.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coco_ai.digest import Digest, is_sha256

FORMAT = "coco-ai/owner-policy/v1"
JWS_TYPE = "coco-ai-owner-policy+jws"
#: Trustee writes the appraisal policy id the KBS asked for: "default" unless reconfigured.
DEFAULT_APPRAISAL_POLICY_IDS = ("default",)
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FIELDS = frozenset(
    {
        "format",
        "policy_id",
        "version",
        "model_name",
        "approved",
        "attestation",
        "thresholds",
        "champion",
        "promotion_signers",
        "workloads",
    }
)
#: the workload kind the top-level approvals, thresholds, champion rule and model_name govern
FINETUNE = "finetune"
_APPROVED = ("base_models", "datasets", "training_recipes", "images")
_ATTESTATION = frozenset(
    {
        "trust_anchor_pem",
        "token_signer_pem",
        "appraisal_policy_ids",
        "allow_development_evidence",
        "min_gpus",
    }
)
_THRESHOLDS = ("max_eval_loss", "min_relative_improvement")


class OwnerPolicyError(ValueError):
    """A policy document that is malformed, unsigned, signed by another key, or widened."""


@dataclass(frozen=True)
class WorkloadPolicy:
    """What the owner approves for the outputs of one workload kind."""

    workload: str
    registry_name: str  # the registered model (or index) its promoted outputs are versions of
    approved_inputs: Mapping[str, frozenset[str]]  # input name (the kind's) -> approved digests
    approved_recipes: frozenset[str]
    thresholds: Mapping[str, float]  # as the owner set them; see limits() for the defaults
    champion_max_regression: float | None

    def limits(self) -> dict[str, float]:
        """The thresholds promotion applies: the owner's, and the kind's defaults for those
        the owner left out."""
        from coco_ai.workloads.kinds import workload_kind

        rules = workload_kind(self.workload).promotion
        limits = {t.name: t.default for t in rules.thresholds if t.default is not None}
        return {**limits, **self.thresholds}


@dataclass(frozen=True)
class OwnerPolicy:
    """A verified (or about to be signed) owner policy. Build with :meth:`from_dict`."""

    policy_id: str
    version: int  # monotonic: a verifier that has seen version n refuses n-1
    model_name: str
    approved_base_models: frozenset[str]
    approved_datasets: frozenset[str]
    approved_training_recipes: frozenset[str]  # see coco_ai.workloads.finetune.config
    approved_images: frozenset[str]  # image references pinned by digest, host/path@sha256:<hex>
    trust_anchor_pem: str
    token_signer_pem: str
    appraisal_policy_ids: frozenset[str]
    allow_development_evidence: bool
    min_gpus: int
    max_eval_loss: float | None
    min_relative_improvement: float | None
    #: the served model may be replaced only by one whose eval_loss is at most
    #: champion_eval_loss * (1 + champion_max_regression); None disables the comparison
    champion_max_regression: float | None
    promotion_signers: tuple[str, ...]  # PEM public keys allowed to sign a promoted model
    #: the other workload kinds' sections (the fine-tune's are the top-level fields)
    workloads: Mapping[str, WorkloadPolicy] = field(default_factory=dict)

    # ---- the document ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, doc: Any) -> OwnerPolicy:
        """Validate a policy document; every problem is named in one OwnerPolicyError."""
        if not isinstance(doc, Mapping):
            raise OwnerPolicyError("owner policy must be a JSON object")
        bad: list[str] = []
        if doc.get("format") != FORMAT:
            raise OwnerPolicyError(
                f"owner policy format must be {FORMAT!r}, got {doc.get('format')!r}"
            )
        unknown = sorted(set(doc) - _FIELDS)
        if unknown:
            bad.append(f"unknown field(s) {unknown}")
        policy_id = doc.get("policy_id")
        if not isinstance(policy_id, str) or not _POLICY_ID.fullmatch(policy_id):
            bad.append("policy_id must be 1-128 of [A-Za-z0-9._-]")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            bad.append("version must be an integer >= 1")
        model_name = doc.get("model_name")
        if not isinstance(model_name, str) or not model_name.strip():
            bad.append("model_name must be a non-empty string")

        approved = _table(doc, "approved", bad)
        unknown = sorted(set(approved) - set(_APPROVED))
        if unknown:
            bad.append(f"approved: unknown field(s) {unknown}")
        digests = {
            n: _digest_set(approved.get(n), f"approved.{n}", bad)
            for n in _APPROVED
            if n != "images"
        }
        digests["images"] = _image_set(approved.get("images"), "approved.images", bad)

        attestation = _table(doc, "attestation", bad)
        unknown = sorted(set(attestation) - _ATTESTATION)
        if unknown:
            bad.append(f"attestation: unknown field(s) {unknown}")
        anchor = _pem(
            attestation.get("trust_anchor_pem"),
            "attestation.trust_anchor_pem",
            bad,
            ("CERTIFICATE",),
        )
        signer = _pem(
            attestation.get("token_signer_pem"),
            "attestation.token_signer_pem",
            bad,
            ("CERTIFICATE", "PUBLIC KEY"),
        )
        ids = attestation.get("appraisal_policy_ids", list(DEFAULT_APPRAISAL_POLICY_IDS))
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            bad.append("attestation.appraisal_policy_ids must be a non-empty list of strings")
            ids = []
        dev = attestation.get("allow_development_evidence", False)
        if not isinstance(dev, bool):
            bad.append("attestation.allow_development_evidence must be true or false")
        min_gpus = attestation.get("min_gpus", 1)
        if isinstance(min_gpus, bool) or not isinstance(min_gpus, int) or min_gpus < 0:
            bad.append("attestation.min_gpus must be an integer >= 0")

        thresholds = _table(doc, "thresholds", bad)
        unknown = sorted(set(thresholds) - set(_THRESHOLDS))
        if unknown:
            bad.append(f"thresholds: unknown field(s) {unknown}")
        limits = {
            name: _number(thresholds.get(name), f"thresholds.{name}", bad) for name in _THRESHOLDS
        }

        champion = _table(doc, "champion", bad)
        unknown = sorted(set(champion) - {"max_regression"})
        if unknown:
            bad.append(f"champion: unknown field(s) {unknown}")
        regression = _number(champion.get("max_regression"), "champion.max_regression", bad)
        if regression is not None and regression < 0:
            bad.append("champion.max_regression must not be negative")

        signers = doc.get("promotion_signers", [])
        if not isinstance(signers, list) or not signers:
            bad.append("promotion_signers must be a non-empty list of PEM public keys")
            signers = []
        signer_pems = tuple(
            p
            for i, s in enumerate(signers)
            if (p := _pem(s, f"promotion_signers[{i}]", bad, ("PUBLIC KEY",))) is not None
        )
        workloads = _workloads(doc, bad)
        if bad:
            raise OwnerPolicyError("invalid owner policy: " + "; ".join(bad))
        assert anchor is not None and signer is not None
        return cls(
            policy_id=policy_id,
            version=version,
            model_name=model_name,
            approved_base_models=digests["base_models"],
            approved_datasets=digests["datasets"],
            approved_training_recipes=digests["training_recipes"],
            approved_images=digests["images"],
            trust_anchor_pem=anchor,
            token_signer_pem=signer,
            appraisal_policy_ids=frozenset(ids),
            allow_development_evidence=dev,
            min_gpus=min_gpus,
            max_eval_loss=limits["max_eval_loss"],
            min_relative_improvement=limits["min_relative_improvement"],
            champion_max_regression=regression,
            promotion_signers=signer_pems,
            workloads=workloads,
        )

    def to_dict(self) -> dict[str, Any]:
        thresholds = {n: getattr(self, n) for n in _THRESHOLDS if getattr(self, n) is not None}
        champion = (
            {}
            if self.champion_max_regression is None
            else {"max_regression": self.champion_max_regression}
        )
        doc = {
            "format": FORMAT,
            "policy_id": self.policy_id,
            "version": self.version,
            "model_name": self.model_name,
            "approved": {
                "base_models": sorted(self.approved_base_models),
                "datasets": sorted(self.approved_datasets),
                "training_recipes": sorted(self.approved_training_recipes),
                "images": sorted(self.approved_images),
            },
            "attestation": {
                "trust_anchor_pem": self.trust_anchor_pem,
                "token_signer_pem": self.token_signer_pem,
                "appraisal_policy_ids": sorted(self.appraisal_policy_ids),
                "allow_development_evidence": self.allow_development_evidence,
                "min_gpus": self.min_gpus,
            },
            "thresholds": thresholds,
            "champion": champion,
            "promotion_signers": list(self.promotion_signers),
        }
        if self.workloads:  # absent when empty: a fine-tune-only policy's payload is unchanged
            doc["workloads"] = {
                name: _workload_dict(section) for name, section in sorted(self.workloads.items())
            }
        return doc

    def for_workload(self, workload: str) -> WorkloadPolicy:
        """The owner's approvals, thresholds and registry name for `workload`'s outputs;
        OwnerPolicyError when the policy has no section for it (it approves nothing of it)."""
        if workload == FINETUNE:
            return WorkloadPolicy(
                workload=FINETUNE,
                registry_name=self.model_name,
                approved_inputs={
                    "dataset": self.approved_datasets,
                    "base_model": self.approved_base_models,
                },
                approved_recipes=self.approved_training_recipes,
                thresholds={
                    n: getattr(self, n) for n in _THRESHOLDS if getattr(self, n) is not None
                },
                champion_max_regression=self.champion_max_regression,
            )
        try:
            return self.workloads[workload]
        except KeyError:
            raise OwnerPolicyError(
                f"the owner policy approves no {workload} outputs (it has no workloads.{workload} "
                "section)"
            ) from None

    @property
    def registry_names(self) -> frozenset[str]:
        """Every registered name the policy governs (the model's, each kind's)."""
        return frozenset({self.model_name, *(w.registry_name for w in self.workloads.values())})

    @property
    def approved_image_digests(self) -> frozenset[str]:
        """The manifest digests of the approved images (what a run's initdata claims)."""
        return frozenset(ref.partition("@")[2] for ref in self.approved_images)

    def approved_image(self, digest: str | None) -> str | None:
        """The approved image reference with manifest digest `digest`, if any."""
        return next(
            (r for r in sorted(self.approved_images) if r.endswith("@" + str(digest))), None
        )

    # ---- narrowing (the only thing Airflow may do to it) ---------------------------------------

    def narrowed(
        self, *, workload: str = FINETUNE, min_gpus: int | None = None, **thresholds: Any
    ) -> OwnerPolicy:
        """This policy made stricter by run parameters: `min_gpus` and `workload`'s thresholds
        (coco_ai.workloads.kinds: max_eval_loss, min_relative_improvement for the fine-tune;
        min_hit_rate_at_k, min_ann_recall_at_10 … for rag_index; None keeps the owner's). A
        parameter that would widen it is refused (never silently clamped), so a misconfigured
        trigger fails loudly."""
        from coco_ai.workloads.kinds import workload_kind

        try:
            rules = workload_kind(workload).promotion
        except ValueError as exc:
            raise OwnerPolicyError(str(exc)) from None
        section = self.for_workload(workload)
        limits = section.limits()
        bad = []
        changes: dict[str, Any] = {}
        tightened: dict[str, float] = {}
        if min_gpus is not None:
            if isinstance(min_gpus, bool) or not isinstance(min_gpus, int):
                bad.append(f"min_gpus must be an integer, got {min_gpus!r}")
            elif min_gpus < self.min_gpus:
                bad.append(f"min_gpus={min_gpus} is below the data owner's minimum {self.min_gpus}")
            else:
                changes["min_gpus"] = min_gpus
        for name, value in thresholds.items():
            if value is None:
                continue
            threshold = rules.threshold(name)
            if threshold is None:
                known = ", ".join(t.name for t in rules.thresholds)
                bad.append(f"{name} is not a threshold of {workload} outputs (those are {known})")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                bad.append(f"{name} must be a finite number, got {value!r}")
            elif (owner := limits.get(name)) is not None and (
                value < owner if threshold.minimum else value > owner
            ):
                bad.append(f"{name}={value} is looser than the data owner's {owner}")
            else:
                tightened[name] = value
        if bad:
            raise OwnerPolicyError(
                "run parameters may only narrow the owner policy: " + "; ".join(bad)
            )
        if workload == FINETUNE:
            changes.update(tightened)
        elif tightened:
            narrowed = replace(section, thresholds={**section.thresholds, **tightened})
            changes["workloads"] = {**self.workloads, workload: narrowed}
        return replace(self, **changes)

    # ---- signing ----------------------------------------------------------------------------

    def payload(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def sign(self, owner_private_key_pem: bytes) -> str:
        """The compact JWS of this policy, signed with the owner's P-256 private key."""
        from jwcrypto import jws

        key = _private_key(owner_private_key_pem)
        sig = jws.JWS(self.payload())
        sig.add_signature(
            key, alg="ES256", protected={"alg": "ES256", "typ": JWS_TYPE, "kid": key.thumbprint()}
        )
        return sig.serialize(compact=True)


@dataclass(frozen=True)
class SignedOwnerPolicy:
    """A policy together with the exact JWS it was verified from (what bundles carry)."""

    policy: OwnerPolicy
    jws: str

    @property
    def digest(self) -> str:
        return str(Digest.of(self.jws.encode()))


def verify_owner_policy(signed: str | bytes, owner_public_key_pem: bytes) -> SignedOwnerPolicy:
    """Verify a compact JWS with the owner's public key and return the policy it carries."""
    from coco_ai.crypto.verify import verify_es256_jws

    text = signed.decode("ascii", errors="replace") if isinstance(signed, bytes) else signed
    text = text.strip()
    key = owner_public_key(owner_public_key_pem)
    try:
        header, payload = verify_es256_jws(text, key)
    except ValueError:
        raise OwnerPolicyError(
            "owner policy signature does not verify with the data owner's key "
            "(signed by another key, or the document was altered)"
        ) from None
    if header.get("typ") != JWS_TYPE:
        raise OwnerPolicyError(f"owner policy JWS typ is not {JWS_TYPE}")
    try:
        doc = json.loads(payload)
    except ValueError:
        raise OwnerPolicyError("owner policy payload is not JSON") from None
    return SignedOwnerPolicy(OwnerPolicy.from_dict(doc), text)


def owner_public_key(pem: bytes):
    """The owner's P-256 public key (a PEM public key or certificate) as a JWK."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from jwcrypto import jwk

    try:
        if b"BEGIN CERTIFICATE" in pem:
            key = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = load_pem_public_key(pem)
    except ValueError:
        raise OwnerPolicyError("owner public key is not a PEM public key or certificate") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise OwnerPolicyError("owner key must be EC P-256 (the policy is signed ES256)")
    return jwk.JWK.from_pyca(key)


def generate_owner_key() -> tuple[bytes, bytes]:
    """A new (private PEM, public PEM) P-256 pair for the data owner."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _private_key(pem: bytes):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwcrypto import jwk

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise OwnerPolicyError("owner private key is not a readable unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise OwnerPolicyError("owner key must be EC P-256 (the policy is signed ES256)")
    return jwk.JWK.from_pyca(key)


def _table(doc: Mapping[str, Any], name: str, bad: list[str]) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, Mapping):
        bad.append(f"{name} must be an object")
        return {}
    return value


def _digest_set(value: Any, what: str, bad: list[str]) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        bad.append(f"{what} must be a list of 'sha256:<64 hex>'")
        return frozenset()
    wrong = [d for d in value if not is_sha256(d)]
    if wrong:
        bad.append(f"{what}: {wrong[0]!r} is not 'sha256:<64 hex>'")
    return frozenset(d for d in value if is_sha256(d))


def _image_set(value: Any, what: str, bad: list[str]) -> frozenset[str]:
    from coco_ai.guest.agent_policy import AgentPolicyError, qualified_pinned_image

    if value is None:
        return frozenset()
    if not isinstance(value, list):
        bad.append(f"{what} must be a list of image references host/path@sha256:<64 hex>")
        return frozenset()
    images = set()
    for ref in value:
        try:
            images.add(qualified_pinned_image(ref))
        except AgentPolicyError as exc:
            bad.append(f"{what}: {exc}")
    return frozenset(images)


def _number(value: Any, what: str, bad: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        bad.append(f"{what} must be a finite number")
        return None
    return float(value)


def _pem(value: Any, what: str, bad: list[str], kinds: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not any(f"-----BEGIN {k}-----" in value for k in kinds):
        bad.append(f"{what} must be a PEM {' or '.join(k.lower() for k in kinds)}")
        return None
    return value.strip() + "\n"


def _workloads(doc: Mapping[str, Any], bad: list[str]) -> dict[str, WorkloadPolicy]:
    """The `workloads` sections: one per workload kind other than the fine-tune."""
    from coco_ai.workloads.kinds import KINDS

    sections = _table(doc, "workloads", bad)
    found = {}
    for name, section in sections.items():
        where = f"workloads.{name}"
        if name == FINETUNE:
            bad.append(f"{where}: the fine-tune's approvals are the top-level fields")
            continue
        if name not in KINDS:
            bad.append(f"{where}: unknown workload kind (known: {', '.join(sorted(KINDS))})")
            continue
        if not isinstance(section, Mapping):
            bad.append(f"{where} must be an object")
            continue
        kind = KINDS[name]
        unknown = sorted(set(section) - {"registry_name", "approved", "thresholds", "champion"})
        if unknown:
            bad.append(f"{where}: unknown field(s) {unknown}")
        registry_name = section.get("registry_name")
        if not isinstance(registry_name, str) or not registry_name.strip():
            bad.append(f"{where}.registry_name must be a non-empty string")
        approved = _table(section, "approved", bad)
        inputs = [i.name for i in kind.inputs]
        unknown = sorted(set(approved) - {*inputs, "recipes"})
        if unknown:
            bad.append(f"{where}.approved: unknown field(s) {unknown} (expected {inputs}, recipes)")
        thresholds = _table(section, "thresholds", bad)
        names = [t.name for t in kind.promotion.thresholds]
        unknown = sorted(set(thresholds) - set(names))
        if unknown:
            bad.append(f"{where}.thresholds: unknown field(s) {unknown} (expected {names})")
        limits = {
            n: v
            for n in names
            if (v := _number(thresholds.get(n), f"{where}.thresholds.{n}", bad)) is not None
        }
        champion = _table(section, "champion", bad)
        if sorted(set(champion) - {"max_regression"}):
            bad.append(
                f"{where}.champion: unknown field(s) {sorted(set(champion) - {'max_regression'})}"
            )
        regression = _number(
            champion.get("max_regression"), f"{where}.champion.max_regression", bad
        )
        if regression is not None and regression < 0:
            bad.append(f"{where}.champion.max_regression must not be negative")
        found[name] = WorkloadPolicy(
            workload=name,
            registry_name=registry_name if isinstance(registry_name, str) else "",
            approved_inputs={
                i: _digest_set(approved.get(i), f"{where}.approved.{i}", bad) for i in inputs
            },
            approved_recipes=_digest_set(approved.get("recipes"), f"{where}.approved.recipes", bad),
            thresholds=limits,
            champion_max_regression=regression,
        )
    return found


def _workload_dict(section: WorkloadPolicy) -> dict[str, Any]:
    return {
        "registry_name": section.registry_name,
        "approved": {
            **{name: sorted(d) for name, d in section.approved_inputs.items()},
            "recipes": sorted(section.approved_recipes),
        },
        "thresholds": dict(sorted(section.thresholds.items())),
        "champion": {}
        if section.champion_max_regression is None
        else {"max_regression": section.champion_max_regression},
    }
