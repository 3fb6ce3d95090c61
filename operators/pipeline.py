"""The parts every confidential DAG shares: its schedule, its TEE form fields, and the steps
around the workload (attestation gate, encrypted upload, revocation) with their wiring.

A confidential DAG is gate → key release → workload → upload → promotion → revoke (always); only
key release (which inputs), the workload's settings and the promotion's thresholds differ by
workload kind. Each DAG builds those three and hands all six to :func:`confidential_pipeline`.
Call the helpers inside the DAG's ``with DAG(...)`` block.
"""

from __future__ import annotations

import itertools

from airflow.sdk import Asset, AssetOrTimeSchedule, BaseOperator, CronTriggerTimetable, Param

from coco_ai_airflow.attestation import AttestationGateOperator
from coco_ai_airflow.checkpoint import EncryptedCheckpointUploadOperator
from coco_ai_airflow.keys import KeyRevokeOperator

TEE_SECTION = "Confidential computing"


def schedule(asset: Asset, cron: str) -> Asset | AssetOrTimeSchedule:
    """Run when `asset` gets an event and, if `cron` (UTC) is set, by the clock too."""
    cron = cron.strip()
    if not cron:
        return asset
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=asset)


def tee_params(default_tee: str, workload: str) -> dict[str, Param]:
    """The form's TEE type and confidential GPU count; `workload` names what runs in the TEE."""
    return {
        "tee": Param(
            default_tee,
            type="string",
            enum=["tdx", "snp", "sample"],
            values_display={
                "tdx": "Intel TDX + NVIDIA confidential GPU",
                "snp": "AMD SEV-SNP + NVIDIA confidential GPU",
                "sample": "Sample TEE (development: local emulator, dev policy only)",
            },
            title="TEE type",
            description=f"Hardware the {workload} must attest on; picks the Kata runtime class.",
            section=TEE_SECTION,
        ),
        "gpu_count": Param(
            1,
            type="integer",
            minimum=0,
            maximum=8,
            title="Confidential GPUs",
            description="nvidia.com/pgpu per pod. Promotion requires at least this many attested "
            "GPUs, and never fewer than the data owner's policy requires (a lower value fails "
            "the run); the resource policy refuses keys to fewer GPUs than it requires.",
            section=TEE_SECTION,
        ),
    }


def attestation_gate() -> AttestationGateOperator:
    return AttestationGateOperator(
        task_id="attestation_gate",
        retries=2,  # read-only checks: safe to retry on a transient network error
        doc_md="""Pre-flight: Trustee answers over TLS with the pinned CA, serves exactly the
repository's resource and attestation policies (by digest), and holds the required
reference values. Fails closed, naming the mismatch.""",
    )


def encrypted_upload(workload: BaseOperator, key_release: BaseOperator, what: str):
    """The upload of `workload`'s staged output; `what` names it in the UI ("adapter")."""
    return EncryptedCheckpointUploadOperator(
        task_id="encrypted_checkpoint_upload",
        staged=workload.output,
        run_refs=key_release.output,
        retries=2,  # content-addressed and manifest-last: a retry resumes, never duplicates
        doc_md=f"""Copies the encrypted {what} and its signed manifest from staging to the
durable checkpoint store, verifying token, signature and digests first, without any key.""",
    )


def revoke_keys() -> KeyRevokeOperator:
    return KeyRevokeOperator(
        task_id="revoke_keys",
        retries=2,  # tombstone + delete: a retry repeats both harmlessly
        doc_md="""Always runs (trigger rule all_done): revokes this run's grant in Trustee, so
no TEE of this run obtains its key any more. Marked as a teardown so that its success never
hides a failed run.""",
    )


def confidential_pipeline(*steps: BaseOperator, revoke: KeyRevokeOperator) -> None:
    """Chain `steps` in order, and every step but the last (promotion) into `revoke`, which
    follows the promotion too: revocation runs whichever step failed."""
    # Cleanup must not decide the run's state: a teardown leaf is ignored for it, and keeping
    # trigger rule all_done (not all_done_setup_success) revokes even after a failed key release.
    revoke.is_teardown = True
    for upstream, downstream in itertools.pairwise(steps):
        upstream >> downstream
    steps[-1] >> revoke
    list(steps[:-1]) >> revoke
