"""Key release (the run's identity and its grant) and revocation, for any workload kind.

A run's checkpoint key is derived inside its TEE from the data owner's run-key root, after the
TEE has fetched the run's *grant* (coco_ai.run_keys): Airflow writes the grant — public JSON, the
run id and its initdata digest — and never holds a key. Trustee releases the grant and the root
only to a TEE whose attested initdata names them (and, by the resource policy, whose CPU and
every GPU are affirming). What the run is — workload, image, pinned inputs, key references,
staging, initdata — travels on as :class:`coco_ai.runs.RunRefs`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context, TriggerRule

from coco_ai.digest import Digest
from coco_ai.kbs.wire import parse_resource_uri
from coco_ai.run_keys import Grant, revoke_grant
from coco_ai.runs import RunInput, RunRefs, pinned_image
from coco_ai.workloads.kinds import WorkloadKind, workload_kind
from coco_ai_airflow._settings import coco_run_id, required_setting, setting
from coco_ai_airflow.hooks.trustee import TrusteeHook


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
    """Pin the run's identity and grant the run its key.

    ``inputs`` maps each input of the ``workload`` kind to ``{"uri", "key_uri"?}`` (templated).
    Each input is pinned by digest, read without any key (the encrypted data-set object, the
    base-model directory); the run's initdata is built from exactly the claims a TEE of this run
    must present (:meth:`coco_ai.runs.RunRefs.expected_claims`); then the run's grant (its id and
    initdata digest, no key) is written to Trustee, from which the run's TEE — and only it —
    derives its checkpoint key (``run_key_root``, default ``[coco_ai] run_key_root_uri``: the data
    owner's root in Trustee). Airflow never holds a key.

    A run of several TEEs (a federation) plans one party per task: ``party`` (templated,
    ``{"federation", "role", "participant_id"}``) adds the party's identity to its initdata
    (coco_ai.federated.identity); the party that derives the run's key (the aggregator) is
    granted, the others are planned with ``grant=False`` (their keys are their data owners').

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

    template_fields = ("inputs", "image", "staging_root", "run_key_root", "party")
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}
    ui_color = "#fde2e4"

    def __init__(
        self,
        *,
        workload: str,
        inputs: dict[str, dict[str, Any]],
        image: str | None = None,
        staging_root: str | None = None,
        run_key_root: str | None = None,
        party: dict[str, str] | None = None,
        grant: bool = True,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.workload = workload
        self.inputs = inputs
        self.image = image
        self.staging_root = staging_root
        self.run_key_root = run_key_root
        self.party = party
        self.grant = grant
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

        run_key_root = parse_resource_uri(self.run_key_root or setting("run_key_root_uri"))

        party_claims = {}
        if self.party:
            from coco_ai.federated.identity import FederationIdentity

            party = dict(self.party)
            party_claims = FederationIdentity(
                party.get("federation"), party.get("role"), party.get("participant_id")
            ).claims()

        hook = TrusteeHook(self.trustee_conn_id)
        settings = hook.settings
        refs = RunRefs.plan(
            workload=kind.name,
            module=kind.module,
            run_id=run_id,
            image=image,
            run_key_root=run_key_root,
            inputs=inputs,
            staging_root=staging_root,
            kbs_url=settings.kbs_url,
            kbs_ca_pem=settings.ca_cert_pem,
            party_claims=party_claims,
        )
        self.log.info("Run initdata digest %s", refs.initdata_digest)
        if not self.grant:
            self.log.info(
                "Planned %s of run %s (no grant: it derives no run key)", kind.name, run_id
            )
            return refs.to_xcom()
        with hook.get_conn() as client:
            client.set_resource(refs.grant, Grant(run_id, refs.initdata_digest).to_bytes())
        self.log.info(
            "Granted run %s: its TEE derives %s from %s", run_id, refs.checkpoint_key, run_key_root
        )
        return refs.to_xcom()


class KeyRevokeOperator(BaseOperator):
    """Revoke the run's grant in Trustee; runs whatever happened upstream.

    ``trigger_rule`` defaults to ``all_done``. The grant's path follows from the run id alone,
    so a key release that failed half-way is cleaned up too. The grant is first overwritten with
    a tombstone, then deleted (coco_ai.run_keys.revoke_grant): writing always succeeds, so the
    delete then always finds it — Trustee v0.20/v0.21 answer a DELETE of an absent resource with
    401 PluginInternalError — and a retry (say after a lost answer, or while Trustee is down)
    repeats both steps harmlessly; a credential failure, or Trustee still down after the
    retries, fails the task, and a later sweep (``coco-ai grants sweep``) revokes what is left.

    Example::

        revoke = KeyRevokeOperator(task_id="revoke_keys")
    """

    ui_color = "#ffccd5"

    def __init__(
        self,
        *,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        trigger_rule: str = TriggerRule.ALL_DONE,
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = coco_run_id(self.dag_id, context["run_id"])
        with TrusteeHook(self.trustee_conn_id).get_conn() as client:
            grant = revoke_grant(client, run_id)
        self.log.info("Revoked run %s: %s tombstoned and deleted", run_id, grant)
        return {"run_id": run_id, "revoked": [grant.uri()]}


#: revoke_keys states that mean the run ended without its grant provably revoked (the task
#: failed for good, or an operator or a crash left it unrun)
UNREVOKED_STATES = frozenset({"failed", "upstream_failed", "skipped", "removed"})


class GrantSweepOperator(BaseOperator):
    """Revoke the grants that runs of ``dag_ids`` left behind.

    A run's ``revoke_keys`` normally revokes its grant; when that task failed for good (Trustee
    down longer than its retries, a worker lost mid-revoke) or never ran, the grant outlives the
    run. Trustee lists no resources over its API and Airflow's credential may only write and
    delete grants, so the runs are found from Airflow's side (the Task SDK's task states): every
    run whose key release started and whose revocation ended in a state in ``UNREVOKED_STATES``.
    Runs still in progress (revocation not final) are left alone. Revoking is idempotent, so a
    run swept twice is harmless; each sweep re-checks every such run of the DAGs' history.
    """

    ui_color = "#ffccd5"

    def __init__(
        self,
        *,
        dag_ids: list[str],
        key_release_task_id: str = "key_release",
        revoke_task_id: str = "revoke_keys",
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dag_ids = dag_ids
        self.key_release_task_id = key_release_task_id
        self.revoke_task_id = revoke_task_id
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        orphans = []
        for dag_id in self.dag_ids:
            states = ti.get_task_states(
                dag_id=dag_id, task_ids=[self.key_release_task_id, self.revoke_task_id]
            )
            for airflow_run_id, tasks in sorted(states.items()):
                started = tasks.get(self.key_release_task_id) not in (None, "skipped", "removed")
                if started and tasks.get(self.revoke_task_id) in UNREVOKED_STATES:
                    orphans.append(coco_run_id(dag_id, airflow_run_id))
        swept, failed = [], []
        with TrusteeHook(self.trustee_conn_id).get_conn() as client:
            for run_id in orphans:
                try:
                    swept.append(revoke_grant(client, run_id).uri())
                except Exception as exc:  # keep sweeping; the task fails below, naming each
                    failed.append(f"{run_id}: {exc}")
        self.log.info("Swept %d grant(s) of ended runs: %s", len(swept), swept)
        if failed:
            raise RuntimeError(f"could not revoke {len(failed)} grant(s): " + "; ".join(failed))
        return {"swept": swept}
