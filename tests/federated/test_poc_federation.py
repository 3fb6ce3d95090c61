"""A real NVFlare federation on loopback: the server (aggregator) and three clients
(participants) as separate processes in NVFlare's secure mode, each with the mTLS credentials
Trustee released to its attested guest and the Trustee CC authorizer + identity-bound CC manager
checking every peer at registration and at each cross-site validation."""

from __future__ import annotations

import time

import pytest

from coco_ai.federated.authorizer import NAMESPACE
from coco_ai.federated.local import POC_SERVER_NAME
from tests.federated.conftest import PARTICIPANTS, SITES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_attested_parties_register_and_pass_cross_site_validation(poc) -> None:
    started = time.monotonic()
    for site in SITES:
        poc.install(site)
        poc.start(site)
    poc.wait_for(
        "every participant registered",
        lambda: all(f"client {p} registered" in poc.text(POC_SERVER_NAME) for p in PARTICIPANTS),
    )
    poc.wait_for(
        "a passed cross-site validation at every site",
        lambda: all("Cross-site validation passed" in poc.text(s) for s in SITES),
    )
    elapsed = time.monotonic() - started
    server = poc.text(POC_SERVER_NAME)
    for participant in PARTICIPANTS:
        # The aggregator verified each participant's token under its own site name, and each
        # participant verified the aggregator's at registration (mutual).
        assert f"CC - verified ['{participant}.{NAMESPACE}']; refused []" in server
        assert f"CC - verified ['server.{NAMESPACE}']; refused []" in poc.text(participant)
    assert "refused [" not in server.replace("refused []", "")
    print(f"federation up and cross-validated in {elapsed:.1f} s")


def test_attested_tee_of_another_participant_is_refused_at_registration(poc) -> None:
    """dept-b's TLS credentials in a process whose attestation names dept-a: NVFlare's mutual
    TLS accepts the certificate, the identity-bound CC manager refuses the registration, and
    the attested participants carry on without it."""
    poc.install(POC_SERVER_NAME)
    poc.install("dept-a")
    poc.install("dept-b", attested_as="dept-a")
    for site in (POC_SERVER_NAME, "dept-a", "dept-b"):
        poc.start(site)
    poc.wait_for(
        "dept-a registered and dept-b refused",
        lambda: (
            "client dept-a registered" in poc.text(POC_SERVER_NAME)
            and "CC token presented by site 'dept-b' attests participant dept-a"
            in poc.text(POC_SERVER_NAME)
        ),
    )
    poc.wait_for(
        "a passed cross-site validation at the server",
        lambda: "Cross-site validation passed" in poc.text(POC_SERVER_NAME),
    )
    server = poc.text(POC_SERVER_NAME)
    assert "client registration refused: Participant dept-b" in server
    assert "client dept-b registered" not in server
    assert "Shutting down site server" not in server
    assert poc.processes[POC_SERVER_NAME].poll() is None  # the aggregator serves the others
