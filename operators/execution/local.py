"""Execution mode ``local``: the workload as a local process beside the guest-components emulator.

For hosts with no TEE and no cluster (the embedded default, tests, laptops). What runs is what
the pod runs: ``python -m <workload module> --config F``, talking to the guest components
REST API; here that API is ``coco-ai guest serve`` (the guest-components emulator) started with the
run's initdata, so Trustee sees the run's initdata digest and ``sample``/``sampledevice``
evidence. Both processes get a minimal environment (no ``AIRFLOW_*`` variables, no connections):
they stand for the TEE, which never receives anything from Airflow but references.

The emulator only produces Trustee's ``sample`` evidence, so only ``tee="sample"`` runs here;
the development resource policy accepts it, the production policy refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from coco_ai.guest.initdata import Initdata
from coco_ai.net import free_loopback_port
from coco_ai_airflow._settings import setting

LOCAL_TEES = ("sample",)
# generous: on a loaded development machine (several runs starting at once, a test suite beside
# them) the emulator's imports alone can take tens of seconds; one that exits is caught at once
_EMULATOR_START_TIMEOUT_S = 120
_ERROR_TAIL_LINES = 20
# Passed through to the "TEE" processes; everything else (AIRFLOW_*, cloud credentials) is not.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "HF_HOME", "OMP_NUM_THREADS")
_FIXED_ENV = {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class LocalWorkloadError(RuntimeError):
    """The local workload or its emulator failed; the message carries the workload's last lines."""


def tee_environment() -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update(_FIXED_ENV)
    return env


def guest_command() -> list[str]:
    """``[coco_ai] local_guest_command`` (a JSON list) or the bundled ``coco-ai guest serve``.

    Whatever serves the guest-components API for one run; it is called with ``--initdata FILE
    --port P --gpus N`` appended and must listen on 127.0.0.1:P.
    """
    configured = setting("local_guest_command").strip()
    if configured:
        argv = json.loads(configured)
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise LocalWorkloadError("[coco_ai] local_guest_command must be a JSON list of strings")
        return argv
    # The console script installed beside this interpreter (venv or image), not one on PATH.
    return [str(Path(sys.executable).with_name("coco-ai")), "guest", "serve"]


def _die_with_task_process(parent_pid: int):
    """A ``preexec_fn``: the child gets SIGKILL when the task process that started it dies.

    The TEE processes run in sessions of their own (so ``_stop`` can signal each whole tree),
    out of reach of the signals that stop the task process; without this, a task process
    killed outright (SIGKILL after its grace period, the OOM killer, its worker lost) would
    leave the workload training on with the run's keys.
    """

    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(1)

    return preexec


def _stop(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _start_emulator(initdata_path: Path, gpus: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    argv = [*guest_command(), "--initdata", str(initdata_path), "--port", str(port)]
    argv += ["--gpus", str(gpus)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=tee_environment(),
            start_new_session=True,
            preexec_fn=_die_with_task_process(os.getpid()),
        )
    deadline = time.monotonic() + _EMULATOR_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalWorkloadError(
                f"guest-components emulator exited with {proc.returncode}: "
                + log_path.read_text(errors="replace")[-2000:]
            )
        try:
            if httpx.get(f"{url}/info", timeout=1.0, trust_env=False).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise LocalWorkloadError(
        f"guest-components emulator did not answer on {url} in {_EMULATOR_START_TIMEOUT_S} s"
    )


class LocalRun:
    """One run of a workload as a local process beside its own guest-components emulator.

    ``run()`` starts the emulator with the run's initdata (so Trustee sees the run's initdata
    digest and ``sample``/``sampledevice`` evidence), then ``python -m <module> --config F``,
    streams its output to ``log`` and raises LocalWorkloadError on failure or past the
    deadline. ``kill()`` (the task was killed, timed out, marked failed or cleared) stops both
    processes and keeps the run from starting any more; should the task process die without
    calling it, both processes die with it (``_die_with_task_process``).
    """

    def __init__(
        self,
        *,
        module: str,
        config: dict[str, Any],
        initdata: Initdata,
        tee: str,
        gpus: int,
        deadline_s: float | None,
        log: logging.Logger,
    ) -> None:
        if tee not in LOCAL_TEES:
            raise LocalWorkloadError(
                f"the local execution mode emulates only the {', '.join(LOCAL_TEES)} TEE; "
                f"tee={tee!r} needs execution_mode=kubernetes on {tee.upper()} hardware"
            )
        self.module = module
        self.config = config
        self.initdata = initdata
        self.gpus = gpus
        self.deadline_s = deadline_s
        self.log = log
        self._procs: list[subprocess.Popen] = []
        self._killed = False

    def run(self) -> None:
        root = Path(setting("local_workdir") or tempfile.gettempdir()) / "coco-ai-local"
        # one folder per TEE: the parties of one federated run share the run id and run side
        # by side, each with its own initdata (its identity claims)
        run_dir = root / self.config["run_id"] / self.initdata.digest().hex()[:16]
        run_dir.mkdir(parents=True, exist_ok=True)
        initdata_path = run_dir / "initdata.toml"
        initdata_path.write_bytes(self.initdata.toml_bytes())  # the digest is over these bytes

        emulator, url = _start_emulator(initdata_path, self.gpus, run_dir / "emulator.log")
        self._procs.append(emulator)
        try:
            self._raise_if_killed()
            config_path = run_dir / "workload.json"
            config_path.write_text(
                json.dumps({**self.config, "guest_api_url": url}, indent=2, sort_keys=True)
            )
            self.log.info("Guest-components emulator at %s (initdata %s)", url, initdata_path)
            self._run_streaming([sys.executable, "-m", self.module, "--config", str(config_path)])
        finally:
            self.kill()

    def kill(self) -> None:
        self._killed = True
        for proc in reversed(self._procs):
            _stop(proc, grace_s=5)
        self._procs.clear()

    def _raise_if_killed(self) -> None:
        # kill() runs from a signal handler (the task's on_kill) and may come while a process
        # is being started, before it is in _procs: stop what started since, start nothing more
        if self._killed:
            self.kill()
            raise LocalWorkloadError("the task was killed; the workload was stopped")

    def _run_streaming(self, argv: list[str]) -> None:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=tee_environment(),
            start_new_session=True,
            preexec_fn=_die_with_task_process(os.getpid()),
            text=True,
            bufsize=1,
        )
        self._procs.append(proc)
        self._raise_if_killed()
        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            _stop(proc, grace_s=5)

        timer = threading.Timer(self.deadline_s, _expire) if self.deadline_s else None
        if timer:
            timer.daemon = True
            timer.start()
        tail: deque[str] = deque(maxlen=_ERROR_TAIL_LINES)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                self.log.info("[workload] %s", line)
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
            _stop(proc)
        if expired.is_set():
            raise LocalWorkloadError(
                f"workload exceeded its deadline of {self.deadline_s} s and was killed"
            )
        if rc != 0:
            raise LocalWorkloadError(
                f"workload exited with status {rc}; last lines:\n" + "\n".join(tail)
            )
