"""`EncryptedCheckpointUploadOperator`: staging → durable checkpoint store, verified, keyless."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context

from coco_ai.runs import RunRefs, staging_location
from coco_ai_airflow._settings import as_int, owner_policy, required_setting


class EncryptedCheckpointUploadOperator(BaseOperator):
    """Move the encrypted, signed checkpoint from staging to the durable checkpoint store.

    Before a byte is copied, the EAR token must chain to the trust anchor and signer of the data
    owner's signed policy (``[coco_ai] owner_policy``; never a Connection) and meet the run's
    policy (CPU and the owner's minimum of GPUs affirming — ``min_gpus`` may only raise it —,
    this run's initdata digest and claims), and the manifest must be signed by the attested TEE
    key; every object is hashed on read and re-read after write;
    the manifest is written last. No key is involved: ciphertext stays ciphertext. Re-running
    after a failure resumes, and re-running after success is a no-op, so retries are safe.

    Returns ``{"run_id", "checkpoint_uri", "manifest_digest", "files", "ciphertext_bytes"}``.

    Example::

        upload = EncryptedCheckpointUploadOperator(
            task_id="encrypted_checkpoint_upload",
            staged=finetune.output,          # {"run_id", "staging_uri"}
            run_refs=key_release.output,
            destination_root="s3://coco-checkpoints",
            retries=2,
        )
    """

    template_fields = ("staged", "run_refs", "destination_root", "min_gpus")
    template_fields_renderers: ClassVar[dict[str, str]] = {"staged": "json", "run_refs": "json"}
    ui_color = "#e9ecef"

    def __init__(
        self,
        *,
        staged: Any,
        run_refs: Any,
        destination_root: str | None = None,
        min_gpus: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.staged = staged
        self.run_refs = run_refs
        self.destination_root = destination_root
        self.min_gpus = min_gpus

    def execute(self, context: Context) -> dict[str, Any]:
        from coco_ai.crypto.transfer import copy_checkpoint
        from coco_ai.crypto.verify import VerificationPolicy

        refs = RunRefs.from_xcom(self.run_refs)
        run_id = refs.run_id
        if not isinstance(self.staged, dict) or self.staged.get("run_id") != run_id:
            staged_run = self.staged.get("run_id") if isinstance(self.staged, dict) else None
            raise ValueError(f"staged checkpoint belongs to run {staged_run!r}, not {run_id!r}")
        if self.staged.get("staging_uri") != refs.staging_uri:
            raise ValueError(
                f"staged checkpoint is at {self.staged.get('staging_uri')!r}, not at the run's "
                f"staging location {refs.staging_uri!r}"
            )
        root = self.destination_root or required_setting("checkpoint_store_uri")
        destination = staging_location(root, run_id)
        owner = owner_policy().policy
        if self.min_gpus is not None and self.min_gpus != "":
            owner = owner.narrowed(min_gpus=as_int("min_gpus", self.min_gpus))
        anchor = owner.trust_anchor_pem.encode()
        policy = VerificationPolicy.for_refs(
            refs, min_gpus=owner.min_gpus, token_signer_pem=owner.token_signer_pem.encode()
        )
        self.log.info("Verifying %s and copying it to %s", refs.staging_uri, destination)
        manifest = copy_checkpoint(
            refs.staging_uri,
            destination,
            trust_anchor_pem=anchor,
            policy=policy,
            on_progress=self._progress,
        )
        result = {
            "run_id": run_id,
            "checkpoint_uri": destination,
            "manifest_digest": manifest.digest(),
            "files": len(manifest.files),
            "ciphertext_bytes": sum(f.ciphertext_size for f in manifest.files),
        }
        self.log.info("Checkpoint stored: %s", result)
        return result

    def _progress(self, event: Any) -> None:
        from coco_ai.storage.store import OBJECT_SKIPPED, OBJECT_WRITTEN

        if event.kind in (OBJECT_SKIPPED, OBJECT_WRITTEN):  # not every chunk
            self.log.info("%s %s", event.kind, event.name)
