"""Airflow provider metadata, read by Airflow's providers manager without importing hooks.

Airflow >= 3.2 renders connection forms from the declarative ``conn-fields`` and
``ui-field-behaviour`` below; the hook itself declares no widgets.
"""

from __future__ import annotations

from coco_ai import __version__

_INTEGRATION = "CoCo AI Pipelines"
_TEXT = {"type": ["string", "null"]}


def get_provider_info() -> dict:
    return {
        "package-name": "coco-ai-pipelines",
        "name": "CoCo AI Pipelines",
        "description": (
            "Confidential AI pipelines on Confidential Containers (CoCo): attestation gates, "
            "per-run key release through Trustee, confidential GPU fine-tuning pods and "
            "attested model promotion."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://confidentialcontainers.org/",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {"integration-name": _INTEGRATION, "python-modules": ["coco_ai_airflow.hooks.trustee"]}
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "coco_ai_airflow.attestation",
                    "coco_ai_airflow.keys",
                    "coco_ai_airflow.workload",
                    "coco_ai_airflow.checkpoint",
                    "coco_ai_airflow.promotion",
                ],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "coco_ai_airflow.hooks.trustee.TrusteeHook",
                "connection-type": "trustee",
                "hook-name": "Trustee (CoCo Key Broker)",
                "conn-fields": {
                    "kbs_url": {
                        "label": "KBS URL",
                        "description": "Base URL of the Trustee KBS, e.g. https://kbs.example:8080",
                        "schema": {"type": "string", "format": "uri"},
                    },
                    "ca_cert": {
                        "label": "KBS CA certificate (PEM)",
                        "description": "CA that signed the KBS TLS certificate; pinned by hook "
                        "and guest (empty: system trust store).",
                        "schema": {**_TEXT, "format": "multiline"},
                    },
                    "admin_secret": {
                        "label": "Admin credential",
                        "description": "Airflow's credential: its Ed25519 persona private key PEM "
                        "(self-signed style, Trustee v0.20.0) or the token for role airflow the "
                        "data owner minted (bearer style, v0.21.0+).",
                        "schema": {**_TEXT, "format": "password"},
                    },
                    "credential": {
                        "label": "Whose admin credential",
                        "description": "airflow (default): Airflow's own, which Trustee allows to "
                        "write and delete run grants only. data-owner: the data owner's full "
                        "credential, accepted for a loopback KBS only (development): then the "
                        "attestation gate compares and syncs policies.",
                        "schema": {"type": "string", "enum": ["airflow", "data-owner"]},
                    },
                    "admin_auth": {
                        "label": "Admin auth style",
                        "description": "self-signed: Trustee v0.20 (EdDSA JWT signed with the "
                        "admin key); bearer: Trustee v0.21+ (pre-issued JWT with a role claim).",
                        "schema": {"type": "string", "enum": ["self-signed", "bearer"]},
                    },
                    "trustee_version": {
                        "label": "Trustee version",
                        "description": "The Trustee release this KBS runs; picks the liveness "
                        "probe (/healthz from v0.21.0, /metrics on v0.20.0). Empty: probe both.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": [None, "0.20.0", "0.21.0", "main"],
                        },
                    },
                    "timeout_s": {
                        "label": "Request timeout (s)",
                        "description": "Per request to Trustee (default 30).",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                    "attempts": {
                        "label": "Attempts",
                        "description": "Tries of each idempotent admin call while Trustee is "
                        "unreachable or answers 5xx (default 4).",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "retry_delay_s": {
                        "label": "First retry delay (s)",
                        "description": "Backoff before the second try, doubling (default 1).",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "password", "port", "extra"],
                    "relabeling": {},
                    "placeholders": {
                        "kbs_url": "https://kbs.example.internal:8080",
                        "admin_auth": "self-signed",
                    },
                },
            }
        ],
        "config": {
            "coco_ai": {
                "description": "Deployment settings of the CoCo AI Pipelines operators.",
                "options": {
                    "execution_mode": {
                        "description": "How ConfidentialWorkloadOperator runs the workload: "
                        "kubernetes (a CoCo pod) or local (a process beside the "
                        "guest-components emulator; development only).",
                        "version_added": None,
                        "type": "string",
                        "example": "local",
                        "default": "kubernetes",
                    },
                    "default_tee": {
                        "description": "TEE type preselected in the trigger form (tdx, snp, "
                        "sample).",
                        "version_added": None,
                        "type": "string",
                        "example": "sample",
                        "default": "tdx",
                    },
                    "workload_image": {
                        "description": "Fine-tune image, pinned by digest (name@sha256:...).",
                        "version_added": None,
                        "type": "string",
                        "example": "registry.example/coco-ai/finetune@sha256:<64 hex>",
                        "default": "",
                    },
                    "namespace": {
                        "description": "Kubernetes namespace of the confidential pods.",
                        "version_added": None,
                        "type": "string",
                        "example": None,
                        "default": "confidential-ai",
                    },
                    "staging_uri": {
                        "description": "Object-store prefix the TEE writes encrypted outputs to.",
                        "version_added": None,
                        "type": "string",
                        "example": "s3://coco-staging/runs",
                        "default": "",
                    },
                    "run_key_root_uri": {
                        "description": "The data owner's run-key root in Trustee: each run's "
                        "TEE derives its checkpoint key from it after fetching the run's grant. "
                        "Stored by the data owner, never by Airflow.",
                        "version_added": None,
                        "type": "string",
                        "example": "kbs:///coco-ai/run-key-root/v1",
                        "default": "kbs:///coco-ai/run-key-root/v1",
                    },
                    "checkpoint_store_uri": {
                        "description": "Durable object-store prefix for verified checkpoints.",
                        "version_added": None,
                        "type": "string",
                        "example": "s3://coco-checkpoints",
                        "default": "",
                    },
                    "dataset_uri": {
                        "description": "Encrypted data set preselected in the trigger form.",
                        "version_added": None,
                        "type": "string",
                        "example": "s3://coco-datasets/support-v1.enc",
                        "default": "",
                    },
                    "dataset_key_uri": {
                        "description": "KBS resource holding the data set's key, preselected in "
                        "the trigger form.",
                        "version_added": None,
                        "type": "string",
                        "example": "kbs:///coco-ai/dataset-key/support-v1",
                        "default": "kbs:///coco-ai/dataset-key/default",
                    },
                    "base_model": {
                        "description": "Base model directory preselected in the trigger form.",
                        "version_added": None,
                        "type": "string",
                        "example": "/models/SmolLM2-135M-Instruct",
                        "default": "",
                    },
                    "retrain_cron": {
                        "description": "Cron expression (UTC) of periodic retraining (empty: "
                        "none); runs also start when a new data-set version is published as an "
                        "Asset event.",
                        "version_added": None,
                        "type": "string",
                        "example": None,
                        "default": "0 3 * * 1",
                    },
                    "documents_uri": {
                        "description": "Encrypted RAG document repository preselected in the "
                        "confidential_rag_index trigger form (coco-ai rag encrypt).",
                        "version_added": None,
                        "type": "string",
                        "example": "s3://coco-datasets/northwind-docs-v1.enc",
                        "default": "",
                    },
                    "documents_key_uri": {
                        "description": "KBS resource holding the document repository's key, "
                        "preselected in the confidential_rag_index trigger form.",
                        "version_added": None,
                        "type": "string",
                        "example": "kbs:///coco-ai/rag-key/northwind-v1",
                        "default": "kbs:///coco-ai/rag-key/default",
                    },
                    "embedder": {
                        "description": "Sentence-embedder model directory (BERT layout) "
                        "preselected in the confidential_rag_index trigger form.",
                        "version_added": None,
                        "type": "string",
                        "example": "/models/all-MiniLM-L6-v2",
                        "default": "",
                    },
                    "reindex_cron": {
                        "description": "Cron expression (UTC) of periodic re-indexing (empty: "
                        "none); runs also start when a new document-repository version is "
                        "published as an Asset event.",
                        "version_added": None,
                        "type": "string",
                        "example": "0 4 * * *",
                        "default": "",
                    },
                    "max_active_runs": {
                        "description": "How many runs of each pipeline DAG may run at once. "
                        "Runs never share a key (each has its own grant, initdata and derived "
                        "run key) and promotions are serialised by the registry lock, so the "
                        "bound is capacity: confidential GPU nodes, Trustee and the scheduler.",
                        "version_added": None,
                        "type": "integer",
                        "example": "32",
                        "default": "16",
                    },
                    "policy_set": {
                        "description": "Policy files the attestation gate expects Trustee to "
                        "serve: dev (accepts sample evidence) or prod.",
                        "version_added": None,
                        "type": "string",
                        "example": "dev",
                        "default": "prod",
                    },
                    "mlflow_tracking_uri": {
                        "description": "MLflow tracking/registry URI for promoted models.",
                        "version_added": None,
                        "type": "string",
                        "example": "sqlite:////var/lib/mlflow/mlflow.db",
                        "default": "",
                    },
                    "registered_model_name": {
                        "description": "MLflow registered model that promotion adds versions to.",
                        "version_added": None,
                        "type": "string",
                        "example": None,
                        "default": "coco-ai-finetuned",
                    },
                    "serving_alias": {
                        "description": "MLflow alias moved to each newly promoted version.",
                        "version_added": None,
                        "type": "string",
                        "example": None,
                        "default": "serving",
                    },
                    "model_signing_public_key": {
                        "description": "Path of the public key PEM of the promotion key; the "
                        "provenance view verifies model signatures with it (empty: derived from "
                        "model_signing_key where the API server can read that file).",
                        "version_added": None,
                        "type": "string",
                        "example": "/etc/coco-ai/model-signing.pub.pem",
                        "default": "",
                    },
                    "owner_public_key": {
                        "description": "Path of the data owner's P-256 public key PEM. It "
                        "verifies the owner policy, from which upload and promotion take every "
                        "trust anchor, approval and threshold. Deployment configuration, never a "
                        "Connection, Variable or Param: whoever can change it decides what is "
                        "trusted.",
                        "version_added": None,
                        "type": "string",
                        "example": "/etc/coco-ai/owner.pub.pem",
                        "default": "",
                    },
                    "owner_policy": {
                        "description": "Path or object-store URI of the data owner's signed "
                        "policy (compact JWS, docs/formats/owner-policy.md). Its signature is "
                        "checked with owner_public_key on every use.",
                        "version_added": None,
                        "type": "string",
                        "example": "s3://coco-governance/owner-policy.jws",
                        "default": "",
                    },
                    "model_signing_key": {
                        "description": "Path of the EC P-256 private key PEM that signs promoted "
                        "models (OpenSSF model signing).",
                        "version_added": None,
                        "type": "string",
                        "example": "/var/run/secrets/coco-ai/model-signing.pem",
                        "default": "",
                    },
                    "local_guest_command": {
                        "description": "JSON list: the command serving the guest-components "
                        "API in local mode (--initdata/--port/--gpus are appended). Empty: the "
                        "bundled emulator, coco-ai guest serve.",
                        "version_added": None,
                        "type": "string",
                        "example": '["coco-ai", "guest", "serve"]',
                        "default": "",
                    },
                    "local_workdir": {
                        "description": "Scratch directory of the local execution mode.",
                        "version_added": None,
                        "type": "string",
                        "example": "/var/lib/coco-ai/local",
                        "default": "",
                    },
                },
            }
        },
    }
