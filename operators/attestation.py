"""`AttestationGateOperator`: pre-flight checks of the Trustee a run will depend on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseOperator, Context, Variable

from coco_ai import policies
from coco_ai_airflow._settings import owner_policy, setting
from coco_ai_airflow.hooks.trustee import TrusteeHook

SYNC_POLICIES_VAR = "coco_ai_sync_policies"


class AttestationGateError(RuntimeError):
    """Trustee is not in the state this pipeline requires (the message names what differs)."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _default_reference_values(policy_set: str) -> list[str]:
    # The sample attestation policies read these; real TEE policies name their own.
    if policies.POLICY_SETS[policy_set]["default_cpu"] == "attestation_cpu_sample":
        return sorted(policies.DEV_SAMPLE_REFERENCE_VALUES)
    return []


def _sync_allowed() -> bool:
    """The data owner's switch: Variable ``coco_ai_sync_policies`` ("true"/"false", default false).

    A Variable, not a config option, so that it can be turned off at runtime without restarting
    workers (e.g. while the data owner edits policies by hand).
    """
    value = Variable.get(SYNC_POLICIES_VAR, default="false")
    return str(value).strip().lower() in ("true", "1", "yes")


def _check_resource_policy(client: Any, name: str, wanted: str, sync: bool) -> str:
    """Make sure Trustee enforces ``wanted`` (the repository's resource policy rendered with the
    approved images); return how it was ensured."""
    expected = _sha256(wanted)
    text = client.get_resource_policy()  # None: Trustee v0.20+ lists policy ids only
    deployed = _sha256(text) if text is not None else None
    if deployed == expected:
        return "match"
    if not sync:
        if deployed is None:
            raise AttestationGateError(
                f"cannot verify the resource policy: this Trustee does not expose it (it lists "
                f"policy ids only), so it may differ from the repository's {name}.rego for the "
                f"approved images (sha256:{expected}); set Variable {SYNC_POLICIES_VAR}=true "
                "to let the gate upload it"
            )
        raise AttestationGateError(
            f"resource policy mismatch: Trustee serves sha256:{deployed}, the repository's "
            f"{name}.rego for the approved images is sha256:{expected} (set Variable "
            f"{SYNC_POLICIES_VAR}=true to replace it)"
        )
    client.set_resource_policy(wanted)
    readback = client.get_resource_policy()
    if readback is not None and _sha256(readback) != expected:
        raise AttestationGateError(
            f"resource policy still differs after upload: sha256:{_sha256(readback)}"
        )
    return "synced"


def _has_reference_value(client: Any, name: str) -> bool:
    from coco_ai.kbs.errors import RvpsError

    try:
        return bool(client.get_reference_value(name))
    except RvpsError:  # Trustee's answer for an unknown id
        return False


OWNER_RESPONSIBILITY = "not checked: the data owner's (Airflow's credential cannot read it)"


