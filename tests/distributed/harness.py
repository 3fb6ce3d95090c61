"""Launch a real multi-process Airflow deployment on loopback, for tests.

The same configuration as docker-compose.yaml, minus containers: PostgreSQL and Redis from the
operating system's packages (private instances in temporary directories, loopback only), and
Airflow's api-server, scheduler, dag-processor, triggerer and one Celery worker as separate
processes sharing one set of generated secrets and one Execution-API URL.

    with PostgresServer() as pg, RedisServer() as redis:
        cluster = AirflowCluster(home, [dags_dir], database_url=pg.sqlalchemy_url,
                                 broker_url=redis.url, result_backend=pg.celery_result_backend)
        cluster.start()
        run_id = cluster.trigger("my_dag", {"x": 1})
        assert cluster.wait("my_dag", run_id) == "success"
        cluster.stop()

`AirflowCluster(home, dags, executor="LocalExecutor")` (no database_url) gives the
standalone-like layout on SQLite for tests that do not need Celery.

The Airflow side is `coco_ai.devstack`'s launcher (`AirflowSettings`, `AirflowDeployment`,
`AirflowRestClient`, `start_service`/`stop_services`); this module adds what a test of the
distributed shape needs on top: PostgreSQL and Redis, one set of generated shared secrets given
to every component as the compose file gives them, Celery tuning for quick fault detection, the
process-tree kill of a worker and its restart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from coco_ai.devstack.airflow import (
    CELERY_WORKER,
    LOCAL_COMPONENTS,
    AirflowApiError,
    AirflowDeployment,
    AirflowRestClient,
    AirflowSettings,
    free_port,
    service_name,
)
from coco_ai.devstack.processes import (
    ServiceError,
    ServiceProcess,
    descendants,
    signal_tree,
    start_service,
    stop_service,
    stop_services,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "deploy" / "local" / "install-services.sh"
HARNESS_DAGS = Path(__file__).resolve().parent / "dags"  # coco_harness_* test DAGs
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class HarnessError(RuntimeError):
    """A service did not start or behave; the message carries the relevant log tail."""


def load_deploy_script(name: str) -> ModuleType:
    """Import deploy/compose/<name>.py by path: the deploy scripts are plain scripts (they run in
    containers too), not a package, and tests reuse them rather than copying them."""
    path = REPO_ROOT / "deploy" / "compose" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"coco_deploy_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


init_env = load_deploy_script("init_env")


def ensure_services_installed() -> None:
    """Install PostgreSQL and Redis from Debian's packages when missing (idempotent)."""
    if shutil.which("redis-server") and _postgres_bin_dir(required=False):
        return
    result = subprocess.run(["sh", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"{INSTALL_SCRIPT} failed:\n{result.stdout}\n{result.stderr}")


def check_python_dependencies() -> None:
    """Fail with a clear message when the venv cannot run Airflow on PostgreSQL + Celery."""
    if importlib.util.find_spec("asyncpg") is None:
        # Airflow 3 opens an async engine on the metadata DB at import; on PostgreSQL that
        # needs asyncpg (the official image has it through the postgres provider).
        raise HarnessError("asyncpg is not installed: Airflow on PostgreSQL needs it")
    import celery.backends.database

    if not hasattr(celery.backends.database, "retry"):
        # apache-airflow-providers-celery 3.26.0 imports it; celery 5.7 removed it.
        raise HarnessError("this celery release breaks the Airflow Celery provider: use <5.7")


def keep_or_remove(path: Path) -> None:
    """Delete a test deployment's directory, unless COCO_DISTRIBUTED_KEEP=1 (to read its logs)."""
    if os.environ.get("COCO_DISTRIBUTED_KEEP") == "1":
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def _postgres_bin_dir(*, required: bool = True) -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    if (postgres := shutil.which("postgres")) is not None:
        return Path(postgres).parent
    if required:
        raise HarnessError("PostgreSQL server binaries not found; run " + str(INSTALL_SCRIPT))
    return None


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


def kill_tree(
    service: ServiceProcess, sig: int = signal.SIGKILL, timeout: float = 30.0
) -> list[int]:
    """Signal a service's whole process tree (task runners and workloads start sessions of
    their own) as a crashed container or node would; wait until the leader is gone. Returns
    the pids signalled besides the leader."""
    tree = descendants(service.pid)
    signal_tree(service, sig, tree)
    wait_until(f"{service.name} to die", lambda: not service.alive(), timeout)
    return tree


def wait_for_log(
    path: Path, text: bytes, offset: int, service: ServiceProcess, timeout: float
) -> None:
    """Wait until `text` appears in `path` after byte `offset`, failing early if `service` dies."""

    def written() -> bool:
        with open(path, "rb") as f:
            f.seek(offset)
            return text in f.read()

    try:
        wait_until(f"{text!r} in {path.name}", written, timeout, [service], 0.5)
    except ServiceError as exc:
        raise HarnessError(f"{exc}\n{_tail(path)}") from None


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 (no Unix socket), deleted on stop().

    Runs as the current user, or as `postgres` when the current user is root (PostgreSQL
    refuses to run as root). `create_database(name)` gives further databases on the same server
    (one per Airflow deployment sharing it).
    """

    def __init__(self, *, port: int | None = None, database: str = "airflow") -> None:
        self.port = port or free_port()
        self.database = database
        self.user = "airflow"
        self.password = init_env.generate_env_values()["POSTGRES_PASSWORD"]
        self._dir: Path | None = None
        self._service: ServiceProcess | None = None

    def sqlalchemy_url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.sqlalchemy_url_for(self.database)

    def celery_result_backend_for(self, database: str) -> str:
        return "db+" + self.sqlalchemy_url_for(database)

    @property
    def celery_result_backend(self) -> str:
        return self.celery_result_backend_for(self.database)

    def _run_as(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        account = pwd.getpwnam("postgres")
        return account.pw_uid, account.pw_gid

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bindir = _postgres_bin_dir()
        assert bindir is not None
        # Not under pytest's tmp_path: that is mode 0700 root-owned, which `postgres` cannot
        # traverse when the tests run as root.
        self._dir = Path(tempfile.mkdtemp(prefix="coco-pg-"))
        run_as = self._run_as()
        identity = {}
        if run_as:
            os.chown(self._dir, *run_as)
            identity = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if run_as:
            os.chown(pwfile, *run_as)
        data = self._dir / "data"
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            cwd=self._dir,
            **identity,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise HarnessError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self._service = start_service(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-c",
                "unix_socket_directories=",
                # A throw-away test database: durability is not wanted, speed is.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            self._dir / "postgres.log",
            cwd=self._dir,
            run_as=run_as,
        )
        self._wait_ready(timeout)
        self.create_database(self.database)
        return self

    def _connect(self, database: str):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=3,
        )

    def _wait_ready(self, timeout: float) -> None:
        assert self._service is not None
        try:
            wait_until(
                "postgres",
                lambda: self._connect("postgres").close() is None,
                timeout,
                [self._service],
            )
        except ServiceError as exc:
            raise HarnessError(f"{exc}\n{self._service.log_tail()}") from None

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its SQLAlchemy URL."""
        conn = self._connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.sqlalchemy_url_for(name)

    def stop(self) -> None:
        if self._service is not None:
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for every client.
            stop_service(self._service, term_signal=signal.SIGINT)
            self._service = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer:
    """A private, password-protected, non-persistent Redis on 127.0.0.1; `url_for(n)` names
    logical database n (one per deployment sharing the server)."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.password = init_env.generate_env_values()["REDIS_PASSWORD"]
        self._dir: Path | None = None
        self._service: ServiceProcess | None = None

    def url_for(self, db: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for(0)

    def start(self, timeout: float = 30.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise HarnessError("redis-server not found; run " + str(INSTALL_SCRIPT))
        self._dir = Path(tempfile.mkdtemp(prefix="coco-redis-"))
        conf = self._dir / "redis.conf"
        # The password goes in a 0600 file, not on the command line (visible in `ps`).
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n"
                f'save ""\nappendonly no\ndir {self._dir}\nrequirepass {self.password}\n'
            )
        self._service = start_service(
            "redis",
            [binary, str(conf)],
            {"PATH": os.environ.get("PATH", "")},
            self._dir / "redis.log",
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        try:
            wait_until("redis", client.ping, timeout, [self._service], 0.2)
        except ServiceError as exc:
            raise HarnessError(f"{exc}\n{self._service.log_tail()}") from None
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self._service is not None:
            stop_service(self._service)
            self._service = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cluster_tuning_env(heartbeat_timeout: int = 30) -> dict[str, str]:
    """Settings every test deployment adds to the launcher's: a dead worker's task is noticed
    within `heartbeat_timeout` s (default 300), the scheduler serves its health check (as the
    compose healthcheck uses it) on a free loopback port, one Celery sync process."""
    return {
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
    }


def shared_secrets_env() -> dict[str, str]:
    """One generated set of the secrets every Airflow component of a deployment must share,
    from the compose deployment's generator, given to each component as compose gives them."""
    secrets = init_env.generate_env_values()
    return {
        "AIRFLOW__CORE__FERNET_KEY": secrets["FERNET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": secrets["AIRFLOW_API_SECRET_KEY"],
    }


class CeleryWorkers:
    """Kill and replace the Celery worker of a running deployment.

    `start` is how to start a worker (the devstack launcher's `start_component`, given the
    component name and extra arguments); the worker's log is appended to, so readiness is
    looked for after the offset where the newest worker started writing.
    """

    def __init__(self, start: Callable[..., ServiceProcess], log_path: Path) -> None:
        self._start = start
        self.log_path = log_path
        self.current: ServiceProcess | None = None
        self._generation = 0
        self._offset = 0

    def adopt(self, service: ServiceProcess) -> None:
        """Take over a worker started with the deployment (its log starts at offset 0)."""
        self.current = service
        self._generation += 1

    def start(self) -> ServiceProcess:
        """Start (or restart, after kill) the worker, under a fresh Celery node name."""
        self._generation += 1
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.current = self._start(
            CELERY_WORKER,
            "--celery-hostname",
            f"coco-worker-{self._generation}@%h",
            "--without-mingle",
            "--without-gossip",
        )
        return self.current

    def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.current is not None
        wait_for_log(self.log_path, b" ready.", self._offset, self.current, timeout)

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal the worker's whole process tree (worker, pool children, task runners and
        whatever they started); returns the pids signalled besides the worker itself."""
        assert self.current is not None
        return kill_tree(self.current, sig)


class AirflowCluster:
    """Airflow components as separate processes on loopback, sharing one configuration.

    executor: "CeleryExecutor" (needs database_url, broker_url, result_backend) or
    "LocalExecutor". database_url None means SQLite in `home`.
    dag_folders: one folder becomes [core] dags_folder; several become one LocalDagBundle each.
    extra_env: added to every component's environment (e.g. connections for the DAG).
    """

    def __init__(
        self,
        home: Path,
        dag_folders: Sequence[Path],
        *,
        executor: str = "CeleryExecutor",
        database_url: str | None = None,
        broker_url: str | None = None,
        result_backend: str | None = None,
        worker_concurrency: int = 2,
        heartbeat_timeout: int = 30,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if not dag_folders:
            raise ValueError("at least one DAG folder is needed")
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        env = {
            **shared_secrets_env(),
            **cluster_tuning_env(heartbeat_timeout),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
        }
        folders = [Path(p).resolve() for p in dag_folders]
        if len(folders) > 1:
            env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
                [
                    {
                        "name": f"bundle-{i}-{folder.name}",
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(folder), "refresh_interval": 5},
                    }
                    for i, folder in enumerate(folders)
                ]
            )
        env.update(extra_env or {})
        # The worker is started apart from the other components (with a node name per
        # generation), so that it can be killed and replaced.
        self.settings = AirflowSettings(
            home=self.home,
            dags_folder=folders[0],
            api_port=free_port(),
            executor=executor,
            sql_alchemy_conn=database_url,
            parallelism=4,
            components=LOCAL_COMPONENTS,
            celery_broker_url=broker_url,
            celery_result_backend=result_backend,
            worker_concurrency=worker_concurrency,
            extra_env=env,
        )
        self.api_url = self.settings.base_url
        self.deployment = AirflowDeployment(self.settings, self.home)
        self.workers = CeleryWorkers(
            self.deployment.start_component, self.deployment.log_path(CELERY_WORKER)
        )
        self._admin_password = init_env.generate_env_values()["AIRFLOW_ADMIN_PASSWORD"]
        self._services: list[ServiceProcess] = []
        self._client: AirflowRestClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> AirflowCluster:
        deadline = time.monotonic() + timeout
        # The launcher keeps an existing password entry: this makes the password a generated one.
        passwords = self.settings.passwords_file
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({self.settings.username: self._admin_password}, f)
        try:
            self.deployment.prepare()
        except ServiceError as exc:
            migrate_log = self.home / "airflow-db-migrate.log"
            raise HarnessError(f"{exc}\n{_tail(migrate_log)}") from None
        self._services = self.deployment.start()
        if self.executor == "CeleryExecutor":
            self._services.append(self.workers.start())
        try:
            self.deployment.wait_ready(self._services, max(1.0, deadline - time.monotonic()))
            if self.executor == "CeleryExecutor":
                self.workers.wait_ready(max(1.0, deadline - time.monotonic()))
        except ServiceError as exc:
            raise HarnessError(f"cluster not healthy in time: {exc}\n{self.log_tail()}") from None
        return self

    def start_worker(self) -> None:
        """Start (or restart, after kill_worker) the Celery worker."""
        self._services.append(self.workers.start())

    def wait_worker_ready(self, timeout: float = 120.0) -> None:
        self.workers.wait_ready(timeout)

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process tree (worker, pool children, task runners)."""
        self.workers.kill(sig)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        # All at once (sequential graceful stops cost up to 20 s each), then SIGKILL leftovers.
        stop_services(self._services)
        self._services = []

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST ------------------------------------------------------------------------------

    @property
    def client(self) -> AirflowRestClient:
        if self._client is None:
            self._client = AirflowRestClient(
                self.api_url, self.settings.username, self._admin_password
            )
        return self._client

    def wait_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has serialized `dag_id`; fail on its import errors."""
        try:
            return self.client.wait_for_dag(dag_id, timeout)
        except (AirflowApiError, ServiceError) as exc:
            raise HarnessError(
                f"DAG {dag_id!r} not registered: {exc}\n" + self.log_tail(("dag-processor",))
            ) from None

    def trigger(self, dag_id: str, conf: Mapping | None = None) -> str:
        """Unpause and trigger `dag_id` over REST; returns the dag_run_id."""
        self.wait_dag(dag_id)
        self.client.unpause(dag_id)
        return self.client.trigger(dag_id, dict(conf or {}))["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.client.dag_run(dag_id, run_id)["state"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """Task instances of the run keyed by task_id (mapped ones as 'task_id[index]')."""
        return index_task_instances(self.client.task_instances(dag_id, run_id))

    def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 300.0,
        states: Iterable[str] = TERMINAL_RUN_STATES,
    ) -> str:
        """Poll the run until it reaches one of `states`; returns that state."""
        return wait_run(self.client, dag_id, run_id, timeout, states, self.log_tail)

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float = 180.0,
    ) -> dict:
        return wait_task(self.client, dag_id, run_id, task_id, states, timeout, self.log_tail)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        return self.client.task_log(dag_id, run_id, task_id, try_number)

    # -- logs ------------------------------------------------------------------------------

    def logs(self) -> dict[str, str]:
        """Full output of every component, by component name ("scheduler", "celery-worker")."""
        return {
            path.stem.removeprefix("airflow-"): path.read_text(errors="replace")
            for path in self.home.glob("airflow-*.log")
        }

    def log_tail(self, names: Iterable[str] | None = None, lines: int = 40) -> str:
        return components_log_tail(self.deployment, names, lines)


def components_log_tail(
    deployment: AirflowDeployment, names: Iterable[str] | None = None, lines: int = 40
) -> str:
    """The last lines of each component's log (default: all of them and the worker's)."""
    chosen = list(names) if names is not None else [*LOCAL_COMPONENTS, CELERY_WORKER]
    return "\n".join(
        f"--- {service_name(c)} ---\n{_tail(deployment.log_dir / f'{service_name(c)}.log', lines)}"
        for c in chosen
    )


def index_task_instances(task_instances: Iterable[dict]) -> dict[str, dict]:
    out = {}
    for ti in task_instances:
        key = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
        out[key] = ti
    return out


def wait_run(
    client: AirflowRestClient,
    dag_id: str,
    run_id: str,
    timeout: float,
    states: Iterable[str] = TERMINAL_RUN_STATES,
    diagnostics=lambda: "",
) -> str:
    """Poll the run until it reaches one of `states`; returns that state."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    while True:
        state = client.dag_run(dag_id, run_id)["state"]
        if state in wanted:
            return state
        if time.monotonic() > deadline:
            tis = index_task_instances(client.task_instances(dag_id, run_id))
            summary = {k: v["state"] for k, v in tis.items()}
            raise HarnessError(
                f"run {run_id} still {state} after {timeout}s; tasks {summary}\n" + diagnostics()
            )
        time.sleep(2)


def wait_task(
    client: AirflowRestClient,
    dag_id: str,
    run_id: str,
    task_id: str,
    states: Iterable[str],
    timeout: float = 180.0,
    diagnostics=lambda: "",
) -> dict:
    """Poll until the task instance is in one of `states`; returns it."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    while True:
        ti = index_task_instances(client.task_instances(dag_id, run_id)).get(task_id)
        if ti is not None and ti["state"] in wanted:
            return ti
        if time.monotonic() > deadline:
            raise HarnessError(
                f"task {task_id} not in {sorted(wanted)} after {timeout}s "
                f"(now {ti and ti['state']})\n" + diagnostics()
            )
        time.sleep(1)


def assert_dead(pid: int, timeout: float = 10.0) -> None:
    """The process is gone. A zombie counts as gone: where PID 1 does not reap orphans, killed
    processes linger as <defunct>."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} survived the kill (state {state})")
        time.sleep(0.2)
