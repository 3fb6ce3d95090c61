"""Per-run key release and revocation through Trustee.

The checkpoint key of a run is created *inside* Trustee (provisioner API): Airflow learns its
``kbs:///`` URI, never its bytes. Release is bound to the run's initdata (claim
``io.coco-ai.run-id``) and to the resource policy (CPU and every GPU affirming); the initdata
also names the key URIs, so the policy can tie a per-run key to the run that asked for it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, TriggerRule

from coco_ai.guest.initdata import (
    CHECKPOINT_KEY_KEY,
    DATASET_KEY_KEY,
    IMAGE_DIGEST_KEY,
    RUN_ID_KEY,
    build_initdata,
)
from coco_ai.kbs.wire import parse_resource_uri
from coco_ai.workloads.models import model_digest
from operators._settings import coco_run_id, setting
from operators.execution.kubernetes import require_image_digest
from operators.hooks.trustee import TrusteeHook

#: Trustee repository of per-run keys (the resource policies pin it to the run's initdata).
RUN_KEY_REPOSITORY = "coco-ai-run"
CHECKPOINT_KEY_TYPE = "checkpoint-key"
#: Extra key of a data-set Asset event naming the new version's object URI.
DATASET_URI_EXTRA = "dataset_uri"
DATASET_KEY_URI_EXTRA = "dataset_key_uri"


def checkpoint_key_path(run_id: str) -> str:
    return f"{RUN_KEY_REPOSITORY}/{CHECKPOINT_KEY_TYPE}/{run_id}"


def object_digest(uri: str) -> str:
    """``sha256:<hex>`` of the (encrypted) object at ``uri``, read without any key."""
    from coco_ai.storage import open_store

    parent, _, name = uri.rstrip("/").rpartition("/")
    if not parent or not name:
        raise ValueError(f"{uri!r} is not an object URI")
    return "sha256:" + open_store(parent).sha256(name)


def expected_initdata_claims(run_refs: dict[str, str]) -> dict[str, str]:
    """The ``io.coco-ai.*`` claims a TEE of this run must present (what key release wrote)."""
    return {
        RUN_ID_KEY: run_refs["run_id"],
        IMAGE_DIGEST_KEY: run_refs["image"].partition("@")[2],
        CHECKPOINT_KEY_KEY: run_refs["checkpoint_key_uri"],
        DATASET_KEY_KEY: run_refs["dataset_key_uri"],
    }


def _dataset_from_asset_events(context: Context) -> dict[str, str]:
    """The newest data-set version named by the Asset events that triggered this run, if any."""
    events = context.get("triggering_asset_events") or {}
    newest: dict[str, str] = {}
    for asset_events in events.values():
        for event in asset_events:
            extra = event.extra or {}
            if extra.get(DATASET_URI_EXTRA):
                newest = {
                    k: extra[k] for k in (DATASET_URI_EXTRA, DATASET_KEY_URI_EXTRA) if k in extra
                }
    return newest


class KeyReleaseOperator(BaseOperator):
    """Provision the run's checkpoint key in Trustee and build the run's initdata.

    Returns references only (pushed as XCom, read by the fine-tune and revoke tasks)::

        {"run_id", "checkpoint_key_uri", "dataset_uri", "dataset_key_uri",
         "dataset_digest": "sha256:<hex of the encrypted object>", "base_model",
         "base_model_digest": "sha256:<model directory digest>", "image",
         "initdata_digest": "sha384:<hex>", "initdata_annotation": "<base64 gzip TOML>"}

    The digests pin the run's inputs: promotion later requires the TEE to have trained on
    exactly that data-set object and base model (unless governance Variables approve others).

    When the run was triggered by a data-set Asset event whose extra names ``dataset_uri``
    (and optionally ``dataset_key_uri``), that version is used instead of the arguments.

    Example::

        key_release = KeyReleaseOperator(
            task_id="key_release",
            dataset_uri="{{ params.dataset_uri }}",
            dataset_key_uri="{{ params.dataset_key_uri }}",
            base_model="{{ params.base_model }}",
            image="registry.example/coco-ai/finetune@sha256:" + "0" * 64,
        )
    """

    template_fields = ("dataset_uri", "dataset_key_uri", "base_model", "image")
    ui_color = "#fde2e4"

    def __init__(
        self,
        *,
        dataset_uri: str,
        dataset_key_uri: str,
        base_model: str,
        image: str | None = None,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_uri = dataset_uri
        self.dataset_key_uri = dataset_key_uri
        self.base_model = base_model
        self.image = image
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, str]:
        run_id = coco_run_id(self.dag_id, context["run_id"])
        dataset = {DATASET_URI_EXTRA: self.dataset_uri, DATASET_KEY_URI_EXTRA: self.dataset_key_uri}
        from_asset = _dataset_from_asset_events(context)
        if from_asset:
            self.log.info("Data set from the triggering Asset event: %s", from_asset)
            dataset.update(from_asset)
        if not dataset[DATASET_URI_EXTRA]:
            raise ValueError(
                "no data set: set the dataset_uri param or trigger with an Asset event"
            )
        dataset_key_uri = parse_resource_uri(dataset[DATASET_KEY_URI_EXTRA]).uri()
        image = require_image_digest(self.image or setting("workload_image"))
        if not self.base_model:
            raise ValueError("no base model: set the base_model param ([coco_ai] base_model)")
        dataset_digest = object_digest(dataset[DATASET_URI_EXTRA])
        base_model_digest = model_digest(self.base_model)

        hook = TrusteeHook(self.trustee_conn_id)
        settings = hook.settings
        with hook.get_conn() as client:
            path = client.provision_run_key(
                checkpoint_key_path(run_id), bind={"initdata_key": RUN_ID_KEY, "value": run_id}
            )
        checkpoint_key_uri = parse_resource_uri(f"kbs:///{path}").uri()
        self.log.info(
            "Provisioned %s inside Trustee, released only to run %s", checkpoint_key_uri, run_id
        )

        refs = {
            "run_id": run_id,
            "checkpoint_key_uri": checkpoint_key_uri,
            "dataset_uri": dataset[DATASET_URI_EXTRA],
            "dataset_key_uri": dataset_key_uri,
            "dataset_digest": dataset_digest,
            "base_model": self.base_model,
            "base_model_digest": base_model_digest,
            "image": image,
        }
        initdata = build_initdata(
            settings.kbs_url, settings.ca_cert_pem, expected_initdata_claims(refs)
        )
        digest = f"{initdata.algorithm}:{initdata.digest().hex()}"
        self.log.info("Run initdata digest %s", digest)
        return {**refs, "initdata_digest": digest, "initdata_annotation": initdata.annotation()}


class KeyRevokeOperator(BaseOperator):
    """Delete the run's per-run keys from Trustee; runs whatever happened upstream.

    ``trigger_rule`` defaults to ``all_done``. Deleting is idempotent, so retries are safe. The
    key path is derived from the run id as well, so a key provisioned by a key release that then
    failed (no ``run_refs``) is removed too.

    Example::

        revoke = KeyRevokeOperator(task_id="revoke_keys", run_refs=key_release.output)
    """

    template_fields = ("run_refs",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"run_refs": "json"}
    ui_color = "#ffccd5"

    def __init__(
        self,
        *,
        run_refs: Any = None,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        trigger_rule: str = TriggerRule.ALL_DONE,
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.run_refs = run_refs
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = coco_run_id(self.dag_id, context["run_id"])
        refs = self.run_refs if isinstance(self.run_refs, dict) else {}
        uris = {f"kbs:///{checkpoint_key_path(run_id)}"}
        if refs.get("checkpoint_key_uri"):
            uris.add(refs["checkpoint_key_uri"])
        with TrusteeHook(self.trustee_conn_id).get_conn() as client:
            for uri in sorted(uris):
                client.delete_resource(parse_resource_uri(uri))
        self.log.info("Revoked %s", ", ".join(sorted(uris)))
        return {"run_id": run_id, "revoked": sorted(uris)}
