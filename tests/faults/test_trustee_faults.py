"""Trustee unavailable, slow or answering 5xx at each step that talks to it: the attestation
gate, key release (the grant write), the workload's key fetch (guest client → emulator → KBS)
and revocation. The stand-in is real (loopback TLS); so is the proxy that breaks it."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk import DAG

from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.guest.emulator import GuestComponentsEmulator, serve_in_thread
from coco_ai.guest.initdata import RUN_ID_KEY, build_initdata
from coco_ai.kbs.errors import KbsUnavailable, UnexpectedResponse
from coco_ai.run_keys import grant_path
from coco_ai_airflow._settings import coco_run_id
from coco_ai_airflow.attestation import AttestationGateError, AttestationGateOperator
from coco_ai_airflow.keys import KeyReleaseOperator, KeyRevokeOperator
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE
from tests.faults.conftest import Stopwatch

pytestmark = pytest.mark.timeout(120)

IMAGE = "registry.example/coco-ai/finetune@sha256:" + "ab" * 32
DATASET_KEY = "kbs:///coco-ai/dataset-key/faults"
# Short and bounded: 3 attempts, 50 ms then 100 ms apart, 1 s per request.
RETRIES = {"attempts": 3, "retry_delay_s": 0.05, "timeout_s": 1.0}


def _resource_post(method: str, target: str) -> bool:
    return method == "POST" and "/resource/" in target


def _resource_delete(method: str, target: str) -> bool:
    return method == "DELETE"


def _resource_get(method: str, target: str) -> bool:
    return method == "GET" and "/resource/" in target


@pytest.fixture
def conn(trustee, kbs_proxy, monkeypatch):
    """Airflow's `trustee` connection, pointing at the proxy."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(kbs_url=kbs_proxy.url, **RETRIES)
    )
    return kbs_proxy


@pytest.fixture
def inputs(tmp_path):
    dataset = tmp_path / "support-v1.enc"
    dataset.write_bytes(b"ciphertext of the data set")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return {
        "dataset": {"uri": f"file://{dataset}", "key_uri": DATASET_KEY},
        "base_model": {"uri": str(model)},
    }


def _dag():
    return DAG("fault_pipeline", schedule=None, start_date=dt.datetime(2026, 1, 1))


def _gate() -> AttestationGateOperator:
    with _dag():
        return AttestationGateOperator(
            task_id="attestation_gate", policy_set="dev", approved_images=[APPROVED_IMAGE]
        )


def _key_release(inputs) -> KeyReleaseOperator:
    with _dag():
        return KeyReleaseOperator(
            task_id="key_release",
            workload="finetune",
            inputs=inputs,
            image=IMAGE,
            staging_root="file:///tmp/fault-staging",
        )


def _revoke() -> KeyRevokeOperator:
    with _dag():
        return KeyRevokeOperator(task_id="revoke_keys")


def _context(run: str) -> dict:
    return {"run_id": run, "triggering_asset_events": {}}


def _grant(trustee, run: str) -> bytes | None:
    return trustee.resource(grant_path(coco_run_id("fault_pipeline", run)).url_path())


# -- attestation gate ------------------------------------------------------------------------


def test_gate_rides_out_5xx(conn, matrix):
    conn.fail(2)
    clock = Stopwatch()
    assert _gate().execute(_context("gate-5xx"))["kbs_url"] == conn.url
    matrix(
        component="Trustee",
        fault="5xx ×2",
        step="attestation gate",
        outcome="recovered",
        recover_s=clock.elapsed(),
        keys_left="none",
        artefacts_left="none",
    )


def test_gate_with_trustee_down_fails_naming_the_kbs(conn, matrix):
    conn.down()
    with pytest.raises(AttestationGateError, match=r"KBS https://127\.0\.0\.1:\d+ is not alive"):
        _gate().execute(_context("gate-down"))
    matrix(
        component="Trustee",
        fault="down (connection refused)",
        step="attestation gate",
        outcome="failed closed",
        recover_s=None,
        keys_left="none (nothing granted before the gate)",
        artefacts_left="none",
    )


