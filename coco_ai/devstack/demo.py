"""Trigger `confidential_finetune` through the REST API, follow it, and summarise the run.

The summary is built from references only (XCom of each task, the task instances), except for
the sample answers: those live inside the *encrypted* checkpoint, so the demo plays the data
owner, who runs Trustee: it copies the run's checkpoint key from its own Trustee's state while
the key exists (between key release and revocation) and decrypts the report in memory. Airflow
never sees that key.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from coco_ai.devstack.airflow import FINAL_RUN_STATES, AirflowApiError
from coco_ai.devstack.processes import ServiceError
from coco_ai.devstack.stack import DAG_ID, RUN_KEY_ROOT_FILE, StackInfo

TASKS = (
    "attestation_gate",
    "key_release",
    "confidential_finetune",
    "encrypted_checkpoint_upload",
    "attested_promotion",
    "revoke_keys",
)
FINETUNE_TASK = "confidential_finetune"
PROGRESS_POLL_S = 2.0
#: How long a follower keeps following while the api-server does not answer (each REST call
#: already retries for ~16 s): a restarted api-server is back well within it, the run goes on
#: meanwhile (the scheduler and workers do not need the follower).
API_OUTAGE_S = 180.0

# The workload's progress line (coco_ai.workloads.finetune.workload), as relayed into the
# task log: "[finetune] step 12/90 epoch 1 loss 2.3456 tokens/s 812 eta 00:01:05".
_PROGRESS_LINE = re.compile(
    r"\[finetune\] step (\d+)/(\d+) epoch (\d+) loss ([0-9.]+|nan|inf) "
    r"tokens/s (\d+) eta (\d+):(\d\d):(\d\d)"
)


@dataclass(frozen=True)
class TrainingProgress:
    """One progress report of the fine-tune workload, read from its task log."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens_per_s: int
    eta_s: int

    def line(self) -> str:
        eta = f"{self.eta_s // 3600:d}:{self.eta_s % 3600 // 60:02d}:{self.eta_s % 60:02d}"
        return (
            f"step {self.step}/{self.total_steps} epoch {self.epoch} loss {self.loss:.4f} "
            f"{self.tokens_per_s} tokens/s ETA {eta}"
        )

    def bar(self, width: int = 30) -> str:
        done = round(width * self.step / self.total_steps) if self.total_steps else 0
        pct = 100 * self.step / self.total_steps if self.total_steps else 0.0
        return f"[{'#' * done}{'.' * (width - done)}] {pct:5.1f}% {self.line()}"


def latest_progress(log_text: str) -> TrainingProgress | None:
    """The last progress line in a task log, or None when training has not reported yet."""
    found = None
    for m in _PROGRESS_LINE.finditer(log_text):
        found = m
    if found is None:
        return None
    step, total, epoch, loss, rate, h, mnt, sec = found.groups()
    return TrainingProgress(
        int(step),
        int(total),
        int(epoch),
        float(loss),
        int(rate),
        int(h) * 3600 + int(mnt) * 60 + int(sec),
    )


class ProgressRelay:
    """Shows training progress: a redrawn bar on a terminal, one plain line per change otherwise."""

    def __init__(self, out=None, *, tty: bool | None = None) -> None:
        self._out = out or sys.stderr
        self._tty = self._out.isatty() if tty is None else tty
        self._last: TrainingProgress | None = None

    def show(self, progress: TrainingProgress) -> None:
        if progress == self._last:
            return
        self._last = progress
        if self._tty:
            self._out.write("\r\x1b[K" + progress.bar())
        else:
            self._out.write(f"coco-ai demo: {FINETUNE_TASK}: {progress.line()}\n")
        self._out.flush()

    def finish(self) -> None:
        """End the bar's line so the next message starts on its own line."""
        if self._tty and self._last is not None:
            self._out.write("\n")
            self._out.flush()
        self._last = None


def read_report(checkpoint_uri: str, key: bytes) -> dict[str, Any]:
    """Decrypt the checkpoint's report in memory (not the adapter); return its sample answers."""
    from coco_ai.owner_report import read_owner_files, sample_answers
    from coco_ai.workloads.finetune.report import REPORT_FILE

    _, files, _ = read_owner_files(checkpoint_uri, key)
    return {"samples": sample_answers(files[REPORT_FILE].decode())}


def _duration(ti: dict) -> float | None:
    value = ti.get("duration")
    return round(float(value), 2) if value is not None else None


