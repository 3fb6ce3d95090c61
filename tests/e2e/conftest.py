"""One real embedded stack for the whole e2e tier (session scope: it takes ~40 s to start).

Trustee stand-in (subprocess, loopback TLS, dev policies), Airflow scheduler, dag-processor,
triggerer and api-server (subprocesses, SQLite + LocalExecutor), the DAG from the repository's
dags/ folder, in local execution mode. The only test-specific setting: the guest-components
emulator is `guest_with_recorded_key.py`, which records each run's TEE private key so the
secret-hygiene test knows which bytes to look for.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from coco_ai.devstack import DAG_ID, DevStack, StackInfo, stop_stack
from coco_ai.devstack.stack import DATASET_KEY_PATH
from coco_ai.run_keys import DEFAULT_ROOT
from coco_ai.runs import RunRefs
from tests.quick_runs import approve_quick_runs

HERE = Path(__file__).resolve().parent
TERMINAL = ("success", "failed")
STRANGER = "stranger"


@dataclass
class E2EStack:
    info: StackInfo
    root: Path
    tee_key_dir: Path

    def admin(self) -> Any:
        return self.info.data_owner_admin()

    def resource(self, path: str) -> bytes | None:
        """What the data owner's Trustee holds at `path` (None when absent)."""
        from coco_ai.trustee_dev.state import StateDir

        record = StateDir(self.info.trustee_state_dir).get_resource(path)
        return record.data if record else None

    def run_key_root(self) -> bytes:
        root = self.resource(DEFAULT_ROOT.url_path())
        assert root is not None and len(root) == 32
        return root

    def dataset_key(self) -> bytes:
        key = self.resource(DATASET_KEY_PATH)
        assert key is not None and len(key) == 32
        return key

    def token(self, username: str | None = None) -> str:
        """A JWT of the admin, or of another configured user (e.g. STRANGER)."""
        username = username or self.info.username
        password = json.loads(Path(self.info.password_file).read_text())[username]
        r = httpx.post(
            f"{self.info.api_url}/auth/token",
            json={"username": username, "password": password},
            timeout=30,
        )
        assert r.status_code in (200, 201), r.text
        return r.json()["access_token"]

    def third_party_verify(self, registered_name: str) -> dict:
        """`coco-ai verify` of `registered_name@serving` as a third party holding only the owner's
        public key; its JSON verdict (the command must succeed)."""
        import subprocess

        verify = subprocess.run(
            [
                str(Path(sys.executable).with_name("coco-ai")),
                "verify",
                f"models:/{registered_name}@serving",
                "--owner-key",
                self.info.owner_public_key,
                "--registry",
                self.info.registry_uri,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        return json.loads(verify.stdout)

    def registry_versions(self) -> int:
        from coco_ai.promotion import model_versions

        name, uri = self.info.registered_model_name, self.info.registry_uri
        return len(model_versions(name, registry_uri=uri))


@pytest.fixture(scope="session")
def quick_run(e2e_stack) -> dict:
    """The DAG conf of a run that only has to end, its recipe approved (tests/quick_runs.py)."""
    return approve_quick_runs(e2e_stack.info)


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory) -> E2EStack:
    root = tmp_path_factory.mktemp("coco-demo")
    tee_keys = root / "recorded-tee-keys"
    guest = [
        sys.executable,
        str(HERE / "guest_with_recorded_key.py"),
        "--record-dir",
        str(tee_keys),
    ]
    info = DevStack(
        root,
        # a federated run holds four task slots at once (aggregator + three participants)
        parallelism=6,
        extra_env={
            "AIRFLOW__COCO_AI__LOCAL_GUEST_COMMAND": json.dumps(guest),
            # `stranger` is authenticated but has no role: Airflow authorises it for nothing
            # (the provenance view's authorisation test).
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{STRANGER}:",
        },
    ).start()
    try:
        yield E2EStack(info, root, tee_keys)
    finally:
        stop_stack(root)


@dataclass
class FollowedRun:
    run_id: str
    state: str
    tasks: dict[str, dict]
    refs: dict | None
    checkpoint_key: bytes | None


def follow_run(
    stack: E2EStack,
    run_id: str,
    *,
    timeout_s: float = 300,
    on_refs=None,
    dag_id: str = DAG_ID,
) -> FollowedRun:
    """Poll a run of `dag_id` to its end; its checkpoint key is what the data owner derives
    for it."""
    client = stack.info.client()
    refs = None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            run = client.dag_run(dag_id, run_id)
            tasks = {t["task_id"]: t for t in client.task_instances(dag_id, run_id)}
            if refs is None and (tasks.get("key_release") or {}).get("state") == "success":
                refs = client.xcom(dag_id, run_id, "key_release")
                if on_refs:
                    on_refs(refs)
            if run["state"] in TERMINAL:
                # the run is final once its teardown (revocation) is final too
                revoke = (tasks.get("revoke_keys") or {}).get("state")
                if revoke in ("success", "failed", "skipped", "upstream_failed"):
                    break
            assert time.monotonic() < deadline, f"run {run_id} still {run['state']}: {tasks}"
            time.sleep(0.5)
    finally:
        client.close()
    key = stack.info.data_owner_run_key(RunRefs.from_xcom(refs).run_id) if refs else None
    return FollowedRun(run_id, run["state"], tasks, refs, key)


# ---- secret hygiene: where Airflow keeps anything, searched for secrets -----------------------


def secret_forms(secret: bytes) -> list[bytes]:
    """The ways `secret` could be written down: raw, hex, base64 (also cut short, as padding-free
    base64 inside a longer string ends differently)."""
    forms = [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]
    return [*forms, base64.b64encode(secret)[:-4], base64.urlsafe_b64encode(secret)[:-4]]


def find_secrets(haystack: bytes, secrets: dict[str, bytes]) -> list[str]:
    """The names of the `secrets` found in `haystack`, in any of their forms."""
    return [
        name for name, value in secrets.items() for form in secret_forms(value) if form in haystack
    ]


def metadata_db_findings(stack: E2EStack, secrets: dict[str, bytes]) -> tuple[list[str], int]:
    """(where each secret was found, rows read): every row of every table of Airflow's metadata
    DB, then the raw DB files, write-ahead log included."""
    db = Path(stack.info.root) / "airflow" / "airflow.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert {"xcom", "rendered_task_instance_fields", "task_instance", "connection"} <= set(tables)
    found, rows_seen = [], 0
    for table in tables:
        for row in con.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from the DB
            rows_seen += 1
            blob = b"\x00".join(
                v if isinstance(v, bytes) else str(v).encode() for v in row if v is not None
            )
            found += [f"{table}: {name}" for name in find_secrets(blob, secrets)]
    con.close()
    for path in db.parent.glob("airflow.db*"):
        found += [f"{path.name}: {n}" for n in find_secrets(path.read_bytes(), secrets)]
    return found, rows_seen


def log_files(stack: E2EStack) -> tuple[list[Path], list[Path]]:
    """(Airflow task logs, the stack's service logs)."""
    root = Path(stack.info.root)
    return list((root / "airflow" / "logs").rglob("*.log")), list((root / "logs").glob("*.log"))


@pytest.fixture(scope="session")
def follow(e2e_stack):
    """`follow(run_id, timeout_s=..., on_refs=...)` on the session's stack."""
    return lambda run_id, **kwargs: follow_run(e2e_stack, run_id, **kwargs)


@pytest.fixture(scope="module")
def v021_stack(tmp_path_factory) -> E2EStack:
    """A second stack whose stand-in emulates Trustee v0.21.0 (the session's emulates v0.20.0)."""
    root = tmp_path_factory.mktemp("coco-v021")
    info = DevStack(root, trustee_version="0.21.0").start()
    try:
        yield E2EStack(info, root, root / "no-recorded-keys")
    finally:
        stop_stack(root)


@pytest.fixture(scope="module")
def follow_v021(v021_stack):
    return lambda run_id, **kwargs: follow_run(v021_stack, run_id, **kwargs)


# ---- browser tier: Debian's Chromium driven by Playwright --------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def signed_in_page(e2e_stack, browser):
    """`signed_in_page(height)`: a new page logged in to the UI as the stack's admin."""

    def open_page(height: int = 1000):
        info = e2e_stack.info
        page = browser.new_page(viewport={"width": 1400, "height": height})
        page.set_default_timeout(60_000)
        page.goto(f"{info.api_url}/auth/login")
        page.get_by_label("Username").fill(info.username)
        page.get_by_label("Password").fill(info.password())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r".*/$"))
        return page

    return open_page