def test_gate_answers_through_a_slow_trustee(conn, matrix):
    conn.delay = 0.4  # below the 1 s request timeout
    clock = Stopwatch()
    _gate().execute(_context("gate-slow"))
    elapsed = clock.elapsed()
    assert elapsed >= 0.4
    matrix(
        component="Trustee",
        fault="slow (0.4 s per request, under the timeout)",
        step="attestation gate",
        outcome="recovered",
        recover_s=elapsed,
        keys_left="none",
        artefacts_left="none",
    )


# -- key release (the grant write) -----------------------------------------------------------


def test_key_release_retries_5xx_and_grants_once(trustee, conn, inputs, matrix):
    conn.fail(2, match=_resource_post)
    clock = Stopwatch()
    refs = _key_release(inputs).execute(_context("release-5xx"))
    elapsed = clock.elapsed()
    assert _grant(trustee, "release-5xx") is not None
    assert [s.fault for s in conn.seen if _resource_post(s.method, s.target)] == [
        "fail",
        "fail",
        "",
    ]
    _revoke().execute(_context("release-5xx"))
    assert _grant(trustee, "release-5xx") is None
    matrix(
        component="Trustee",
        fault="5xx ×2",
        step="key release (grant write)",
        outcome="recovered",
        recover_s=elapsed,
        keys_left="none after revoke_keys",
        artefacts_left="none",
    )
    assert refs["run_id"] == coco_run_id("fault_pipeline", "release-5xx")


def test_key_release_with_trustee_down_fails_naming_it_and_grants_nothing(
    trustee, conn, inputs, matrix
):
    conn.down()
    with pytest.raises(KbsUnavailable, match=r"Trustee KBS https://127\.0\.0\.1:\d+.*3 attempt"):
        _key_release(inputs).execute(_context("release-down"))
    assert _grant(trustee, "release-down") is None
    matrix(
        component="Trustee",
        fault="down (connection refused)",
        step="key release (grant write)",
        outcome="failed closed",
        recover_s=None,
        keys_left="none (no grant written)",
        artefacts_left="none",
    )


def test_key_release_with_persistent_5xx_fails_naming_trustee(trustee, conn, inputs, matrix):
    conn.fail(10, status=502, match=_resource_post)
    with pytest.raises(UnexpectedResponse, match=r"Trustee KBS .*3 attempt.*HTTP 502"):
        _key_release(inputs).execute(_context("release-502"))
    assert _grant(trustee, "release-502") is None
    matrix(
        component="Trustee",
        fault="5xx on every request",
        step="key release (grant write)",
        outcome="failed closed",
        recover_s=None,
        keys_left="none (no grant written)",
        artefacts_left="none",
    )


def test_key_release_past_the_timeout_fails_and_revoke_removes_a_late_grant(
    trustee, conn, inputs, matrix
):
    """A Trustee slower than the client's timeout may still act after the client gave up: the
    run fails, and the grant that lands late is what revoke_keys (all_done) removes."""
    conn.delay = 1.5  # above the 1 s request timeout
    with pytest.raises(KbsUnavailable, match="timed out"):
        _key_release(inputs).execute(_context("release-slow"))
    conn.clear()
    conn.wait_idle()  # every delayed write has reached Trustee (or failed) by now
    late = _grant(trustee, "release-slow") is not None
    clock = Stopwatch()
    _revoke().execute(_context("release-slow"))
    assert _grant(trustee, "release-slow") is None
    matrix(
        component="Trustee",
        fault="slow (1.5 s per request, over the 1 s timeout)",
        step="key release (grant write)",
        outcome="failed closed",
        recover_s=None,
        keys_left=(
            "grant written after the client timed out; removed by revoke_keys"
            f" in {clock.elapsed():.2f} s"
            if late
            else "none"
        ),
        artefacts_left="none",
    )


# -- revocation ------------------------------------------------------------------------------


def _granted(trustee, conn, inputs, run: str) -> None:
    _key_release(inputs).execute(_context(run))
    assert _grant(trustee, run) is not None
    conn.seen.clear()


