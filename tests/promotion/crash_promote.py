"""Run one promotion that dies on entering an MLflow client call:
``python crash_promote.py ARGS.pickle METHOD [kill|timeout]``. ARGS holds promote()'s keyword
arguments.

``kill`` (default): SIGKILL, as a killed worker would. The kill comes from inside the process, so
the point of death is exact; nothing of Python's cleanup (finally blocks, atexit) runs, as with a
real kill. ``timeout``: the call hangs and the task's ``execution_timeout`` fires — Airflow's own
timeout (SIGALRM raising AirflowTaskTimeout), as the Task SDK's runner applies it; the process
then exits with TIMED_OUT.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from coco_ai.promotion import promote

TIMED_OUT = 3


def main() -> None:
    kwargs = pickle.loads(Path(sys.argv[1]).read_bytes())  # noqa: S301 - the test's own file
    mode = sys.argv[3] if len(sys.argv) > 3 else "kill"

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def hang(*_args, **_kwargs):
        from airflow.sdk.execution_time.timeout import timeout

        # the task's deadline passes while the call hangs (the alarm is armed here so that the
        # point where it fires is exact, whatever the box's load made the steps before cost)
        with timeout(1):
            time.sleep(600)

    setattr(MlflowClient, sys.argv[2], die if mode == "kill" else hang)
    if mode == "timeout":
        from airflow.sdk.exceptions import AirflowTaskTimeout

        try:
            promote(**kwargs)
        except AirflowTaskTimeout:
            sys.exit(TIMED_OUT)
    else:
        promote(**kwargs)
    sys.exit("the promotion finished without reaching the crash point")


if __name__ == "__main__":
    main()
