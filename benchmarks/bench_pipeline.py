"""Pipeline overhead: the whole `confidential_finetune` run against the training inside it.

Starts the embedded default (`coco_ai.devstack`: Trustee stand-in, real Airflow on loopback with
SQLite + LocalExecutor, local execution mode), triggers runs through the REST API and measures,
in the same run:

- ``run_wall_s``: the DAG run's wall time as Airflow records it (start to end of the run,
  teardown included), and ``trigger_to_done_s`` as the client saw it (queueing included);
- ``finetune_task_s``: the fine-tune task alone (the baseline the ratio is taken against);
- the workload's own phase timings from its log line (``train``, ``evaluate``, ``samples``…);
- per-task durations.

Ratios: ``finetune_task_share`` = finetune_task_s / run_wall_s; ``non_training_share`` =
1 - train_s / run_wall_s (goal for SmolLM2-135M: < 0.10); ``non_ml_share`` = 1 - (train +
evaluate + samples) / run_wall_s. Stack start-up is reported but not part of any run.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--model tiny|smollm2] [--runs N]
        [--epochs E] [--out FILE]

The box is shared (2 cores, several users): repeat runs and read min/max beside the median.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from coco_ai.devstack import DAG_ID, DevStack, run_pipeline, stop_stack

_TIMINGS = re.compile(r"\[finetune\] timings: (.+?)(?:\"|$)", re.MULTILINE)
_PHASE = re.compile(r"([a-z_]+) ([0-9.]+) s")


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _phases(log: str) -> dict[str, float]:
    found = _TIMINGS.findall(log)
    if not found:
        return {}
    return {name: float(value) for name, value in _PHASE.findall(found[-1])}


def measure_run(info, conf: dict) -> dict:
    t0 = time.monotonic()
    summary = run_pipeline(info, conf, inspect=False)
    trigger_to_done = time.monotonic() - t0
    if summary["state"] != "success":
        raise SystemExit(f"run {summary['run_id']} ended {summary['state']}: {summary['tasks']}")
    client = info.client()
    try:
        run = client.dag_run(DAG_ID, summary["run_id"])
        tis = {t["task_id"]: t for t in client.task_instances(DAG_ID, summary["run_id"])}
        log = client.task_log(DAG_ID, summary["run_id"], "confidential_finetune", 1)
    finally:
        client.close()
    run_wall = _seconds(run["start_date"], run["end_date"])
    tasks = {t: _seconds(ti["start_date"], ti["end_date"]) for t, ti in tis.items()}
    phases = _phases(log)
    train = phases.get("train", 0.0)
    ml = train + phases.get("evaluate", 0.0) + phases.get("samples", 0.0)
    finetune = tasks["confidential_finetune"]
    return {
        "run_id": summary["run_id"],
        "run_wall_s": round(run_wall, 2),
        "trigger_to_done_s": round(trigger_to_done, 2),
        "finetune_task_s": round(finetune, 2),
        "workload_phases_s": phases,
        "tasks_s": {t: round(v, 2) for t, v in tasks.items() if v is not None},
        "finetune_task_share": round(finetune / run_wall, 4),
        "non_training_share": round(1 - train / run_wall, 4),
        "non_ml_share": round(1 - ml / run_wall, 4),
        "eval_loss_before": summary["eval_loss_before"],
        "eval_loss_after": summary["eval_loss_after"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--quick", action="store_true", help="tiny model, one run, 1 epoch")
    parser.add_argument("--runs", type=int, default=2, help="measured runs (default 2)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.runs = "tiny", 1

    conf = {"epochs": args.epochs}
    if args.max_steps:
        conf["max_steps"] = args.max_steps
    with tempfile.TemporaryDirectory(prefix="coco-bench-pipeline-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        info = DevStack(root, model=args.model).start()
        start_s = time.monotonic() - t0
        try:
            runs = [measure_run(info, conf) for _ in range(args.runs)]
        finally:
            stop_stack(root)

    def stat(key: str) -> dict:
        values = [r[key] for r in runs]
        return {
            "median": round(statistics.median(values), 4),
            "min": min(values),
            "max": max(values),
        }

    result = {
        "benchmark": "pipeline_overhead",
        "model": args.model,
        "conf": conf,
        "stack_start_s": round(start_s, 1),
        "baseline": "confidential_finetune task wall time in the same run",
        "run_wall_s": stat("run_wall_s"),
        "finetune_task_s": stat("finetune_task_s"),
        "finetune_task_share": stat("finetune_task_share"),
        "non_training_share": stat("non_training_share"),
        "non_ml_share": stat("non_ml_share"),
        "goal": "non_training_share < 0.10 for smollm2",
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