def test_revoke_rides_out_5xx(trustee, conn, inputs, matrix):
    _granted(trustee, conn, inputs, "revoke-5xx")
    conn.fail(2)
    clock = Stopwatch()
    _revoke().execute(_context("revoke-5xx"))
    assert _grant(trustee, "revoke-5xx") is None
    matrix(
        component="Trustee",
        fault="5xx ×2",
        step="revoke",
        outcome="recovered",
        recover_s=clock.elapsed(),
        keys_left="none",
        artefacts_left="none",
    )


def test_revoke_whose_delete_answer_is_lost_repeats_and_completes(trustee, conn, inputs, matrix):
    """Trustee deleted the grant but the answer never arrived: a bare DELETE retry would find
    nothing (Trustee's PluginInternalError); revoke repeats tombstone + delete instead."""
    _granted(trustee, conn, inputs, "revoke-cut")
    conn.cut_response(1, match=_resource_delete)
    clock = Stopwatch()
    _revoke().execute(_context("revoke-cut"))
    assert _grant(trustee, "revoke-cut") is None
    assert [s.method for s in conn.seen] == ["POST", "DELETE", "POST", "DELETE"]
    matrix(
        component="Trustee",
        fault="connection cut mid-answer (Trustee acted)",
        step="revoke",
        outcome="recovered",
        recover_s=clock.elapsed(),
        keys_left="none",
        artefacts_left="none",
    )


def test_revoke_with_trustee_down_fails_then_a_later_revoke_completes(
    trustee, conn, inputs, matrix
):
    _granted(trustee, conn, inputs, "revoke-down")
    conn.down()
    with pytest.raises(KbsUnavailable, match=r"Trustee KBS https://127\.0\.0\.1:\d+"):
        _revoke().execute(_context("revoke-down"))
    assert _grant(trustee, "revoke-down") is not None  # still there: nothing pretends otherwise
    clock = Stopwatch()
    conn.up()
    # What the task's Airflow retry (or a cleanup run naming the run) does once Trustee is back.
    _revoke().execute(_context("revoke-down"))
    assert _grant(trustee, "revoke-down") is None
    matrix(
        component="Trustee",
        fault="down (connection refused)",
        step="revoke",
        outcome="failed closed; completed by the task's retry",
        recover_s=clock.elapsed(),
        keys_left="the run's grant, until revoke_keys is retried",
        artefacts_left="none",
    )


# -- the workload's key fetch (guest client → emulator → KBS) --------------------------------


@pytest.fixture
def guest(trustee, kbs_proxy):
    """An emulated pod whose initdata points at the proxy, and the workload's client."""
    with trustee.admin() as admin:
        admin.set_resource(DATASET_KEY, b"k" * 32)
    initdata = build_initdata(
        kbs_proxy.url,
        trustee.ca_pem,
        {RUN_ID_KEY: "fetch"},
        image=APPROVED_IMAGE,
        module=APPROVED_MODULE,
    )
    emulator = GuestComponentsEmulator(initdata, gpus=1, handshake_retries=3, retry_delay=0.05)
    server = serve_in_thread(emulator)
    client = GuestClient(server.url, timeout=30)
    yield client
    client.close()
    server.stop()


def test_key_fetch_rides_out_5xx(guest, kbs_proxy, matrix):
    assert guest.get_resource(DATASET_KEY) == b"k" * 32  # attested, session open
    kbs_proxy.fail(2, match=_resource_get)
    clock = Stopwatch()
    assert guest.get_resource(DATASET_KEY) == b"k" * 32
    matrix(
        component="Trustee",
        fault="5xx ×2",
        step="workload key fetch",
        outcome="recovered",
        recover_s=clock.elapsed(),
        keys_left="none (the grant is revoked as usual)",
        artefacts_left="none",
    )


