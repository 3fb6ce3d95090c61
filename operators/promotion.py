"""`AttestedModelPromotionOperator`: verify the evidence chain, sign, register, announce."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, Variable

from coco_ai.runs import RunRefs
from coco_ai_airflow._settings import as_int, required_setting, setting
from coco_ai_airflow.hooks.trustee import TrusteeHook
from coco_ai_airflow.provenance.links import ProvenanceLink

#: Governance Variables (JSON lists of "sha256:<hex>"). When unset, exactly the inputs that key
#: release pinned for this run are approved.
APPROVED_BASE_MODELS_VAR = "coco_ai_approved_base_models"
APPROVED_DATASETS_VAR = "coco_ai_approved_datasets"
#: Keys of the Asset event extra (references only).
ASSET_EXTRA_KEYS = (
    "model_name",
    "version",
    "alias",
    "run_id",
    "checkpoint_uri",
    "manifest_digest",
    "token_digest",
    "signature_uri",
    "signature_digest",
)


def _approved(variable: str, pinned: str) -> frozenset[str]:
    approved = Variable.get(variable, default=None, deserialize_json=True)
    if approved is None:
        return frozenset({pinned})
    if not isinstance(approved, list) or not all(isinstance(d, str) for d in approved):
        raise ValueError(f"Variable {variable} must be a JSON list of 'sha256:<hex>' strings")
    return frozenset(approved)


def _optional_number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


class AttestedModelPromotionOperator(BaseOperator):
    """Promote a stored checkpoint only if its whole provenance chain verifies.

    Wraps :func:`coco_ai.promotion.promote`: the EAR token chains to the connection's trust
    anchor, CPU and at least ``min_gpus`` GPUs are affirming, the token carries this run's
    initdata (digest and claims), the manifest is signed by the attested TEE key while the
    token was valid, ciphertext digests match, the base model and data set are approved, and the
    metric thresholds hold. Then the model is signed (OpenSSF model signing, key
    ``[coco_ai] model_signing_key``), registered in MLflow with its provenance as tags and the
    serving alias moved to it. Any failed check raises and leaves the registry untouched.

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
        min_gpus: int | str = 1,
        model_name: str | None = None,
        alias: str | None = None,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checkpoint = checkpoint
        self.run_refs = run_refs
        self.thresholds = thresholds
        self.min_gpus = min_gpus
        self.model_name = model_name
        self.alias = alias
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from coco_ai.promotion import PromotionExpectations, promote

        refs = RunRefs.from_xcom(self.run_refs)
        checkpoint = self.checkpoint if isinstance(self.checkpoint, dict) else {}
        checkpoint_run = checkpoint.get("run_id")
        if checkpoint_run != refs.run_id:
            raise ValueError(f"checkpoint belongs to run {checkpoint_run!r}, not {refs.run_id!r}")
        thresholds = self.thresholds or {}
        hook = TrusteeHook(self.trustee_conn_id)
        expectations = PromotionExpectations(
            run_id=refs.run_id,
            approved_base_models=_approved(
                APPROVED_BASE_MODELS_VAR, str(refs.input("base_model").digest)
            ),
            approved_datasets=_approved(APPROVED_DATASETS_VAR, str(refs.input("dataset").digest)),
            init_data_digest=refs.initdata_digest.hex,
            image_digest=str(refs.image_digest),
            init_data_claims=refs.expected_claims(),
            checkpoint_key_uri=refs.checkpoint_key.uri(),
            min_gpus=as_int("min_gpus", self.min_gpus),
            token_signer_pem=hook.token_signer(),
            max_eval_loss=_optional_number("max_eval_loss", thresholds.get("max_eval_loss")),
            min_relative_improvement=_optional_number(
                "min_relative_improvement", thresholds.get("min_relative_improvement")
            ),
        )
        self.log.info(
            "Verifying %s (run %s, initdata %s) for promotion",
            self.checkpoint["checkpoint_uri"],
            refs.run_id,
            refs.initdata_digest,
        )
        result = promote(
            self.checkpoint["checkpoint_uri"],
            trust_anchor_pem=hook.trust_anchor(),
            expectations=expectations,
            model_name=self.model_name or setting("registered_model_name"),
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
