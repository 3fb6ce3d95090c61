"""One triggerer process for one row of Airflow's trigger table (test equipment).

    python -m tests.faults.trigger_process ROW.json

``ROW.json`` holds ``classpath`` and ``encrypted_kwargs`` as ``airflow.models.Trigger`` stores
them. The process runs Airflow's own ``TriggerRunner``: ``create_triggers`` decrypts the kwargs,
imports the class and builds the trigger, ``run_trigger`` runs it, calls ``on_kill`` when a user
acted on the task, and always ``cleanup``. What `airflow triggerer` adds and this leaves out:
the metadata DB (the row is a file), the supervisor process and the job heartbeat by which a
restarted triggerer takes over the rows of a dead one.

Each event the trigger fires is printed as one JSON line (serde, as Airflow stores an event for
the resumed task). Signals: SIGTERM stops it as a triggerer shutdown does (the trigger is
cancelled, no ``on_kill``); SIGUSR1 as a user marking the deferred task failed does (cancelled
with Airflow's user-action message, so ``on_kill`` runs); SIGKILL is a crash.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from airflow.executors.workloads.trigger import RunTrigger
from airflow.jobs.triggerer_job_runner import _USER_ACTION_CANCEL_MSG, TriggerRunner
from airflow.sdk.serde import serialize

READY = "trigger running"


async def run(row: dict) -> int:
    runner = TriggerRunner()
    runner.to_create.append(
        RunTrigger(id=1, classpath=row["classpath"], encrypted_kwargs=row["encrypted_kwargs"])
    )
    await runner.create_triggers()
    if runner.failed_triggers:
        (_, error), *_ = runner.failed_triggers
        print(f"trigger failed to load: {error!r}", file=sys.stderr, flush=True)
        return 1
    task = runner.triggers[1]["task"]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGUSR1, task.cancel, _USER_ACTION_CANCEL_MSG)
    print(READY, flush=True)
    while not task.done() or runner.events:
        while runner.events:
            entry = runner.events.popleft()
            print(json.dumps(serialize(entry.event.payload)), flush=True)
        await asyncio.sleep(0.05)
    if task.cancelled():
        print("trigger cancelled", flush=True)
        return 0
    task.result()  # a trigger that raised: its traceback, exit 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run(json.loads(Path(sys.argv[1]).read_text()))))