@pytest.mark.parametrize("when", ["before attestation", "after attestation"])
def test_key_fetch_with_trustee_down_fails_naming_the_kbs(guest, kbs_proxy, matrix, when):
    if when == "after attestation":
        assert guest.get_resource(DATASET_KEY) == b"k" * 32
    kbs_proxy.down()
    with pytest.raises(GuestError, match=r"KBS https://127\.0\.0\.1:\d+.*3 attempt") as err:
        guest.get_resource(DATASET_KEY)
    assert not err.value.policy_denied
    kbs_proxy.up()
    clock = Stopwatch()
    assert guest.get_resource(DATASET_KEY) == b"k" * 32  # the same pod recovers once it is back
    matrix(
        component="Trustee",
        fault=f"down ({when})",
        step="workload key fetch",
        outcome="failed closed; next fetch recovers",
        recover_s=clock.elapsed(),
        keys_left="none released while down",
        artefacts_left="none",
    )


def test_key_fetch_through_a_slow_trustee(guest, kbs_proxy, matrix):
    kbs_proxy.delay = 0.3
    clock = Stopwatch()
    assert guest.get_resource(DATASET_KEY) == b"k" * 32
    elapsed = clock.elapsed()
    assert elapsed >= 0.6  # auth, attest and the GET each waited
    matrix(
        component="Trustee",
        fault="slow (0.3 s per request)",
        step="workload key fetch",
        outcome="recovered",
        recover_s=elapsed,
        keys_left="none",
        artefacts_left="none",
    )


# -- execution_timeout in the steps that talk to Trustee ----------------------------------------


def _timed_out(operator, context: dict, monkeypatch) -> None:
    """``operator.execute`` whose deadline passes while its first Trustee request is in flight:
    Airflow's own timeout (SIGALRM raising AirflowTaskTimeout, then ``on_kill``, as the Task
    SDK's runner applies ``execution_timeout``), armed as that request starts so that where it
    fires does not depend on the box's load. It must surface as a timeout."""
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    from coco_ai.kbs import client

    send = client._Http.request

    def deadline_mid_request(self, *args, **kwargs):
        monkeypatch.setattr(client._Http, "request", send)  # the first request only
        with timeout(0.3):
            return send(self, *args, **kwargs)

    monkeypatch.setattr(client._Http, "request", deadline_mid_request)
    with pytest.raises(AirflowTaskTimeout):
        operator.execute(context)
    monkeypatch.setattr(client._Http, "request", send)
    operator.on_kill()


@pytest.mark.parametrize("step", ["attestation gate", "key release", "revoke"])
def test_execution_timeout_in_a_trustee_step_and_its_retry(
    trustee, conn, inputs, matrix, step, monkeypatch
):
    """Trustee answers slowly (0.8 s a request, under the client's 1 s timeout) and the task's
    deadline passes mid-request: the timeout is not swallowed by the client's retries, and
    the step's retry (Trustee fast again) completes it; nothing is left granted."""
    run = f"timeout-{step.split()[0]}"
    make = {"attestation gate": _gate, "key release": lambda: _key_release(inputs)}
    if step == "revoke":
        _granted(trustee, conn, inputs, run)
    conn.delay = 0.8
    operator = _revoke() if step == "revoke" else make[step]()
    _timed_out(operator, _context(run), monkeypatch)
    conn.clear()
    conn.wait_idle()  # a request the timeout abandoned has reached Trustee (or failed) by now
    clock = Stopwatch()
    retry = _revoke() if step == "revoke" else make[step]()
    retry.execute(_context(run))
    elapsed = clock.elapsed()
    if step == "key release":
        assert _grant(trustee, run) is not None
        _revoke().execute(_context(run))  # what revoke_keys (all_done) does at the end
    assert _grant(trustee, run) is None
    matrix(
        component="Airflow",
        fault="execution_timeout passed mid-request (Trustee slow: 0.8 s a request)",
        step=step if step != "revoke" else "revoke_keys",
        outcome="failed closed (AirflowTaskTimeout, on_kill); the retry completes the step",
        recover_s=elapsed,
        keys_left="none (grant revoked)" if step != "attestation gate" else "none",
        artefacts_left="none",
    )
