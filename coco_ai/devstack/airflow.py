"""A real Airflow deployment on loopback, as subprocesses: scheduler, dag-processor, triggerer,
api-server; plus a small REST client (httpx) for what the demo and tests need.

Nothing here imports Airflow: components are started as ``airflow <component>`` from the
interpreter's environment, configured only through environment variables and the
``airflow.cfg`` that ``airflow db migrate`` generates in ``AIRFLOW_HOME`` (fernet key, JWT secret,
API secret key: shared by every component because they read the same file). The executor and
database URL are settings, so a CeleryExecutor/PostgreSQL deployment reuses this launcher: pass
``executor="CeleryExecutor"``, ``sql_alchemy_conn``, ``celery_broker_url`` and
``celery_result_backend``, and add ``"celery worker"`` to ``components`` (or start workers
with ``AirflowDeployment.start_component``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from coco_ai.devstack.processes import ServiceError, ServiceProcess, start_service, wait_until

LOCAL_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
CELERY_WORKER = "celery worker"
CELERY_EXECUTOR = "CeleryExecutor"
#: the states a DAG run ends in
FINAL_RUN_STATES = ("success", "failed")
# Inherited from the caller; everything else (notably any AIRFLOW_* of the caller) is not.
# OMP_NUM_THREADS: a thread cap set for the stack reaches its tasks and their local workloads.
_PASS_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "OMP_NUM_THREADS")
_HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# Transient api-server answers, and the waits between repeats of an idempotent call (~15 s).
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AirflowSettings:
    """How to run one Airflow deployment. Secrets never go in ``extra_env``.

    The Celery URLs carry the broker's and result backend's passwords: they reach only the
    Airflow components, as in the compose deployment.
    """

    home: Path
    dags_folder: Path
    api_port: int
    executor: str = "LocalExecutor"
    sql_alchemy_conn: str | None = None  # default: SQLite in `home`
    parallelism: int = 2
    components: tuple[str, ...] = LOCAL_COMPONENTS
    username: str = "admin"
    extra_env: dict[str, str] = field(default_factory=dict)
    celery_broker_url: str | None = field(default=None, repr=False)
    celery_result_backend: str | None = field(default=None, repr=False)
    worker_concurrency: int = 2
    worker_log_port: int = field(default_factory=free_port)
    trigger_log_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.components = tuple(self.components)
        celery = self.executor == CELERY_EXECUTOR
        if celery and not (self.celery_broker_url and self.celery_result_backend):
            raise ValueError("CeleryExecutor needs celery_broker_url and celery_result_backend")
        if celery and not self.sql_alchemy_conn:
            # Workers on other processes (or hosts) cannot share a SQLite file safely.
            raise ValueError("CeleryExecutor needs a server database in sql_alchemy_conn")
        if CELERY_WORKER in self.components and not celery:
            raise ValueError(f"component {CELERY_WORKER!r} needs executor={CELERY_EXECUTOR!r}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def environment(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")])
        db = self.sql_alchemy_conn or f"sqlite:///{(self.home / 'airflow.db').resolve()}"
        env.update(
            {
                "AIRFLOW_HOME": str(self.home.resolve()),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder.resolve()),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                # A task starting while the api-server restarts (~40 s on 2 cores) must ride it
                # out: the default 5 attempts (randomised exponential waits, ~15 s at most)
                # fail the task before it runs; 10 wait ~2.5 min on average.
                "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # Log servers bind every interface on fixed ports by default: pick free ones.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.executor == CELERY_EXECUTOR:
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": str(self.celery_broker_url),
                    "AIRFLOW__CELERY__RESULT_BACKEND": str(self.celery_result_backend),
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
        env.update(self.extra_env)
        return env


def service_name(component: str) -> str:
    """``"celery worker"`` -> ``"airflow-celery-worker"`` (also the log file's stem)."""
    return "airflow-" + component.replace(" ", "-")


class AirflowDeployment:
    """Prepare (DB, users) and start the configured components; stopping is by record."""

    def __init__(self, settings: AirflowSettings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir

    def _airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def prepare(self) -> None:
        """Create AIRFLOW_HOME, the admin password (once) and the migrated metadata DB."""
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        if not s.passwords_file.exists():
            # SimpleAuthManager keeps an existing entry; writing it first makes the password ours.
            fd = os.open(s.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({s.username: secrets.token_urlsafe(12)}, fh)
        log = self.log_dir / "airflow-db-migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            rc = subprocess.call(
                [self._airflow(), "db", "migrate"],
                env=s.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if rc != 0:
            raise ServiceError(f"airflow db migrate failed ({rc}); see {log}")

    def password(self) -> str:
        return json.loads(self.settings.passwords_file.read_text())[self.settings.username]

    def start(self) -> list[ServiceProcess]:
        return [self.start_component(component) for component in self.settings.components]

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{service_name(component)}.log"

    def start_component(self, component: str, *args: str) -> ServiceProcess:
        """Start ``airflow <component> <args>`` (e.g. another Celery worker, or a replacement
        for a dead one); its output is appended to the component's log."""
        return start_service(
            service_name(component),
            [self._airflow(), *component.split(), *args],
            self.settings.environment(),
            self.log_path(component),
            cwd=self.settings.home,
        )

    def wait_ready(self, services: Sequence[ServiceProcess], timeout_s: float = 180) -> None:
        url = f"{self.settings.base_url}/api/v2/monitor/health"

        def healthy() -> bool:
            body = httpx.get(url, timeout=5, trust_env=False).json()
            wanted = [c for c in _HEALTH_COMPONENTS if c != "triggerer" or self._has_triggerer()]
            return all((body.get(c) or {}).get("status") == "healthy" for c in wanted)

        wait_until("Airflow components to report healthy", healthy, timeout_s, services, 1.0)

    def _has_triggerer(self) -> bool:
        return "triggerer" in self.settings.components


class AirflowApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status


class AirflowRestClient:
    """The few REST API v2 calls the demo needs (token from POST /auth/token)."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, trust_env=False, transport=transport
        )
        self._username = username
        self._password = password
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def token(self) -> str:
        if self._token is None:
            r = self._http.post(
                "/auth/token", json={"username": self._username, "password": self._password}
            )
            if r.status_code not in (200, 201):
                raise AirflowApiError("POST", "/auth/token", r.status_code, r.text)
            self._token = r.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> Any:
        """One API call. Idempotent calls (every method but POST, or a POST the caller marks
        ``retry=True`` because it handles a repeat) ride out transient failures: the api-server
        answers 500 "Database error" when its SQLite metadata database is locked under load."""
        retry = method.upper() != "POST" if retry is None else retry
        delays = iter(_RETRY_DELAYS_S if retry else ())
        while True:
            try:
                headers = {"Authorization": f"Bearer {self.token()}"}
                r = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ServiceError(
                        f"{method} {path}: the Airflow api-server at {self.base_url} is "
                        f"unreachable: {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                if r.status_code < 400:
                    return r.json() if r.content else None
                delay = next(delays, None) if r.status_code in _TRANSIENT_STATUS else None
                if delay is None:
                    raise AirflowApiError(method, path, r.status_code, r.text)
            time.sleep(delay)

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> dict:
        """Wait until the DAG is parsed and serialized; fail fast on an import error."""
        found: dict = {}

        def parsed() -> bool:
            errors = self.request("GET", "/api/v2/importErrors")["import_errors"]
            if errors:
                raise ServiceError(f"DAG import errors: {json.dumps(errors)[:2000]}")
            found.update(self.request("GET", f"/api/v2/dags/{dag_id}"))
            return True

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if parsed():
                    return found
            except AirflowApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any], note: str | None = None) -> dict:
        """Start a run. Its id is chosen here (``manual__<UTC time>-<random>``, Airflow's own
        form plus a suffix no other trigger picks), which makes the POST safe to repeat: a
        trigger whose answer was lost (api-server restarting, 5xx after the commit) is sent
        again, and a repeat that finds the run (409) returns it."""
        from datetime import UTC, datetime

        run_id = f"manual__{datetime.now(UTC).isoformat()}-{secrets.token_hex(3)}"
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)}
        if note:
            body["note"] = note
        try:
            return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body, retry=True)
        except AirflowApiError as exc:
            if exc.status != 409:
                raise
            return self.dag_run(dag_id, run_id)

    def run_to_end(
        self,
        dag_id: str,
        conf: Mapping[str, Any],
        *,
        note: str,
        timeout_s: float,
        progress: Callable[[str], None],
        what: str = "",
    ) -> dict[str, Any]:
        """Trigger a run and poll it until it ends; ``{dag_id, run_id, state, wall_seconds}``.
        ``progress`` hears of the trigger (with ``what``, e.g. ": 3 participants") and the end."""
        started = time.monotonic()
        run_id = self.trigger(dag_id, conf, note=note)["dag_run_id"]
        progress(f"triggered {dag_id} run {run_id}{what}")
        while (state := self.dag_run(dag_id, run_id)["state"]) not in FINAL_RUN_STATES:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")
            time.sleep(2)
        wall_s = round(time.monotonic() - started, 1)
        progress(f"{dag_id}: {state} in {wall_s} s")
        return {"dag_id": dag_id, "run_id": run_id, "state": state, "wall_seconds": wall_s}

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/xcomEntries/{key}"
        )
        try:
            return self.request("GET", path, params={"deserialize": True})["value"]
        except AirflowApiError as exc:
            if exc.status == 404:
                return None
            raise

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/logs/{try_number}"
        )
        body = self.request("GET", path, params={"full_content": True})
        content = body.get("content")
        if isinstance(content, list):
            return "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in content)
        return str(content)

    def put_connection(self, conn_id: str, conn_type: str, extra: Mapping[str, Any]) -> None:
        body = {"connection_id": conn_id, "conn_type": conn_type, "extra": json.dumps(extra)}
        try:
            self.request("POST", "/api/v2/connections", json=body, retry=True)
        except AirflowApiError as exc:
            if exc.status != 409:
                raise
            self.request("PATCH", f"/api/v2/connections/{conn_id}", json=body)

    def put_variable(self, key: str, value: str) -> None:
        body = {"key": key, "value": value}
        try:
            self.request("POST", "/api/v2/variables", json=body, retry=True)
        except AirflowApiError as exc:
            if exc.status != 409:
                raise
            self.request("PATCH", f"/api/v2/variables/{key}", json=body)
