"""Key release (the run's identity and its per-run key) and revocation, for any workload kind.

The checkpoint key of a run is created *inside* Trustee: Airflow learns its ``kbs:///``
reference, never its bytes. Release is bound to the run's initdata (claim ``io.coco-ai.run-id``)
and to the resource policy (CPU and every GPU affirming); the initdata also names the key URIs,
so the policy can tie a per-run key to the run that asked for it. What the run is — workload,
image, pinned inputs, keys, staging, initdata — travels on as :class:`coco_ai.runs.RunRefs`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, TriggerRule
from coco_ai_airflow._settings import coco_run_id, required_setting, setting
from coco_ai_airflow.hooks.trustee import TrusteeHook

from coco_ai.digest import Digest
from coco_ai.guest.initdata import RUN_ID_KEY
from coco_ai.kbs.wire import parse_resource_path, parse_resource_uri
from coco_ai.runs import RunInput, RunRefs, RunRefsError, checkpoint_key_path, pinned_image
from coco_ai.workloads.kinds import WorkloadKind, workload_kind


def _inputs_from_asset_events(context: Context, kind: WorkloadKind) -> dict[str, dict[str, str]]:
    """The newest input versions named by the Asset events that triggered this run, if any.

    An event's extra may name ``<input>_uri`` (and ``<input>_key_uri``) for any input of the
    workload, e.g. ``{"dataset_uri": "s3://…", "dataset_key_uri": "kbs:///…"}``.
    """
    events = context.get("triggering_asset_events") or {}
    newest: dict[str, dict[str, str]] = {}
    for asset_events in events.values():
        for event in asset_events:
            extra = event.extra or {}
            for spec in kind.inputs:
                if extra.get(f"{spec.name}_uri"):
                    newest[spec.name] = {"uri": extra[f"{spec.name}_uri"]}
                    if extra.get(f"{spec.name}_key_uri"):
                        newest[spec.name]["key_uri"] = extra[f"{spec.name}_key_uri"]
    return newest


def _pin_input(kind: WorkloadKind, name: str, given: dict[str, Any]) -> RunInput:
    spec = next((s for s in kind.inputs if s.name == name), None)
    if spec is None:
        raise ValueError(f"workload {kind.name!r} takes no input {name!r}")
    uri = str(given.get("uri") or "").strip()
    if not uri:
        raise ValueError(
            f"no {name}: set its URI (Param or [coco_ai] setting) or trigger with an Asset event"
        )
    key = None
    if spec.keyed:
        key_uri = str(given.get("key_uri") or "").strip()
        if not key_uri:
            raise ValueError(f"no key for {name}: set its kbs:///repo/type/tag key URI")
        key = parse_resource_uri(key_uri)
    try:
        digest = Digest.parse(spec.digest(uri))
    except (OSError, ValueError, RuntimeError) as exc:  # missing, unreadable, not a model …
        raise ValueError(f"cannot pin {name} {uri!r}: {exc}") from exc
    return RunInput(uri=uri, digest=digest, key=key)


class KeyReleaseOperator(BaseOperator):
    """Provision the run's checkpoint key in Trustee and pin the run's identity.

    ``inputs`` maps each input of the ``workload`` kind to ``{"uri", "key_uri"?}`` (templated).
    Each input is pinned by digest, read without any key (the encrypted data-set object, the
    base-model directory); the checkpoint key is created *inside* Trustee, so Airflow learns its
    ``kbs:///`` reference, never its bytes; and the run's initdata is built from exactly the
    claims a TEE of this run must present (:meth:`coco_ai.runs.RunRefs.expected_claims`).

    Returns :meth:`coco_ai.runs.RunRefs.to_xcom`: references only, read by every later step.
    When the run was triggered by an Asset event whose extra names ``<input>_uri`` (and
    ``<input>_key_uri``), that version of the input is used instead of the argument.

    Example::

        key_release = KeyReleaseOperator(
            task_id="key_release",
            workload="finetune",
            inputs={
                "dataset": {"uri": "{{ params.dataset_uri }}",
                            "key_uri": "{{ params.dataset_key_uri }}"},
                "base_model": {"uri": "{{ params.base_model }}"},
            },
            image="registry.example/coco-ai/finetune@sha256:" + "0" * 64,
        )
    """

    template_fields = ("inputs", "image", "staging_root")
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}
    ui_color = "#fde2e4"

    def __init__(
        self,
        *,
        workload: str,
        inputs: dict[str, dict[str, Any]],
        image: str | None = None,
        staging_root: str | None = None,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.workload = workload
        self.inputs = inputs
        self.image = image
        self.staging_root = staging_root
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        kind = workload_kind(self.workload)
        run_id = coco_run_id(self.dag_id, context["run_id"])
        given = {name: dict(value or {}) for name, value in (self.inputs or {}).items()}
        from_asset = _inputs_from_asset_events(context, kind)
        if from_asset:
            self.log.info("Inputs from the triggering Asset event: %s", from_asset)
            for name, value in from_asset.items():
                given.setdefault(name, {}).update(value)
        unknown = sorted(set(given) - {spec.name for spec in kind.inputs})
        if unknown:
            raise ValueError(f"workload {kind.name!r} takes no input {unknown[0]!r}")
        inputs = {
            spec.name: _pin_input(kind, spec.name, given.get(spec.name, {})) for spec in kind.inputs
        }
        image = pinned_image(self.image or setting("workload_image"))
        staging_root = self.staging_root or required_setting("staging_uri")

        hook = TrusteeHook(self.trustee_conn_id)
        settings = hook.settings
        with hook.get_conn() as client:
            path = client.provision_run_key(
                checkpoint_key_path(run_id), bind={"initdata_key": RUN_ID_KEY, "value": run_id}
            )
        checkpoint_key = parse_resource_path(path)
        self.log.info(
            "Provisioned %s inside Trustee, released only to run %s", checkpoint_key, run_id
        )
        refs = RunRefs.plan(
            workload=kind.name,
            run_id=run_id,
            image=image,
            checkpoint_key=checkpoint_key,
            inputs=inputs,
            staging_root=staging_root,
            kbs_url=settings.kbs_url,
            kbs_ca_pem=settings.ca_cert_pem,
        )
        self.log.info("Run initdata digest %s", refs.initdata_digest)
        return refs.to_xcom()


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
        keys = {checkpoint_key_path(run_id)}
        unreadable: RunRefsError | None = None
        if self.run_refs:  # absent when key release failed before returning
            try:
                keys.add(RunRefs.from_xcom(self.run_refs).checkpoint_key)
            except RunRefsError as exc:
                unreadable = exc  # still revoke what the run id names, then fail loudly
        with TrusteeHook(self.trustee_conn_id).get_conn() as client:
            for key in sorted(keys, key=str):
                client.delete_resource(key)
        revoked = sorted(str(key) for key in keys)
        self.log.info("Revoked %s", ", ".join(revoked))
        if unreadable is not None:
            raise unreadable
        return {"run_id": run_id, "revoked": revoked}
