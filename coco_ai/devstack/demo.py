"""Trigger `confidential_finetune` through the REST API, follow it, and summarise the run.

The summary is built from references only (XCom of each task, the task instances), except for
the sample answers: those live inside the *encrypted* checkpoint, so the demo plays the data
owner, who runs Trustee: it copies the run's checkpoint key from its own Trustee's state while
the key exists (between key release and revocation) and decrypts the report in memory. Airflow
never sees that key.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from coco_ai.devstack.stack import DAG_ID, StackInfo

TASKS = (
    "attestation_gate",
    "key_release",
    "confidential_finetune",
    "encrypted_checkpoint_upload",
    "attested_promotion",
    "revoke_keys",
)
_FINAL = ("success", "failed")


def read_report(checkpoint_uri: str, key: bytes) -> dict[str, Any]:
    """Decrypt the checkpoint in a private temporary directory; return its metrics and samples."""
    from coco_ai.crypto import decrypt_checkpoint

    with tempfile.TemporaryDirectory(prefix="coco-ai-demo-") as tmp:
        out = Path(tmp) / "checkpoint"
        decrypt_checkpoint(checkpoint_uri, str(out), kek=key)
        report = (out / "report.md").read_text()
    return {"samples": _samples(report)}


def _cells(row: str) -> list[str]:
    cells, current, escaped = [], [], False
    for ch in row.strip().strip("|"):
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    cells.append("".join(current).strip())
    return cells


def _samples(report: str) -> list[dict[str, str]]:
    lines = report.splitlines()
    try:
        start = lines.index("| question | expected | before | after |") + 2
    except ValueError:
        return []
    samples = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        if len(cells) == 4:
            samples.append(
                dict(zip(("question", "expected", "before", "after"), cells, strict=True))
            )
    return samples


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
) -> dict[str, Any]:
    """Trigger one run, follow it to the end and return the summary (see docs)."""
    client = info.client()
    try:
        started = time.monotonic()
        run = client.trigger(DAG_ID, conf or {}, note="coco-ai demo")
        run_id = run["dag_run_id"]
        progress(f"triggered {DAG_ID} run {run_id} through the REST API")
        seen: dict[str, str] = {}
        while True:
            dag_run = client.dag_run(DAG_ID, run_id)
            tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
            for task_id in TASKS:
                state = (tis.get(task_id) or {}).get("state") or "none"
                if seen.get(task_id) != state:
                    seen[task_id] = state
                    if state != "none":
                        elapsed = time.monotonic() - started
                        progress(f"[{elapsed:6.1f} s] {task_id}: {state}")
            if dag_run["state"] in _FINAL:
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
    return summary


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
    ui = summary["ui"]
    lines.append(f"  UI: {ui['url']}  (login {ui['username']} / {ui['password']})")
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