def run_pipeline(
    info: StackInfo,
    conf: dict[str, Any] | None = None,
    *,
    progress: Callable[[str], None] = lambda message: None,
    timeout_s: float = 1800,
    inspect: bool = True,
    training: Callable[[TrainingProgress], None] | None = None,
) -> dict[str, Any]:
    """Trigger one run, follow it to the end and return the summary (see docs).

    While the fine-tune task runs, its log is read through the REST API every few seconds and
    the newest training progress is passed to `training`.
    """
    client = info.client()
    last_log_read = 0.0
    try:
        started = time.monotonic()
        run = client.trigger(DAG_ID, conf or {}, note="coco-ai demo")
        run_id = run["dag_run_id"]
        progress(f"triggered {DAG_ID} run {run_id} through the REST API")
        seen: dict[str, str] = {}
        unanswered_since: float | None = None
        while True:
            try:
                dag_run = client.dag_run(DAG_ID, run_id)
                tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
                finetune = tis.get(FINETUNE_TASK) or {}
                if (
                    training is not None
                    and finetune.get("state") == "running"
                    and time.monotonic() - last_log_read >= PROGRESS_POLL_S
                ):
                    last_log_read = time.monotonic()
                    log = client.task_log(DAG_ID, run_id, FINETUNE_TASK, finetune["try_number"])
                    if (now := latest_progress(log)) is not None:
                        training(now)
            except (ServiceError, AirflowApiError) as exc:
                if isinstance(exc, AirflowApiError) and exc.status < 500:
                    raise
                if unanswered_since is None:
                    unanswered_since = time.monotonic()
                    progress(f"the Airflow api-server does not answer ({exc}); still following")
                elif time.monotonic() - unanswered_since > API_OUTAGE_S:
                    raise ServiceError(
                        f"the Airflow api-server at {info.api_url} has not answered for "
                        f"{time.monotonic() - unanswered_since:.0f} s while following run "
                        f"{run_id}; the run itself may still go on: {exc}"
                    ) from exc
                time.sleep(1)
                continue
            if unanswered_since is not None:
                down_s = time.monotonic() - unanswered_since
                progress(f"the Airflow api-server answers again (after {down_s:.0f} s)")
                unanswered_since = None
            for task_id in TASKS:
                state = (tis.get(task_id) or {}).get("state") or "none"
                if seen.get(task_id) != state:
                    seen[task_id] = state
                    if state != "none":
                        elapsed = time.monotonic() - started
                        progress(f"[{elapsed:6.1f} s] {task_id}: {state}")
            if dag_run["state"] in FINAL_RUN_STATES:
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")
            time.sleep(1)
        summary = _summary(info, client, run_id, dag_run, tis, time.monotonic() - started)
    finally:
        client.close()
    checkpoint, coco_run_id = summary.get("checkpoint_uri"), summary["run_refs"].get("run_id")
    if inspect and checkpoint and coco_run_id:
        # The data owner derives the run's key from their own run-key root (coco_ai.run_keys).
        key = info.data_owner_run_key(coco_run_id)
        samples = read_report(checkpoint, key)["samples"]
        summary["sample"] = samples[0] if samples else None
        del key
    if summary["registry"].get("version") is not None and info.owner_public_key:
        summary["verify"] = third_party_verify(info, summary["checkpoint_uri"])
    return summary


def third_party_verify(info: StackInfo, checkpoint_uri: str) -> dict[str, Any]:
    """What `coco-ai verify` says of the promotion with only the data owner's public key, the
    store and the registry: nothing of Airflow's (no XCom, no Connection, no Variable)."""
    from coco_ai.promotion.audit import audit_promotion

    audit = audit_promotion(
        checkpoint_uri,
        owner_public_key_pem=Path(info.owner_public_key).read_bytes(),
        registry_uri=info.registry_uri,
        model_name=info.registered_model_name,
    )
    return {
        **audit.to_dict(),
        "command": (
            f"coco-ai verify models:/{info.registered_model_name}@serving --owner-key "
            f"{info.owner_public_key} --registry {info.registry_uri}"
        ),
    }


