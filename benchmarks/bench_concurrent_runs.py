"""Concurrent pipeline runs on the CeleryExecutor tier: throughput and per-run overhead.

Starts PostgreSQL, Redis and the embedded default as a CeleryExecutor deployment (the
api-server, scheduler, dag-processor, triggerer and one Celery worker as separate processes,
as tests/distributed does), publishes a second data-set version, then for each level N
triggers N `confidential_finetune` runs at once (tiny model, data-set versions alternating)
and waits until every run and its key revocation is final. Per level:

- ``runs_per_hour``: N / (first trigger → last revocation) and ``speedup`` = that divided by
  the level-1 figure of the same run (the baseline: the same stack running one run at a time);
- ``cpu_s_per_run`` of the scheduler and of Trustee (their process trees, /proc), and of the
  whole machine, with ``machine_cpu_busy`` = machine CPU seconds / (wall × cores): where it
  nears 1 the cores, not the pipeline, bound the throughput;
- ``promoted`` / ``refused_rollback``: runs whose checkpoint became the served version, and
  runs the champion rule refused because a newer checkpoint was already served;
- the cross-run checks of the concurrency test (each TEE received only its own run's grant
  and its own data set's key, per Trustee's release audit; each promotion is its own run's;
  every grant revoked; the serving alias monotonic). Any finding fails the benchmark.

    .venv/bin/python benchmarks/bench_concurrent_runs.py [--levels 1,5,20] [--quick] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coco_ai.devstack.processes import descendants
from coco_ai.trustee_dev.state import StateDir
from tests.distributed.celery_pipeline import (
    DAG_CONF,
    celery_pipeline_stack,
    cross_run_problems,
    publish_dataset_version,
)
from tests.distributed.harness import (
    PostgresServer,
    RedisServer,
    check_python_dependencies,
    ensure_services_installed,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return total


def _machine_cpu_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle, iowait
    return busy / _TICK


def measure_level(stack, count: int, datasets: list[dict]) -> dict:
    pids = {s.name: s.pid for s in stack.info.services}
    watched = {"scheduler": pids["airflow-scheduler"], "trustee": pids["trustee"]}
    cpu0 = {name: _tree_cpu_s(pid) for name, pid in watched.items()}
    machine0 = _machine_cpu_s()
    versions_before = stack.versions_by_name()
    releases_before = len(StateDir(stack.info.trustee_state_dir).releases())

    start = time.monotonic()
    runs = [stack.trigger({**DAG_CONF, **datasets[i % len(datasets)]}) for i in range(count)]
    # every run may wait for every other on 2 cores: the bound grows with the level
    outcomes = {run_id: stack.finish(run_id, timeout=600 + 240 * count) for run_id in runs}
    wall = time.monotonic() - start

    releases = StateDir(stack.info.trustee_state_dir).releases()[releases_before:]
    problems = cross_run_problems(stack, outcomes, releases, versions_before)
    promoted = sum(
        tis.get("attested_promotion", {}).get("state") == "success" for _, tis in outcomes.values()
    )
    machine = _machine_cpu_s() - machine0
    return {
        "runs": count,
        "wall_s": round(wall, 1),
        "runs_per_hour": round(count * 3600 / wall, 1),
        "promoted": promoted,
        "refused_rollback": count - promoted,
        "cpu_s_per_run": {
            **{n: round((_tree_cpu_s(p) - cpu0[n]) / count, 2) for n, p in watched.items()},
            "machine": round(machine / count, 1),
        },
        "machine_cpu_busy": round(machine / (wall * (os.cpu_count() or 1)), 2),
        "cross_run_problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,5,20", help="concurrent runs per level")
    parser.add_argument("--quick", action="store_true", help="levels 1,3")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    levels = [1, 3] if args.quick else [int(n) for n in args.levels.split(",")]

    check_python_dependencies()
    ensure_services_installed()
    with (
        PostgresServer() as postgres,
        RedisServer() as redis,
        celery_pipeline_stack(
            postgres, redis, parallelism=max(4, max(levels)), worker_concurrency=max(levels)
        ) as stack,
    ):
        info = stack.info
        first = {"dataset_uri": info.dataset_uri, "dataset_key_uri": info.dataset_key_uri}
        datasets = [first, publish_dataset_version(stack, "bench-v2", seed=11)]
        results: list[dict] = []
        for n in levels:  # the report is rewritten after each level: a slow level loses nothing
            results.append(measure_level(stack, n, datasets))
            results[-1]["speedup"] = round(
                results[-1]["runs_per_hour"] / results[0]["runs_per_hour"], 2
            )
            report = {
                "benchmark": "concurrent_runs",
                "executor": "CeleryExecutor",
                "cores": os.cpu_count(),
                "dag_conf": DAG_CONF,
                "baseline": f"level {levels[0]}: the same stack, {levels[0]} run(s) at a time",
                "levels": results,
            }
            if args.out:
                args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 1 if any(r["cross_run_problems"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
