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

Every process runs in its own session, so `kill_worker()` can SIGKILL a worker together with the
task processes it forked, as a crashed container or node would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "deploy" / "local" / "install-services.sh"
HARNESS_DAGS = Path(__file__).resolve().parent / "dags"  # coco_harness_* test DAGs
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class HarnessError(RuntimeError):
    """A service did not start or behave; the message carries the relevant log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), collected before anything is killed: once a
    parent dies its children are re-parented and can no longer be found from it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _Process:
    """A child in its own session (so its whole process group can be signalled)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, **popen_kwargs) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen_kwargs,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int, targets: Sequence[int] | None = None) -> None:
        """Signal the process group and every descendant, including those that started their own
        session (Airflow's task runners do), as the death of a container or node would."""
        if targets is None:
            targets = _descendants(self.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def terminate(self, term_signal: int = signal.SIGTERM) -> list[int]:
        """Ask the process tree to stop; returns the tree, for finish()."""
        targets = _descendants(self.popen.pid)
        if self.alive():
            self.kill_group(term_signal, targets)
        return targets

    def finish(self, targets: Sequence[int], deadline: float) -> None:
        """Wait until `deadline` (monotonic), then SIGKILL whatever of the tree is left."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Whatever ignored the first signal (pool children, task runners in own sessions).
        self.kill_group(signal.SIGKILL, targets)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, grace: float = 20.0, term_signal: int = signal.SIGTERM) -> None:
        self.finish(self.terminate(term_signal), time.monotonic() + grace)

    def tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 (no Unix socket), deleted on stop().

    Runs as the current user, or as `postgres` when the current user is root (PostgreSQL
    refuses to run as root).
    """

    def __init__(self, *, port: int | None = None, database: str = "airflow") -> None:
        self.port = port or free_port()
        self.database = database
        self.user = "airflow"
        self.password = init_env.generate_env_values()["POSTGRES_PASSWORD"]
        self._dir: Path | None = None
        self._proc: _Process | None = None

    @property
    def sqlalchemy_url(self) -> str:
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{self.database}"
        )

    @property
    def celery_result_backend(self) -> str:
        return f"db+postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        account = pwd.getpwnam("postgres")
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bindir = _postgres_bin_dir()
        assert bindir is not None
        # Not under pytest's tmp_path: that is mode 0700 root-owned, which `postgres` cannot
        # traverse when the tests run as root.
        self._dir = Path(tempfile.mkdtemp(prefix="coco-pg-"))
        run_as = self._run_as()
        if run_as:
            os.chown(self._dir, run_as["user"], run_as["group"])
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if run_as:
            os.chown(pwfile, run_as["user"], run_as["group"])
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
            **run_as,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise HarnessError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self._proc = _Process(
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
                "max_connections=200",
            ],
            self._dir / "postgres.log",
            cwd=self._dir,
            **run_as,
        )
        self._wait_ready(timeout)
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
        import psycopg2

        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if not self._proc.alive():
                raise HarnessError("postgres exited:\n" + self._proc.tail())
            try:
                conn = self._connect("postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise HarnessError("postgres not ready:\n" + self._proc.tail()) from None
                time.sleep(0.5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()

    def stop(self) -> None:
        if self._proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for every client.
            self._proc.stop(term_signal=signal.SIGINT)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer:
    """A private, password-protected, non-persistent Redis on 127.0.0.1."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.password = init_env.generate_env_values()["REDIS_PASSWORD"]
        self._dir: Path | None = None
        self._proc: _Process | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

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
        self._proc = _Process("redis", [binary, str(conf)], self._dir / "redis.log")
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while True:
            if not self._proc.alive():
                raise HarnessError("redis-server exited:\n" + self._proc.tail())
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise HarnessError("redis not ready:\n" + self._proc.tail()) from None
                time.sleep(0.2)
        client.close()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
        if executor == "CeleryExecutor" and not (database_url and broker_url and result_backend):
            raise ValueError("CeleryExecutor needs database_url, broker_url and result_backend")
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        secrets = init_env.generate_env_values()
        self._admin_password = secrets["AIRFLOW_ADMIN_PASSWORD"]
        passwords_file = self.home / "simple_auth_manager_passwords.json"
        fd = os.open(passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"admin": self._admin_password}, f)

        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": executor,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url
                or f"sqlite:///{self.home / 'airflow.db'}",
                # The shared-secret rule of every multi-process Airflow deployment.
                "AIRFLOW__CORE__FERNET_KEY": secrets["FERNET_KEY"],
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets["AIRFLOW_JWT_SECRET"],
                "AIRFLOW__API__SECRET_KEY": secrets["AIRFLOW_API_SECRET_KEY"],
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                # Log servers default to fixed ports on all interfaces; give each cluster its own.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        if executor == "CeleryExecutor":
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": str(broker_url),
                    "AIRFLOW__CELERY__RESULT_BACKEND": str(result_backend),
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
                    "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                }
            )
        folders = [Path(p).resolve() for p in dag_folders]
        if len(folders) == 1:
            env["AIRFLOW__CORE__DAGS_FOLDER"] = str(folders[0])
        else:
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
        self.env = env
        self._procs: dict[str, _Process] = {}
        self._worker_generation = 0
        self._ready_offset = 0
        self._client: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 300.0) -> AirflowCluster:
        deadline = time.monotonic() + timeout
        migrate = subprocess.run(
            ["airflow", "db", "migrate"],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if migrate.returncode != 0:
            raise HarnessError(
                "airflow db migrate failed:\n" + migrate.stdout[-4000:] + migrate.stderr[-4000:]
            )
        for name in AIRFLOW_COMPONENTS:
            argv = ["airflow", name]
            if name == "api-server":
                argv += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
            self._spawn(name, argv)
        if self.executor == "CeleryExecutor":
            self.start_worker()
        self._wait_healthy(deadline)
        return self

    def _spawn(self, name: str, argv: Sequence[str]) -> _Process:
        proc = _Process(name, argv, self.home / f"{name}.log", env=self.env, cwd=self.home)
        self._procs[name] = proc
        return proc

    def start_worker(self) -> None:
        """Start (or restart, after kill_worker) the Celery worker."""
        self._worker_generation += 1
        log = self.home / "celery-worker.log"
        self._ready_offset = log.stat().st_size if log.exists() else 0
        self._spawn(
            "celery-worker",
            [
                "airflow",
                "celery",
                "worker",
                "--celery-hostname",
                f"coco-worker-{self._worker_generation}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
        )

    def worker_ready(self) -> bool:
        proc = self._procs.get("celery-worker")
        if proc is None or not proc.alive():
            return False
        with open(proc.log_path, "rb") as f:
            f.seek(self._ready_offset)
            return b" ready." in f.read()

    def wait_worker_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.worker_ready():
            proc = self._procs["celery-worker"]
            if not proc.alive() or time.monotonic() > deadline:
                raise HarnessError("celery worker not ready:\n" + proc.tail())
            time.sleep(1)

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (worker, pool children, task runners)."""
        proc = self._procs["celery-worker"]
        proc.kill_group(sig)
        proc.popen.wait(timeout=30)

    def _wait_healthy(self, deadline: float) -> None:
        wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        last: object = None
        while True:
            for proc in self._procs.values():
                if not proc.alive():
                    raise HarnessError(f"{proc.name} exited during start-up:\n{proc.tail()}")
            try:
                health = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
                last = health
                if all(health.get(k, {}).get("status") == "healthy" for k in wanted) and (
                    self.executor != "CeleryExecutor" or self.worker_ready()
                ):
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise HarnessError(f"cluster not healthy in time (last: {last})\n{self.log_tail()}")
            time.sleep(2)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        # All at once (sequential graceful stops cost up to 20 s each), then SIGKILL leftovers.
        procs = [self._procs.pop(name) for name in list(self._procs)]
        trees = [(proc, proc.terminate()) for proc in procs]
        deadline = time.monotonic() + 20
        for proc, tree in trees:
            proc.finish(tree, deadline)

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST ------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            resp = httpx.post(
                f"{self.api_url}/auth/token",
                json={"username": "admin", "password": self._admin_password},
                timeout=30,
            )
            resp.raise_for_status()
            token = resp.json()["access_token"]
            self._client = httpx.Client(
                base_url=self.api_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
        return self._client

    def wait_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has serialized `dag_id`; fail on its import errors."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.client.get(f"/api/v2/dags/{dag_id}")
            if resp.status_code == 200:
                return resp.json()
            if time.monotonic() > deadline:
                errors = self.client.get("/api/v2/importErrors").json()
                raise HarnessError(
                    f"DAG {dag_id!r} not registered in {timeout}s; import errors: {errors}\n"
                    + self.log_tail(("dag-processor",))
                )
            time.sleep(2)

    def trigger(self, dag_id: str, conf: Mapping | None = None) -> str:
        """Unpause and trigger `dag_id` over REST; returns the dag_run_id."""
        self.wait_dag(dag_id)
        self.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        resp = self.client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": dict(conf or {})},
        )
        if resp.status_code != 200:
            raise HarnessError(f"trigger {dag_id} -> {resp.status_code}: {resp.text}")
        return resp.json()["dag_run_id"]

    def _run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run_state(self, dag_id: str, run_id: str) -> str:
        resp = self.client.get(self._run_path(dag_id, run_id))
        resp.raise_for_status()
        return resp.json()["state"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """Task instances of the run keyed by task_id (mapped ones as 'task_id[index]')."""
        resp = self.client.get(self._run_path(dag_id, run_id) + "/taskInstances")
        resp.raise_for_status()
        out = {}
        for ti in resp.json()["task_instances"]:
            key = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            out[key] = ti
        return out

    def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 300.0,
        states: Iterable[str] = TERMINAL_RUN_STATES,
    ) -> str:
        """Poll the run until it reaches one of `states`; returns that state."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in wanted:
                return state
            if time.monotonic() > deadline:
                tis = {k: v["state"] for k, v in self.task_instances(dag_id, run_id).items()}
                raise HarnessError(
                    f"run {run_id} still {state} after {timeout}s; tasks {tis}\n" + self.log_tail()
                )
            time.sleep(2)

    def wait_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float = 180.0,
    ) -> dict:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            ti = self.task_instances(dag_id, run_id).get(task_id)
            if ti is not None and ti["state"] in wanted:
                return ti
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"task {task_id} not in {sorted(wanted)} after {timeout}s "
                    f"(now {ti and ti['state']})\n" + self.log_tail()
                )
            time.sleep(1)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        resp = self.client.get(
            self._run_path(dag_id, run_id) + f"/taskInstances/{task_id}/logs/{try_number}",
            headers={"Accept": "application/json"},
        )
        resp.raise_for_status()
        content = resp.json().get("content", [])
        return "\n".join(
            line.get("event", json.dumps(line)) if isinstance(line, dict) else str(line)
            for line in content
        )

    # -- logs ------------------------------------------------------------------------------

    def logs(self) -> dict[str, str]:
        """Full output of every component, by component name."""
        return {path.stem: path.read_text(errors="replace") for path in self.home.glob("*.log")}

    def log_tail(self, names: Iterable[str] | None = None, lines: int = 40) -> str:
        chosen = list(names) if names is not None else [*AIRFLOW_COMPONENTS, "celery-worker"]
        return "\n".join(
            f"--- {name} ---\n{_tail(self.home / f'{name}.log', lines)}" for name in chosen
        )
