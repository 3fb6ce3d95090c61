"""Attacks on a real NVFlare federation on loopback (server and clients as separate processes
in secure mode, each beside its own guest-components emulator): in each, the bad party
contributes nothing, and the others carry on, or the job fails when fewer than its minimum
remain. No credential reaches a bad party: the impostors and strangers here hold only
credentials the test gave them, and a TEE whose attestation fails obtains none from Trustee
(tests/federated/test_credentials.py, test_credentials_are_refused_once_the_attestation_fails)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pki import make_cert, pem, private_pem

from coco_ai.federated.credentials import CredentialBundle, issue_federation
from coco_ai.federated.identity import PARTICIPANT, FederationIdentity
from coco_ai.federated.local import POC_SERVER_NAME, run_job
from coco_ai.workloads.federated.job import GLOBAL_ADAPTER_FILE, JOB_CLASSES
from tests.federated.conftest import (
    ADMIN,
    PARTICIPANTS,
    POC_FEDERATION,
    SITES,
    free_port,
    write_lora_fedavg_job,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VERIFY_S = 3  # the aggregator re-validates every participant this often


def accepted_contributions(server_log: str) -> list[tuple[str, int]]:
    """(site, round) of every update the aggregator accepted, in log order."""
    return [
        (site, int(round_))
        for site, round_ in re.findall(
            r"Contribution from (\S+) ACCEPTED by the aggregator at round (\d+)", server_log
        )
    ]


def start_all(poc, gpus: dict[str, int] | None = None, **install) -> dict:
    """Every site installed and started; `gpus` gives a site its own emulator with that many GPUs
    (the session's emulators are shared by the tests: one a test alters must be its own)."""
    guests = {}
    for site in SITES:
        guests[site] = poc.install(
            site, extra_allowed_classes=JOB_CLASSES, gpus=(gpus or {}).get(site, 1), **install
        )
        poc.start(site)
    poc.wait_for(
        "every participant registered",
        lambda: all(f"client {p} registered" in poc.text(POC_SERVER_NAME) for p in PARTICIPANTS),
    )
    return guests


def test_participant_whose_attestation_is_revoked_mid_run_is_dropped(
    poc, northwind, tmp_path
) -> None:
    """dept-c's TEE stops producing the GPU evidence the policy requires once the job runs: the
    aggregator's next re-validation refuses it and drops it; it gets no later round's task, its
    later results are refused, the record says so, and dept-a and dept-b finish the job."""
    model, data, _ = northwind
    guests = start_all(poc, gpus={"dept-c": 2}, verify_frequency_s=VERIFY_S)
    revoked = guests["dept-c"]
    job, output = tmp_path / "job", tmp_path / "aggregator-output"
    write_lora_fedavg_job(
        job, model, data, output, rounds=2, min_clients=2, wait_time_after_min_received=2
    )

    def revoke_when_training_starts() -> None:
        deadline = time.monotonic() + 150
        while "Round 0 started" not in poc.text(POC_SERVER_NAME):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        # From now on this TEE attests without its GPU (fresh evidence for every token).
        revoked.emulator._kbs.devices = ()
        revoked.emulator.token_refresh_margin_s = float("inf")

    threading.Thread(target=revoke_when_training_starts, daemon=True).start()
    meta = run_job(poc.admin_kit, ADMIN, job, timeout_s=180)
    server = poc.text(POC_SERVER_NAME)
    assert meta["status"] == "FINISHED:COMPLETED", (meta, server[-4000:])

    dropped = json.loads((poc.record_dir / "dropped" / "dept-c.json").read_text())
    assert dropped["site"] == "dept-c" and dropped["reason"] and isinstance(dropped["at"], int)
    assert "dropping participant dept-c" in server
    # After the drop dept-c contributes to no round; the others contribute to every round.
    drop_at = server.index("dropping participant dept-c")
    later = accepted_contributions(server[drop_at:])
    assert "dept-c" not in {site for site, _ in later}
    assert "assigned task to client dept-c" not in server[drop_at:]
    rounds = accepted_contributions(server)
    for site in ("dept-a", "dept-b"):
        assert {r for s, r in rounds if s == site} == {0, 1}
    # The record of attested peers holds the others' last accepted attestation.
    for site in ("dept-a", "dept-b", POC_SERVER_NAME):
        peer = json.loads((poc.record_dir / "peers" / f"{site}.json").read_text())
        assert peer["participant_id"] == site and peer["federation"] == POC_FEDERATION
        assert peer["ear_token"].count(".") == 2 and peer["tee_key_thumbprint"]
    with np.load(output / GLOBAL_ADAPTER_FILE) as final:
        assert all(np.isfinite(final[k]).all() for k in final.files)


@pytest.mark.parametrize("impostor", ["attests-another-identity", "no-tee"])
def test_impostor_aggregator_is_refused_by_every_participant(poc, impostor) -> None:
    """A server process holding the aggregator's valid TLS credentials, whose CC token attests
    a participant's TEE, or which has no TEE at all (no guest components): every participant
    refuses its token when registering and stops, before any task; the impostor (which does
    not check itself) stays up with nobody to train for it."""
    if impostor == "attests-another-identity":
        poc.install(POC_SERVER_NAME, attested_as="dept-a")
    else:
        poc.install(POC_SERVER_NAME, cc_guest_url=f"http://127.0.0.1:{free_port()}")
    resources = poc.prod / POC_SERVER_NAME / "local" / "resources.json"
    config = json.loads(resources.read_text())
    manager = next(c for c in config["components"] if c["id"] == "coco_ai_cc_manager")
    manager["args"]["cc_enabled_sites"] = list(PARTICIPANTS)  # the impostor skips itself
    resources.write_text(json.dumps(config))
    poc.start(POC_SERVER_NAME)
    for site in PARTICIPANTS:
        poc.install(site)
        poc.start(site)
    poc.wait_for(
        "every participant to refuse the aggregator and stop",
        lambda: all(poc.processes[p].poll() is not None for p in PARTICIPANTS),
    )
    why = (
        "CC token presented by site 'server' attests participant dept-a"
        if impostor == "attests-another-identity"
        else "server namespace: {None}"
    )
    for site in PARTICIPANTS:
        log = poc.text(site)
        assert why in log, log[-3000:]
        assert "CC validation failed on client! Shutting down" in log
        assert "got task assignment" not in log
    assert poc.processes[POC_SERVER_NAME].poll() is None


def _rsa_self_signed(cn: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return pem(make_cert(cn, cn, key.public_key(), key, ca=False)), private_pem(key)


def test_certificates_of_another_federation_or_self_signed_are_refused(poc) -> None:
    """dept-b runs with a certificate of another federation (its own CA, the same names),
    dept-c with a self-signed one that trusts our CA: mutual TLS refuses both, so neither
    registers nor obtains anything, while dept-a joins and passes cross-site validation."""
    other = issue_federation(POC_FEDERATION, POC_SERVER_NAME, ["dept-b"])
    cert_pem, key_pem = _rsa_self_signed("dept-c")
    self_signed = CredentialBundle(
        FederationIdentity(POC_FEDERATION, PARTICIPANT, "dept-c"),
        poc.bundles["dept-c"].ca_pem,
        cert_pem,
        key_pem,
    )
    poc.install(POC_SERVER_NAME, verify_frequency_s=VERIFY_S)
    poc.install("dept-a")
    poc.install("dept-b", bundle=next(b for b in other.bundles if b.identity.role == PARTICIPANT))
    poc.install("dept-c", bundle=self_signed)
    poc.start(POC_SERVER_NAME)
    poc.wait_for("the server", lambda: "Server started" in poc.text(POC_SERVER_NAME))
    for site in PARTICIPANTS:
        poc.start(site)
    poc.wait_for(
        "dept-a registered and cross-validated, dept-b refusing the server's certificate",
        lambda: (
            "client dept-a registered" in poc.text(POC_SERVER_NAME)
            and "Cross-site validation passed" in poc.text("dept-a")
            and "CERTIFICATE_VERIFY_FAILED" in poc.text("dept-b")
        ),
    )
    # Several more of the aggregator's re-validations, each over the registered sites only.
    poc.wait_for(
        "three more re-validations by the aggregator",
        lambda: poc.text(POC_SERVER_NAME).count("Cross-site validation passed") >= 4,
    )
    server = poc.text(POC_SERVER_NAME)
    for site in ("dept-b", "dept-c"):
        assert f"client {site} registered" not in server
        assert f"Successfully registered client:{site}" not in poc.text(site)
        assert f"Received token refresh request from {site}" not in server
    assert (
        "Found 2 sites (excluding admin clients): [('server', 'server'), ('dept-a', 'dept-a')]"
        in (server)
    )


@pytest.mark.parametrize(("min_clients", "completes"), [(2, True), (3, False)])
def test_participant_killed_mid_round(poc, northwind, tmp_path, min_clients, completes) -> None:
    """dept-c's processes are killed while it trains round 0: it contributes nothing; the
    aggregator drops it at its next re-validation; with a minimum of 2 the others complete the
    job, with a minimum of 3 the job fails."""
    model, data, _ = northwind
    start_all(poc, verify_frequency_s=VERIFY_S)
    job, output = tmp_path / "job", tmp_path / "aggregator-output"
    write_lora_fedavg_job(
        job, model, data, output, rounds=2, min_clients=min_clients, wait_time_after_min_received=2
    )

    def kill_while_training() -> None:
        deadline = time.monotonic() + 150
        while "got task assignment" not in poc.text("dept-c"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        os.killpg(poc.processes["dept-c"].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_while_training, daemon=True)
    killer.start()
    meta = run_job(poc.admin_kit, ADMIN, job, timeout_s=180)
    killer.join()
    server = poc.text(POC_SERVER_NAME)
    assert poc.processes["dept-c"].poll() is not None
    assert "dept-c" not in {site for site, _ in accepted_contributions(server)}
    dropped = json.loads((poc.record_dir / "dropped" / "dept-c.json").read_text())
    assert dropped["site"] == "dept-c"
    assert "assigned task to client dept-c" not in server[server.index("dropping participant") :]
    if completes:
        assert meta["status"] == "FINISHED:COMPLETED", (meta, server[-4000:])
        rounds = accepted_contributions(server)
        for site in ("dept-a", "dept-b"):
            assert {r for s, r in rounds if s == site} == {0, 1}
        assert (output / GLOBAL_ADAPTER_FILE).is_file()
    else:
        assert meta["status"] != "FINISHED:COMPLETED", meta
        assert "fewer than the job's minimum 3" in server