def _summary(
    info: StackInfo, client: Any, run_id: str, dag_run: dict, tis: dict, wall_s: float
) -> dict[str, Any]:
    def xcom(task_id: str) -> Any:
        if (tis.get(task_id) or {}).get("state") != "success":
            return None
        return client.xcom(DAG_ID, run_id, task_id)

    gate, refs, upload, promoted = (
        xcom("attestation_gate"),
        xcom("key_release"),
        xcom("encrypted_checkpoint_upload"),
        xcom("attested_promotion"),
    )
    failed = [t for t in TASKS if (tis.get(t) or {}).get("state") in ("failed", "upstream_failed")]
    metrics = (promoted or {}).get("metrics") or {}
    return {
        "dag_id": DAG_ID,
        "run_id": run_id,
        "state": dag_run["state"],
        "wall_seconds": round(wall_s, 1),
        "failed_task": failed[0] if failed else None,
        "tasks": [
            {
                "task_id": t,
                "state": (tis.get(t) or {}).get("state"),
                "seconds": _duration(tis.get(t) or {}),
                "tries": (tis.get(t) or {}).get("try_number"),
            }
            for t in TASKS
        ],
        "policies": gate,
        "run_refs": {k: v for k, v in (refs or {}).items() if k != "initdata_annotation"},
        "attestation": (promoted or {}).get("attestation"),
        "manifest_digest": (upload or {}).get("manifest_digest"),
        "checkpoint_uri": (upload or {}).get("checkpoint_uri"),
        "eval_loss_before": metrics.get("eval_loss_before"),
        "eval_loss_after": metrics.get("eval_loss"),
        "sample": None,
        "verify": None,
        # the data owner's copy of the run-key root: `coco-ai report` derives the run's key
        "run_key_root_file": str(Path(info.root) / RUN_KEY_ROOT_FILE),
        "registry": {
            "uri": info.registry_uri,
            "model_name": (promoted or {}).get("model_name"),
            "version": (promoted or {}).get("version"),
            "alias": (promoted or {}).get("alias"),
            "signature_uri": (promoted or {}).get("signature_uri"),
        },
        "ui": {
            "url": f"{info.api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}",
            "username": info.username,
            "password": info.password(),
        },
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary `coco-ai demo` prints."""
    lines = [
        f"Run {summary['run_id']}: {summary['state'].upper()} in {summary['wall_seconds']} s",
    ]
    if summary["failed_task"]:
        lines.append(f"  failed at: {summary['failed_task']} (see its log in the UI)")
    lines.append("  tasks:")
    for t in summary["tasks"]:
        secs = f"{t['seconds']:.1f} s" if t["seconds"] is not None else "-"
        lines.append(f"    {t['task_id']:<30} {t['state']!s:<16} {secs}")
    att = summary.get("attestation") or {}
    if att:
        submods = att.get("submods") or {}
        lines.append(
            "  attestation: TEE {}, {} GPU(s), {}".format(
                att.get("tee"),
                att.get("gpu_count"),
                ", ".join(f"{k} {v}" for k, v in sorted(submods.items())) or "-",
            )
        )
        if att.get("init_data"):
            lines.append(f"  initdata digest: {att['init_data']}")
    if summary.get("manifest_digest"):
        lines.append(f"  manifest: {summary['manifest_digest']}")
        lines.append(f"  checkpoint: {summary['checkpoint_uri']}")
    if summary.get("eval_loss_before") is not None:
        lines.append(
            f"  eval loss: {summary['eval_loss_before']:.4f} -> {summary['eval_loss_after']:.4f}"
        )
    sample = summary.get("sample")
    if sample:
        lines += [
            f"  sample question: {sample['question']}",
            f"    expected: {sample['expected']}",
            f"    before:   {sample['before']}",
            f"    after:    {sample['after']}",
        ]
    reg = summary["registry"]
    if reg.get("version") is not None:
        lines.append(
            f"  registry: {reg['model_name']} version {reg['version']} alias "
            f"'{reg['alias']}' ({reg['uri']})"
        )
        lines.append(f"  model signature: {reg['signature_uri']}")
    verify = summary.get("verify")
    if verify:
        checks = verify["checks"]
        passed = sum(c["status"] == "passed" for c in checks)
        lines.append(
            f"  coco-ai verify (owner's public key + store + registry only): "
            f"{verify['verdict'].upper()} ({passed}/{len(checks)} checks passed)"
        )
        lines += [
            f"    {c['name']}: {c['status']} ({c['reason']})"
            for c in checks
            if c["status"] != "passed"
        ]
        lines.append(f"    re-run: {verify['command']}")
    ui = summary["ui"]
    lines.append(f"  UI: {ui['url']}  (login {ui['username']} / {ui['password']})")
    # the provenance plugin's run tab (operators.provenance.RUN_TAB_ROUTE; no Airflow import here)
    lines.append(f"  provenance (attestation, every check): {ui['url']}/plugin/provenance")
    if summary.get("checkpoint_uri"):
        lines.append(
            "  data owner's report (loss curve, answers): coco-ai report "
            f"{summary['checkpoint_uri']} --run-key-root-file {summary['run_key_root_file']}"
        )
    if summary.get("rag"):
        lines += format_rag(summary["rag"])
    return "\n".join(lines)


def format_rag(rag: dict[str, Any]) -> list[str]:
    """The RAG half of the summary (coco_ai.devstack.rag_demo)."""
    lines = [f"RAG index run {rag['run_id']}: {rag['state'].upper()} in {rag['wall_seconds']} s"]
    index = rag.get("index")
    if index:
        metrics = ", ".join(f"{k} {v:g}" for k, v in index["metrics"].items())
        lines.append(
            f"  promoted index: {index['model_name']} version {index['version']} ({metrics})"
        )
        lines.append(f"  manifest: {index['manifest_digest']}")
    service = rag.get("service")
    if service:
        lines += [
            "  attested retrieval service, asked by an attested caller:",
            f"    question: {service['question']}",
            f"    answer:   {service['answer']}",
            "    citations: "
            + ", ".join(f"{c['doc_id']}#{c['chunk']} ({c['title']})" for c in service["citations"]),
            f"    an unattested caller got HTTP {service['unattested_caller_status']}",
        ]
    return lines


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
