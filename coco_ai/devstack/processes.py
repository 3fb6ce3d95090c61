"""Detached service processes that outlive the command that started them, stopped by record.

A record keeps the pid *and* the kernel's start time of that pid, so `stop` never signals a
recycled pid that now belongs to someone else. Each service leads its own process group; stopping
it also signals every descendant that started a session of its own (Airflow's task runners and
the local workload do), so nothing of the service outlives it.
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
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
    run_as: tuple[int, int] | None = None,
) -> ServiceProcess:
    """Start `argv` detached, output appended to `log_path`; `run_as` is (uid, gid) for servers
    that refuse to run as root (PostgreSQL)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    identity = {}
    if run_as is not None:
        identity = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own process group; survives the starting terminal
            **identity,
        )
    ticks = _start_ticks(proc.pid)
    if ticks is None:
        proc.wait()
        raise ServiceError(f"{name} exited immediately; see {log_path}")
    return ServiceProcess(name, proc.pid, ticks, str(log_path))


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), collected before anything is killed: once a
    parent dies its children are re-parented and can no longer be found from it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_tree(service: ServiceProcess, sig: int, tree: Sequence[int] | None = None) -> None:
    """Signal the service's process group and every descendant (`tree`, default: collected
    now), including those in sessions of their own, as the death of a container would."""
    if tree is None:
        tree = descendants(service.pid) if service.alive() else []
    if service.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, sig)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_services(
    services: Sequence[ServiceProcess], grace_s: float = 20.0, term_signal: int = signal.SIGTERM
) -> None:
    """Stop all of `services` at once: `term_signal` to each whole tree, SIGKILL to whatever of
    it is left after `grace_s`."""
    trees = {s: descendants(s.pid) for s in services if s.alive()}
    for service, tree in trees.items():
        signal_tree(service, term_signal, tree)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(s.alive() for s in trees):
        for service in trees:
            _reap(service.pid)
        time.sleep(0.2)
    # Leaders that ignored the signal, and group members or own-session descendants that
    # outlived their leader.
    for service, tree in trees.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, signal.SIGKILL)
        signal_tree(service, signal.SIGKILL, tree)
        _reap(service.pid)


def stop_service(
    service: ServiceProcess, grace_s: float = 20.0, term_signal: int = signal.SIGTERM
) -> None:
    """Stop one service's tree (see stop_services)."""
    stop_services([service], grace_s, term_signal)


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
