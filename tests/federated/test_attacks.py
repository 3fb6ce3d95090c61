"""Attacks on a real NVFlare federation on loopback (server and clients as separate processes
in secure mode, each beside its own guest-components emulator): in each, the bad party
contributes nothing and obtains no credential, and the others carry on, or the job fails when
fewer than its minimum remain."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

from coco_ai.federated.local import POC_SERVER_NAME, run_job
from coco_ai.federated.lora import GLOBAL_ADAPTER_FILE
from tests.federated.conftest import (
    ADMIN,
    JOB_CLASSES,
    PARTICIPANTS,
    POC_FEDERATION,
    SITES,
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


def start_all(poc, **install) -> dict:
    guests = {}
    for site in SITES:
        guests[site] = poc.install(site, extra_allowed_classes=JOB_CLASSES, **install)
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
    guests = start_all(poc, verify_frequency_s=VERIFY_S)
    revoked = guests["dept-c"]
    job, output = tmp_path / "job", tmp_path / "aggregator-output"
    write_lora_fedavg_job(
        job, model, data, output, rounds=3, min_clients=2, wait_time_after_min_received=2
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
    rounds = accepted_contributions(server)
    for site in ("dept-a", "dept-b"):
        assert {r for s, r in rounds if s == site} == {0, 1, 2}
    # The record of attested peers holds the others' last accepted attestation.
    for site in ("dept-a", "dept-b", POC_SERVER_NAME):
        peer = json.loads((poc.record_dir / "peers" / f"{site}.json").read_text())
        assert peer["participant_id"] == site and peer["federation"] == POC_FEDERATION
        assert peer["ear_token"].count(".") == 2 and peer["tee_key_thumbprint"]
    with np.load(output / GLOBAL_ADAPTER_FILE) as final:
        assert all(np.isfinite(final[k]).all() for k in final.files)
