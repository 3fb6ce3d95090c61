"""Detached service processes that outlive the command that started them, stopped by record.

A record keeps the pid *and* the kernel's start time of that pid, so `stop` never signals a
recycled pid that now belongs to someone else. Each service leads its own process group (its
workers, e.g. LocalExecutor's, die with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """A service did not start or become ready (the message points at its log)."""


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: identifies this pid's incarnation
    log: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ServiceProcess:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_ticks"]), str(data["log"]))

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie holds nothing; treat it as gone
        return None
    return int(fields[19])


def start_service(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> ServiceProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own process group; survives the starting terminal
        )
    ticks = _start_ticks(proc.pid)
    if ticks is None:
        proc.wait()
        raise ServiceError(f"{name} exited immediately; see {log_path}")
    return ServiceProcess(name, proc.pid, ticks, str(log_path))


def stop_service(service: ServiceProcess, grace_s: float = 20.0) -> None:
    """SIGTERM the service's process group, SIGKILL it after `grace_s`."""
    if not service.alive():
        return
    try:
        os.killpg(service.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not service.alive():
            break
        _reap(service.pid)
        time.sleep(0.2)
    else:
        try:
            os.killpg(service.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    # Workers of the group may outlive their leader briefly; the group dies with SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(service.pid, signal.SIGKILL)
    _reap(service.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # only our own children can be reaped
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout_s: float,
    services: Sequence[ServiceProcess] = (),
    interval_s: float = 0.5,
) -> None:
    """Poll `ready` until true; fail early, with the log tail, if a service died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for service in services:
            if not service.alive():
                raise ServiceError(
                    f"{service.name} died while waiting for {what}; log {service.log}:\n"
                    + service.log_tail()
                )
        try:
            if ready():
                return
        except Exception:  # noqa: S110 - not up yet; any error means "poll again"
            pass
        time.sleep(interval_s)
    raise ServiceError(f"timed out after {timeout_s:.0f} s waiting for {what}")
