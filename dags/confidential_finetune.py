"""Confidential fine-tuning: attest, release keys, train in a TEE, verify, promote, revoke.

The same file runs on a CoCo cluster (``[coco_ai] execution_mode = kubernetes``) and on one
machine (``local``, the embedded default of ``coco-ai demo``). Deployment settings come from the
``[coco_ai]`` config section (``AIRFLOW__COCO_AI__*``) and the ``trustee_default`` connection
(``AIRFLOW_CONN_TRUSTEE_DEFAULT``); per-run choices come from the trigger form below.
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
from coco_ai_airflow.promotion import AttestedModelPromotionOperator
from coco_ai_airflow.workload import ConfidentialWorkloadOperator


def _setting(option: str) -> str:
    return conf.get("coco_ai", option)


#: Data owners publish a new encrypted data-set version as an event on this Asset, with extra
#: {"dataset_uri": "<object URI>", "dataset_key_uri": "kbs:///..."}; each event starts a run.
TRAINING_DATA = Asset(name="coco_ai_training_data", uri="x-coco-ai://datasets/training")
#: Each promotion emits an event here carrying references only (registry version, digests).
PROMOTED_MODEL = Asset(
    name="coco_ai_promoted_model",
    uri=f"x-coco-ai://models/{_setting('registered_model_name')}",
)

DATA, LORA, TRAIN, PROMOTE = ("Data", "LoRA adapter", "Training", "Promotion gate")

PARAMS = {
    "base_model": Param(
        _setting("base_model"),
        type="string",
        title="Base model",
        description="Hugging Face model directory (path or object-store URI) to fine-tune; "
        "its digest is recorded in the signed manifest.",
        section=DATA,
    ),
    "dataset_uri": Param(
        _setting("dataset_uri"),
        type="string",
        title="Data set URI",
        description="Object-store URI of the encrypted training data (JSONL). Only the TEE can "
        "decrypt it; Airflow sees the URI.",
        section=DATA,
    ),
    "dataset_key_uri": Param(
        _setting("dataset_key_uri"),
        type="string",
        pattern=RESOURCE_URI_PATTERN,  # the KBS client's own rule, for the form
        title="Data-set key (KBS resource)",
        description="kbs:///repo/type/tag of the data set's key in Trustee; released only to "
        "attested TEEs.",
        section=DATA,
    ),
    "lora_r": Param(8, type="integer", minimum=1, maximum=256, title="LoRA rank (r)", section=LORA),
    "lora_alpha": Param(
        16, type="integer", minimum=1, maximum=512, title="LoRA alpha", section=LORA
    ),
    "lora_dropout": Param(
        0.05, type="number", minimum=0, maximum=0.9, title="LoRA dropout", section=LORA
    ),
    "epochs": Param(1, type="integer", minimum=1, maximum=100, title="Epochs", section=TRAIN),
    "max_steps": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Maximum optimizer steps",
        description="Stop after this many steps (empty: as many as the epochs give).",
        section=TRAIN,
    ),
    **tee_params(_setting("default_tee"), "fine-tune"),
    "max_eval_loss": Param(
        None,
        type=["null", "number"],
        minimum=0,
        title="Maximum eval loss",
        description="Promote only if the held-out loss is at most this. Empty: the data owner's "
        "limit. May only tighten the owner's signed policy; a looser value fails the run.",
        section=PROMOTE,
    ),
    "min_relative_improvement": Param(
        None,
        type=["null", "number"],
        minimum=-1,
        maximum=1,
        title="Minimum relative improvement",
        description="Promote only if (loss before - loss after) / loss before is at least this. "
        "Empty: the data owner's minimum. May only tighten the owner's signed policy.",
        section=PROMOTE,
    ),
}

with DAG(
    dag_id="confidential_finetune",
    description="PEFT fine-tuning on confidential GPUs with attested key release and promotion",
    doc_md=__doc__,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    # retrain when a new data-set version lands and, if retrain_cron is set, by the clock
    schedule=schedule(TRAINING_DATA, _setting("retrain_cron")),
    catchup=False,
    max_active_runs=conf.getint("coco_ai", "max_active_runs"),
    # Only the idempotent tasks set retries; a short delay suits transient network errors.
    default_args={"retry_delay": timedelta(seconds=15)},
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["confidential-computing", "coco", "fine-tuning"],
) as dag:
    gate = attestation_gate()
    key_release = KeyReleaseOperator(
        task_id="key_release",
        retries=2,  # the grant goes to a path fixed by the run id: writing it again is harmless
        workload="finetune",
        inputs={
            "dataset": {
                "uri": "{{ params.dataset_uri }}",
                "key_uri": "{{ params.dataset_key_uri }}",
            },
            "base_model": {"uri": "{{ params.base_model }}"},
        },
        doc_md="""Pins the inputs (digests of the encrypted data set and of the base model),
builds this run's initdata (KBS URL and CA, workload, run id, key references, image digest)
and writes the run's grant to Trustee: only a TEE whose attested initdata names this run
obtains it, and with it derives the run's checkpoint key from the data owner's root. XCom holds
references only.""",
    )
    confidential_finetune = ConfidentialWorkloadOperator(
        task_id="confidential_finetune",
        run_refs=key_release.output,
        tee="{{ params.tee }}",
        gpu_count="{{ params.gpu_count }}",
        settings={
            "lora": {
                "r": "{{ params.lora_r }}",
                "alpha": "{{ params.lora_alpha }}",
                "dropout": "{{ params.lora_dropout }}",
            },
            "training": {
                "epochs": "{{ params.epochs }}",
                "max_steps": "{{ params.max_steps }}",
            },
        },
        doc_md="""LoRA fine-tuning inside the TEE. The workload fetches the data-set and
checkpoint keys from the confidential data hub (after attestation), trains, evaluates, encrypts
the adapter and signs its manifest with the attested TEE key. Kubernetes mode: a Kata pod with
a confidential GPU runtime class; local mode: a process beside the guest emulator.""",
    )
    upload = encrypted_upload(confidential_finetune, key_release, "adapter")
    attested_promotion = AttestedModelPromotionOperator(
        task_id="attested_promotion",
        checkpoint=upload.output,
        run_refs=key_release.output,
        min_gpus="{{ params.gpu_count }}",
        thresholds={
            "max_eval_loss": "{{ params.max_eval_loss }}",
            "min_relative_improvement": "{{ params.min_relative_improvement }}",
        },
        outlets=[PROMOTED_MODEL],
        doc_md="""Verifies the whole chain under the data owner's signed policy (EAR token
genuine and affirming for CPU and every GPU, this run's initdata, approved image, inputs and
training recipe, manifest signed by the attested key while the token was valid, ciphertext
digests, metric thresholds, better than the served champion), then signs the model (OpenSSF
model signing), writes the promotion record, registers it in MLflow and moves the serving alias.
Params can only tighten the owner's policy. Any failed check leaves the registry untouched;
anyone can re-check the result with `coco-ai verify` and the owner's public key.""",
    )
    confidential_pipeline(
        gate,
        key_release,
        confidential_finetune,
        upload,
        attested_promotion,
        revoke=revoke_keys(),
    )
