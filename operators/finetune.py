"""`ConfidentialFineTuneOperator`: PEFT fine-tuning inside a TEE, as a CoCo pod or locally."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseXCom, Context

from operators._settings import as_int, required_setting, setting
from operators.execution import EXECUTION_MODES, kubernetes, local

_SIX_HOURS = 6 * 3600


def workload_config(
    run_refs: dict[str, Any], finetune: dict[str, Any], staging_root: str
) -> dict[str, Any]:
    """The workload's config (references only), validated by the workload's own schema.

    ``run_refs`` is KeyReleaseOperator's output (run id, key URIs, pinned data set and base
    model); ``finetune`` holds the optional ``lora`` / ``training`` tables of the workload config.
    """
    from coco_ai.workloads.finetune.config import FinetuneConfig

    run_id = run_refs["run_id"]
    config: dict[str, Any] = {
        "run_id": run_id,
        "staging_uri": f"{staging_root.rstrip('/')}/{run_id}",
        "checkpoint_key_uri": run_refs["checkpoint_key_uri"],
        "dataset": {"uri": run_refs["dataset_uri"], "key_uri": run_refs["dataset_key_uri"]},
        "base_model": {"path": run_refs["base_model"], "digest": run_refs["base_model_digest"]},
    }
    for table in ("lora", "training"):
        values = {k: v for k, v in (finetune.get(table) or {}).items() if v is not None}
        if values:
            config[table] = values
    # The workload validates again in the TEE; failing here saves starting a confidential VM.
    return FinetuneConfig.from_dict(config).to_dict()


class ConfidentialFineTuneOperator(KubernetesPodOperator):
    """Fine-tune a base model with LoRA inside an attested TEE.

    ``run_refs`` is the output of :class:`~operators.keys.KeyReleaseOperator` (run id, key URIs,
    pinned inputs, initdata); ``finetune`` holds the ``lora`` / ``training`` settings of the
    workload config (``None`` values are left at the workload's defaults). The execution mode
    comes from ``[coco_ai] execution_mode`` unless given:

    - ``kubernetes``: a pod with runtime class ``kata-qemu-nvidia-gpu-<tee>``, ``nvidia.com/pgpu``
      limits, the initdata annotation, the image pinned by digest, no secrets in env, a deadline,
      deleted when done (``deferrable=True`` waits in the triggerer);
    - ``local``: the same workload as a process beside the guest-components emulator.

    Returns ``{"run_id", "staging_uri"}``: where the encrypted, signed adapter now is.

    Example::

        finetune = ConfidentialFineTuneOperator(
            task_id="confidential_finetune",
            run_refs=key_release.output,
            tee="{{ params.tee }}",
            gpu_count="{{ params.gpu_count }}",
            finetune={"lora": {"r": "{{ params.lora_r }}"},
                      "training": {"epochs": "{{ params.epochs }}"}},
            image="registry.example/coco-ai/finetune@sha256:" + "0" * 64,
        )
    """

    template_fields = (
        *KubernetesPodOperator.template_fields,
        "run_refs",
        "finetune",
        "tee",
        "gpu_count",
        "staging_root",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"run_refs": "json", "finetune": "json"}
    ui_color = "#d8f3dc"

    def __init__(
        self,
        *,
        run_refs: Any,
        finetune: dict[str, Any],
        tee: str = "tdx",
        gpu_count: int | str = 1,
        staging_root: str | None = None,
        execution_mode: str | None = None,
        image: str | None = None,
        namespace: str | None = None,
        active_deadline_seconds: int = _SIX_HOURS,
        on_finish_action: str = "delete_pod",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("do_xcom_push", False)  # results travel as object-store references
        kwargs.setdefault("get_logs", True)
        super().__init__(
            image=image,
            namespace=namespace,
            active_deadline_seconds=active_deadline_seconds,
            on_finish_action=on_finish_action,
            **kwargs,
        )
        self.run_refs = run_refs
        self.finetune = finetune
        self.tee = tee
        self.gpu_count = gpu_count
        self.staging_root = staging_root
        self.execution_mode = execution_mode

    # -- shared by both modes ------------------------------------------------------------------

    def resolved_mode(self) -> str:
        mode = self.execution_mode or setting("execution_mode")
        if mode not in EXECUTION_MODES:
            raise ValueError(
                f"execution mode {mode!r} is not one of {', '.join(EXECUTION_MODES)} "
                "([coco_ai] execution_mode)"
            )
        return mode

    def build_workload_config(self) -> dict[str, Any]:
        return workload_config(
            self.run_refs, self.finetune, self.staging_root or required_setting("staging_uri")
        )

    def gpus(self) -> int:
        count = as_int("gpu_count", self.gpu_count)
        if not 0 <= count <= 16:
            raise ValueError(f"gpu_count must be between 0 and 16, got {count}")
        return count

    # -- kubernetes mode -----------------------------------------------------------------------

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False):
        self.image = kubernetes.require_image_digest(self.image or setting("workload_image"))
        if self.image != self.run_refs.get("image"):
            raise kubernetes.PodSpecError(
                f"pod image {self.image} is not the image {self.run_refs.get('image')} "
                "pinned in the run's initdata"
            )
        self.namespace = self.namespace or setting("namespace")
        self.runtime_class_name = kubernetes.runtime_class_for(str(self.tee))
        self.container_resources = kubernetes.gpu_resources(self.gpus(), self.container_resources)
        self.annotations = kubernetes.annotations_with_initdata(self.annotations, self.run_refs)
        kubernetes.check_no_secrets(self.env_vars, self.secrets, self.env_from, self.configmaps)
        self.cmds, self.arguments = kubernetes.launch_command(self.build_workload_config())
        return super().build_pod_request_obj(context, dry_run=dry_run)

    def execute(self, context: Context) -> dict[str, str]:
        mode = self.resolved_mode()
        self.log.info("Execution mode %s, TEE %s, %d GPU(s)", mode, self.tee, self.gpus())
        if mode == "local":
            local.run_workload(self, self.build_workload_config())
        else:
            super().execute(context)
        return self._result(context)

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> dict[str, str]:
        # Deferrable kubernetes mode resumes here (KubernetesPodOperator's resume method).
        super().trigger_reentry(context, event)
        return self._result(context)

    def on_kill(self) -> None:
        if self.resolved_mode() == "local":
            local.kill(self)
        else:
            super().on_kill()

    def _result(self, context: Context) -> dict[str, str]:
        run_id = self.run_refs["run_id"]
        root = self.staging_root or required_setting("staging_uri")
        result = {"run_id": run_id, "staging_uri": f"{root.rstrip('/')}/{run_id}"}
        # do_xcom_push stays False (True would make KubernetesPodOperator add its XCom sidecar
        # to the confidential pod), so the references are pushed explicitly.
        context["ti"].xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=result)
        return result
