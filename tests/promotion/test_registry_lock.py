"""The promotion lock of a registry serialises promotions across processes (what makes the
serving alias move monotonically when runs promote concurrently)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from coco_ai.promotion.registry import registry_lock, sqlite_registry_uri

pytestmark = pytest.mark.timeout(60)

_TAKE_LOCK = """
import sys, time
from coco_ai.promotion.registry import registry_lock
with registry_lock(sys.argv[1]):
    print(f"{time.time():.6f}", flush=True)
"""


def _contender(uri: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _TAKE_LOCK, uri], stdout=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("kind", ["sqlite", "server"])
def test_a_second_process_waits_for_the_lock(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("COCO_AI_HOME", str(tmp_path / "home"))
    uri = (
        sqlite_registry_uri(tmp_path / "mlflow.db")
        if kind == "sqlite"
        else "http://127.0.0.1:5000"  # never contacted: the lock is a local file
    )
    with registry_lock(uri):
        contender = _contender(uri)
        time.sleep(1.5)  # long enough for an interpreter start and the lock attempt
        assert contender.poll() is None, "the second process got the lock while it was held"
        released_at = time.time()
    out, _ = contender.communicate(timeout=30)
    assert contender.returncode == 0
    assert float(out) >= released_at


def test_different_registries_do_not_block_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("COCO_AI_HOME", str(tmp_path / "home"))
    with registry_lock(sqlite_registry_uri(tmp_path / "a.db")):
        contender = _contender(sqlite_registry_uri(tmp_path / "b.db"))
        out, _ = contender.communicate(timeout=30)
    assert contender.returncode == 0 and float(out) > 0
