"""`AttestedModelPromotionOperator`: verify the evidence chain, sign, register, announce.

One operator for every workload kind's output (a fine-tuned model, a RAG index): the kind comes
from the run's references, its thresholds from coco_ai.workloads.kinds."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context

from coco_ai.runs import RunRefs
from coco_ai_airflow._settings import as_int, owner_policy, required_setting, setting
from coco_ai_airflow.provenance.links import ProvenanceLink

#: Keys of the Asset event extra (references only).
ASSET_EXTRA_KEYS = (
    "model_name",
    "workload",
    "version",
    "alias",
    "run_id",
    "checkpoint_uri",
    "manifest_digest",
    "token_digest",
    "signature_uri",
    "signature_digest",
    "record_uri",
    "owner_policy_digest",
)


def _optional_number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def narrowing(
    min_gpus: Any, thresholds: dict[str, Any] | None, workload: str = "finetune"
) -> dict[str, Any]:
    """Run parameters as a narrowing of the owner policy (empty values: the owner's); the
    threshold names are the `workload` kind's (coco_ai.workloads.kinds)."""
    from coco_ai.workloads.kinds import workload_kind

    thresholds = thresholds or {}
    names = [t.name for t in workload_kind(workload).promotion.thresholds]
    unknown = sorted(set(thresholds) - set(names))
    if unknown:
        raise ValueError(f"unknown threshold(s) {unknown} for {workload} (known: {names})")
    narrowed: dict[str, Any] = {
        name: number
        for name in names
        if (number := _optional_number(name, thresholds.get(name))) is not None
    }
    if min_gpus is not None and min_gpus != "":
        narrowed["min_gpus"] = as_int("min_gpus", min_gpus)
    return narrowed


class AttestedModelPromotionOperator(BaseOperator):
    """Promote a stored checkpoint only if its whole provenance chain verifies under the data
    owner's signed policy.

    Wraps :func:`coco_ai.promotion.promote`. Every trust anchor, approval and threshold comes
    from the owner policy (``[coco_ai] owner_policy``, verified with ``owner_public_key``);
    ``min_gpus`` and ``thresholds`` may only narrow it (a looser value fails the task). The EAR
    token chains to the policy's anchor and pinned signer, CPU and enough GPUs are affirming
    under an accepted appraisal policy, no development evidence unless the policy is a
    development one, the token carries this run's initdata, the image, base model, data set and
    training recipe are approved, the manifest is signed by the attested TEE key, ciphertext
    digests match, thresholds hold, and the model beats the served champion (no rollback).
    Then the model is signed (OpenSSF, ``[coco_ai] model_signing_key``), its promotion record
    is written beside it and it is registered in MLflow with the serving alias moved to it.
    Any failed check raises and leaves the registry untouched. Airflow's part is convenience:
    consumers re-check with ``coco-ai verify`` and the owner's key alone.

    On success an event is emitted on every Asset in ``outlets`` with references only
    (registry version, URIs, digests). Returns the same references plus metrics and the
    attestation summary.

    Example::

        promote = AttestedModelPromotionOperator(
            task_id="attested_promotion",
            checkpoint=upload.output,
            run_refs=key_release.output,
            min_gpus="{{ params.gpu_count }}",
            thresholds={"max_eval_loss": "{{ params.max_eval_loss }}"},
            outlets=[Asset("x-coco-ai://models/support-bot")],
        )
    """

    template_fields = ("checkpoint", "run_refs", "thresholds", "min_gpus", "model_name", "alias")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "checkpoint": "json",
        "run_refs": "json",
        "thresholds": "json",
    }
    operator_extra_links = (ProvenanceLink(),)
    ui_color = "#cdb4db"

    def __init__(
        self,
        *,
        checkpoint: Any,
        run_refs: Any,
        thresholds: dict[str, Any] | None = None,
        min_gpus: int | str | None = None,
        model_name: str | None = None,
        alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checkpoint = checkpoint
        self.run_refs = run_refs
        self.thresholds = thresholds
        self.min_gpus = min_gpus
        self.model_name = model_name
        self.alias = alias

    def execute(self, context: Context) -> dict[str, Any]:
        from coco_ai.guest.initdata import Initdata
        from coco_ai.promotion import promote

        refs = RunRefs.from_xcom(self.run_refs)
        checkpoint = self.checkpoint if isinstance(self.checkpoint, dict) else {}
        checkpoint_run = checkpoint.get("run_id")
        if checkpoint_run != refs.run_id:
            raise ValueError(f"checkpoint belongs to run {checkpoint_run!r}, not {refs.run_id!r}")
        owner = owner_policy()
        self.log.info(
            "Verifying %s (run %s, initdata %s) under owner policy %s v%s (%s)",
            checkpoint["checkpoint_uri"],
            refs.run_id,
            refs.initdata_digest,
            owner.policy.policy_id,
            owner.policy.version,
            owner.digest,
        )
        # [coco_ai] registered_model_name names the fine-tuned model; another kind's outputs
        # go under the owner policy's registry name for that kind unless model_name is given
        default_name = setting("registered_model_name") if refs.workload == "finetune" else ""
        result = promote(
            checkpoint["checkpoint_uri"],
            owner_policy=owner,
            initdata=Initdata.from_annotation(refs.initdata_annotation),
            narrowing=narrowing(self.min_gpus, self.thresholds, refs.workload),
            model_name=self.model_name or default_name or None,
            signing_key_path=required_setting("model_signing_key"),
            registry_uri=required_setting("mlflow_tracking_uri"),
            alias=self.alias or setting("serving_alias"),
        ).to_dict()
        self.log.info(
            "Promoted %s version %s (alias %s), manifest %s",
            result["model_name"],
            result["version"],
            result["alias"],
            result["manifest_digest"],
        )
        extra = {k: result[k] for k in ASSET_EXTRA_KEYS}
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return result


class ServedVersionOperator(BaseOperator):
    """References of the version the registry serves for a workload kind's outputs, or None.

    The name is the owner policy's registry name for ``workload`` and the alias the deployment's
    serving alias. Returns ``{"uri", "run_id", "manifest_digest"}`` (references only) for a
    workload that can build on its last output — the RAG index re-embeds only what changed
    (coco_ai.workloads.rag_index.incremental). Nothing here is trusted: the TEE reuses that
    output only if it authenticates under its run's key. ``enabled`` false (templated, e.g. a
    Param) returns None: a full build.
    """

    template_fields = ("enabled",)

    def __init__(self, *, workload: str, enabled: Any = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.workload = workload
        self.enabled = enabled

    def execute(self, context: Context) -> dict[str, str] | None:
        from coco_ai.promotion import version_by_alias
        from coco_ai.promotion.registry import DEFAULT_ALIAS, MANIFEST_DIGEST_TAG, TAG_PREFIX

        if self.enabled in (False, "False", "false", 0, "0"):
            self.log.info("Disabled: a full build")
            return None
        name = owner_policy().policy.for_workload(self.workload).registry_name
        alias = setting("serving_alias") or DEFAULT_ALIAS
        served = version_by_alias(name, alias, registry_uri=required_setting("mlflow_tracking_uri"))
        if served is None:
            self.log.info("No version of %s is served (@%s): a full build", name, alias)
            return None
        found = {
            "uri": served.source,
            "run_id": served.tags.get(TAG_PREFIX + "run_id", ""),
            "manifest_digest": served.tags.get(MANIFEST_DIGEST_TAG, ""),
        }
        self.log.info("%s version %s (@%s): %s", name, served.version, alias, found)
        return found
