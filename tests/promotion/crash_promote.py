"""Run one promotion that dies (SIGKILL, as a killed worker would) on entering an MLflow client
call: ``python crash_promote.py ARGS.pickle METHOD``. ARGS holds promote()'s keyword arguments.
The kill comes from inside the process, so the point of death is exact; nothing of Python's
cleanup (finally blocks, atexit) runs, as with a real kill."""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path

from mlflow import MlflowClient

from coco_ai.promotion import promote


def main() -> None:
    kwargs = pickle.loads(Path(sys.argv[1]).read_bytes())  # noqa: S301 - the test's own file

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(MlflowClient, sys.argv[2], die)
    promote(**kwargs)
    sys.exit("the promotion finished without reaching the crash point")


if __name__ == "__main__":
    main()