class AttestationGateOperator(BaseOperator):
    """Fail the run before any key exists unless Trustee is reachable as the connection pins it.

    Always, failing closed with a message that names what is wrong: the connection's KBS URL is
    ``https://`` and the KBS answers its liveness probe through TLS pinned to the connection's
    CA certificate (``/healthz`` from Trustee v0.21.0; v0.20.0 has none, so ``/metrics`` there;
    see ``KbsAdminClient.alive``).

    With Airflow's own credential (connection ``credential = "airflow"``, the default and the
    only choice for a real Trustee) that is all: Trustee allows that credential to write and
    delete run grants only (coco_ai.kbs.admin_acl), so the gate reads no policy and no
    reference value. Which policies Trustee enforces is the data owner's responsibility, who
    uploads them with their own credential; the summary names the repository files and digests
    the data owner is expected to have loaded. Asking such a gate to sync policies, or to check
    named reference values, fails: it could not.

    Only when the connection declares the data owner's credential (``credential =
    "data-owner"``, which the hook accepts for a loopback KBS only: a development convenience)
    does the gate also compare and sync, as before:

    1. the resource policy Trustee serves has the SHA-256 of the repository's file for
       ``policy_set`` (``coco_ai/policies``) rendered with the approved images
       (``approved_images``, default: those the data owner's signed policy approves; see
       ``coco_ai.policies.resource_policy_text``). Where sync is allowed (``sync_policies``, else
       Variable ``coco_ai_sync_policies``), a differing or unreadable policy is uploaded
       instead; otherwise a mismatch fails, and so does a Trustee that hides its policy
       (v0.20+ lists policy ids only): what cannot be verified is not trusted;
    2. where sync is allowed, the attestation policies of the set are uploaded too (Trustee has
       no API to read them back, so without syncing they are reported as not verifiable);
    3. every name in ``required_reference_values`` resolves to a non-empty reference value.

    Returns a summary of what was verified (digests and names, no secrets).

    Example::

        gate = AttestationGateOperator(task_id="attestation_gate", policy_set="prod-tdx")
    """

    template_fields = ("policy_set", "required_reference_values")
    ui_color = "#e2ece9"

    def __init__(
        self,
        *,
        policy_set: str | None = None,
        sync_policies: bool | None = None,
        required_reference_values: Sequence[str] | None = None,
        approved_images: Sequence[str] | None = None,
        trustee_conn_id: str = TrusteeHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.policy_set = policy_set
        self.sync_policies = sync_policies
        self.required_reference_values = required_reference_values
        self.approved_images = approved_images
        self.trustee_conn_id = trustee_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        policy_set = self.policy_set or setting("policy_set")
        if policy_set not in policies.POLICY_SETS:
            raise AttestationGateError(
                f"unknown policy set {policy_set!r}; known: {', '.join(policies.POLICY_SETS)}"
            )
        sync = self.sync_policies if self.sync_policies is not None else _sync_allowed()
        wanted = policies.POLICY_SETS[policy_set]

        hook = TrusteeHook(self.trustee_conn_id)
        settings = hook.settings
        url = settings.kbs_url
        if urlsplit(url).scheme != "https":
            raise AttestationGateError(f"KBS {url} is not served over TLS (https required)")
        owner = settings.holds_data_owner_credential
        if not owner and sync:
            raise AttestationGateError(
                "policy sync was requested, but the trustee connection holds Airflow's own "
                "credential, which Trustee allows to write run grants only: the data owner "
                "uploads policies (coco-ai / deploy/compose/load_policies.py)"
            )
        if not owner and self.required_reference_values:
            raise AttestationGateError(
                "required_reference_values cannot be checked with Airflow's own credential "
                "(Trustee's reference-value API is admin-only): the data owner registers them"
            )
        with hook.get_conn() as client:
            if not client.alive():
                raise AttestationGateError(
                    f"KBS {url} is not alive (liveness probe for Trustee "
                    f"{settings.trustee_version or 'of unknown version'} over pinned TLS)"
                )
            self.log.info("KBS %s alive over TLS (CA pinned: %s)", url, bool(settings.ca_cert_pem))
            resource_text = self._resource_policy_text(wanted[policies.RESOURCE_POLICY_ID])
            if owner:
                summary = self._check_as_data_owner(client, policy_set, wanted, resource_text, sync)
            else:
                summary = self._expected_of_data_owner(policy_set, wanted, resource_text)
        return {
            "kbs_url": url,
            "policy_set": policy_set,
            "credential": settings.credential,
            **summary,
        }

    def _resource_policy_text(self, name: str) -> str:
        """The resource policy Trustee must enforce: the file rendered with the approved images
        (the data owner's signed approval unless the DAG names them)."""
        approved = (
            list(self.approved_images)
            if self.approved_images is not None
            else sorted(owner_policy().policy.approved_images)
        )
        if not approved:
            raise AttestationGateError("approved workload images: none, so no run would get a key")
        try:
            return policies.policy_text(name, approved)
        except ValueError as exc:
            raise AttestationGateError(f"approved workload images: {exc}") from None

    def _expected_of_data_owner(
        self, policy_set: str, wanted: dict[str, str], resource_text: str
    ) -> dict[str, Any]:
        """What the data owner is expected to have loaded; nothing is read from Trustee."""
        self.log.info(
            "Airflow's credential may write run grants only: the policies and reference values "
            "Trustee enforces are the data owner's responsibility (expected: policy set %s)",
            policy_set,
        )
        files = {
            policy_id: {
                "file": f"{name}.rego",
                "sha256": _sha256(resource_text)
                if policy_id == policies.RESOURCE_POLICY_ID
                else policies.digest(name),
                "state": OWNER_RESPONSIBILITY,
            }
            for policy_id, name in sorted(wanted.items())
        }
        return {
            "resource_policy": files.pop(policies.RESOURCE_POLICY_ID),
            "attestation_policies": files,
            "reference_values": _default_reference_values(policy_set),
            "reference_values_state": OWNER_RESPONSIBILITY,
        }

    def _check_as_data_owner(
        self,
        client: Any,
        policy_set: str,
        wanted: dict[str, str],
        resource_text: str,
        sync: bool,
    ) -> dict[str, Any]:
        """Development only (a loopback KBS): compare, or sync, with the data owner's key."""
        required = (
            list(self.required_reference_values)
            if self.required_reference_values is not None
            else _default_reference_values(policy_set)
        )
        resource_name = wanted[policies.RESOURCE_POLICY_ID]
        expected = _sha256(resource_text)
        resource_state = _check_resource_policy(client, resource_name, resource_text, sync)
        self.log.info("Resource policy %s: %s (sha256:%s)", resource_name, resource_state, expected)

        attestation: dict[str, dict[str, str]] = {}
        for policy_id, name in sorted(wanted.items()):
            if policy_id == policies.RESOURCE_POLICY_ID:
                continue
            state = "not verifiable (no read API in Trustee)"
            if sync:
                client.set_attestation_policy(policies.load(name), policy_id)
                state = "synced"
            attestation[policy_id] = {
                "file": f"{name}.rego",
                "sha256": policies.digest(name),
                "state": state,
            }
            self.log.info("Attestation policy %s = %s: %s", policy_id, name, state)

        missing = [name for name in required if not _has_reference_value(client, name)]
        if missing:
            raise AttestationGateError(f"reference values missing in Trustee: {', '.join(missing)}")
        self.log.info("Reference values present: %s", ", ".join(required) or "none required")
        return {
            "resource_policy": {
                "file": f"{resource_name}.rego",
                "sha256": expected,
                "state": resource_state,
            },
            "attestation_policies": attestation,
            "reference_values": required,
            "reference_values_state": "present",
        }
