"""The fault tier: real components behind a fault-injecting loopback proxy (tests/faults/proxy.py).

Every test here is marked ``faults``. A test records what the fault did through the ``matrix``
fixture; with ``COCO_AI_FAULT_RESULTS=<file>`` set, the rows are written there as JSON at the end
of the session, and ``scripts/fault_matrix.py`` renders them into docs/OPERATIONS.md.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.faults.proxy import FaultProxy
from tests.operators.conftest import Trustee, running_trustee

# the storage tier's checkpoint fixtures (a 12 MiB weights file: three 5 MiB multipart parts)
from tests.storage.conftest import ckpt_dir, kek, plain_dir  # noqa: F401

# the workloads tier's tiny model and data set (the token-expiry test runs the fine-tune)
from tests.workloads.conftest import examples, tiny_model  # noqa: F401

# One Trustee version keeps the tier short; the protocol paths are version-independent here
# (operators' tests cover each version's admin styles).
TRUSTEE_VERSION = "0.21.0"
_ROWS: list[dict] = []


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.faults)


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("COCO_AI_FAULT_RESULTS")
    if target and _ROWS:
        Path(target).write_text(json.dumps(_ROWS, indent=1, sort_keys=True) + "\n")


@dataclass
class Row:
    component: str  # "Trustee" or "object store"
    fault: str
    step: str
    outcome: str  # "recovered" or "failed closed"
    recover_s: float | None  # seconds the step took with the fault, to its success
    keys_left: str
    artefacts_left: str
    test: str
    baseline_s: float | None = None  # the same step without the fault, same run


@pytest.fixture
def matrix(request):
    """``record(...)``: one row of the fault matrix, from what this test measured."""

    def record(**fields) -> None:
        for name in ("recover_s", "baseline_s"):
            if fields.get(name) is not None:
                fields[name] = round(fields[name], 2)
        _ROWS.append(asdict(Row(test=request.node.nodeid, **fields)))

    return record


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@pytest.fixture(scope="module")
def trustee(tmp_path_factory) -> Trustee:
    from tests.code_binding import APPROVED_IMAGE

    with running_trustee(
        TRUSTEE_VERSION, tmp_path_factory, approved_images=[APPROVED_IMAGE]
    ) as running:
        yield running


@pytest.fixture
def kbs_proxy(trustee):
    """A proxy in front of the stand-in, terminating TLS with the stand-in's own certificate
    (so a client pinning the stand-in's CA accepts it) and re-encrypting to the stand-in."""
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(
        trustee.state_dir / "tls" / "server.pem", trustee.state_dir / "tls" / "server-key.pem"
    )
    upstream_tls = ssl.create_default_context(cadata=trustee.ca_pem)
    parts = urlsplit(trustee.url)
    proxy = FaultProxy((parts.hostname, parts.port), server_tls, upstream_tls)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_proxy(moto_endpoint):
    parts = urlsplit(moto_endpoint)
    proxy = FaultProxy((parts.hostname, parts.port))
    yield proxy
    proxy.close()
