"""`ConfidentialWorkloadOperator`: a confidential workload inside a TEE, as a CoCo pod or locally.

The workload kind comes from the run's references (:class:`coco_ai.runs.RunRefs`), so the same
operator runs the fine-tune and every later workload; one module per execution mode
(``operators/execution``) does the rest.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseXCom, Context
from airflow.sdk.exceptions import AirflowException

from coco_ai.runs import RunRefs, pinned_image
from coco_ai.workloads.kinds import workload_kind
from coco_ai_airflow._settings import as_int, setting
from coco_ai_airflow.execution import EXECUTION_MODES, kubernetes
from coco_ai_airflow.execution.local import LocalRun
from coco_ai_airflow.provenance.links import ProvenanceLink

_SIX_HOURS = 6 * 3600


class ConfidentialWorkloadOperator(KubernetesPodOperator):
    """Run the run's workload inside an attested TEE.

    ``run_refs`` is the output of :class:`~coco_ai_airflow.keys.KeyReleaseOperator` (run id,
    workload, image, key references, pinned inputs, initdata); ``settings`` holds the workload's own
    settings (for the fine-tune the ``lora`` / ``training`` tables of its config; ``None``
    values keep the workload's defaults). The execution mode comes from
    ``[coco_ai] execution_mode`` unless given:

    - ``kubernetes``: a pod with runtime class ``kata-qemu-nvidia-gpu-<tee>``, ``nvidia.com/pgpu``
      limits, the initdata annotation, the image pinned by digest, the argv the run's agent policy
      admits, no env vars, volumes, service-account token or service links, a deadline, deleted
      when done (``deferrable=True`` waits in the triggerer);
    - ``local``: the same workload as a process beside the guest-components emulator.

    Returns ``{"run_id", "staging_uri"}``: where the encrypted, signed output now is.

    Example::

        finetune = ConfidentialWorkloadOperator(
            task_id="confidential_finetune",
            run_refs=key_release.output,
            tee="{{ params.tee }}",
            gpu_count="{{ params.gpu_count }}",
            settings={"lora": {"r": "{{ params.lora_r }}"},
                      "training": {"epochs": "{{ params.epochs }}"}},
        )
    """

    template_fields = (
        *KubernetesPodOperator.template_fields,
        "run_refs",
        "settings",
        "tee",
        "gpu_count",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"run_refs": "json", "settings": "json"}
    operator_extra_links = (ProvenanceLink(),)
    ui_color = "#d8f3dc"

    def __init__(
        self,
        *,
        run_refs: Any,
        settings: dict[str, Any] | None = None,
        tee: str = "tdx",
        gpu_count: int | str = 1,
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
        self.settings = settings
        self.tee = tee
        self.gpu_count = gpu_count
        self.execution_mode = execution_mode
        self._local_run: LocalRun | None = None

    # -- shared by both modes ------------------------------------------------------------------

    @property
    def refs(self) -> RunRefs:
        return RunRefs.from_xcom(self.run_refs)

    def resolved_mode(self) -> str:
        mode = self.execution_mode or setting("execution_mode")
        if mode not in EXECUTION_MODES:
            raise ValueError(
                f"execution mode {mode!r} is not one of {', '.join(EXECUTION_MODES)} "
                "([coco_ai] execution_mode)"
            )
        return mode

    def build_workload_config(self) -> dict[str, Any]:
        refs = self.refs
        return workload_kind(refs.workload).config(refs, self.settings or {})

    def gpus(self) -> int:
        count = as_int("gpu_count", self.gpu_count)
        if not 0 <= count <= 16:
            raise ValueError(f"gpu_count must be between 0 and 16, got {count}")
        return count

    # -- kubernetes mode -----------------------------------------------------------------------

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False):
        refs = self.refs
        try:
            self.image = pinned_image(self.image or setting("workload_image"))
        except ValueError as exc:
            raise kubernetes.PodSpecError(str(exc)) from None
        if self.image != refs.image:
            raise kubernetes.PodSpecError(
                f"pod image {self.image} is not the image {refs.image} pinned in the run's initdata"
            )
        self.namespace = self.namespace or setting("namespace")
        self.runtime_class_name = kubernetes.runtime_class_for(str(self.tee))
        self.container_resources = kubernetes.gpu_resources(self.gpus(), self.container_resources)
        self.annotations = kubernetes.annotations_with_initdata(self.annotations, refs)
        self.labels = kubernetes.confidential_labels(self.labels, refs)
        self.service_account_name = self.service_account_name or kubernetes.WORKLOAD_SERVICE_ACCOUNT
        kubernetes.check_no_secrets(self.env_vars, self.secrets, self.env_from, self.configmaps)
        self.cmds, self.arguments = kubernetes.launch_command(
            workload_kind(refs.workload).module, self.build_workload_config()
        )
        return kubernetes.lock_down(super().build_pod_request_obj(context, dry_run=dry_run))

    def execute(self, context: Context) -> dict[str, str]:
        mode = self.resolved_mode()
        self.log.info("Execution mode %s, TEE %s, %d GPU(s)", mode, self.tee, self.gpus())
        if mode == "local":
            refs = self.refs
            self._local_run = LocalRun(
                module=workload_kind(refs.workload).module,
                config=self.build_workload_config(),
                initdata=refs.initdata(),
                tee=str(self.tee),
                gpus=self.gpus(),
                deadline_s=self.active_deadline_seconds,
                log=self.log,
            )
            try:
                self._local_run.run()
            finally:
                self._local_run = None
        else:
            super().execute(context)
        return self._result(context)

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> dict[str, str]:
        # Deferrable kubernetes mode resumes here (KubernetesPodOperator's resume method).
        if event["status"] == "timeout":  # the task's deadline (or the pod's start) passed
            kubernetes.stop_pod(
                self.client,
                event["namespace"],
                event["name"],
                container=self.base_container_name,
                grace_s=self.termination_grace_period,
                log=self.log,
            )
            raise AirflowException(f"{event['message']} The pod was deleted.")
        super().trigger_reentry(context, event)
        return self._result(context)

    def on_kill(self) -> None:
        if self._local_run is not None:
            self._local_run.kill()
        elif self.resolved_mode() != "local":
            super().on_kill()

    def _result(self, context: Context) -> dict[str, str]:
        refs = self.refs
        result = {"run_id": refs.run_id, "staging_uri": refs.staging_uri}
        # do_xcom_push stays False (True would make KubernetesPodOperator add its XCom sidecar
        # to the confidential pod), so the references are pushed explicitly.
        context["ti"].xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=result)
        return result
