"""Route behaviour of the emulator that needs no broker: loopback gate, evidence, info, errors.

The loopback gate is tested at the ASGI level (Starlette's TestClient sets the peer address the
app sees): a second loopback address such as 127.0.0.2 is still loopback, so no real socket on
this machine can present a non-loopback peer. The other routes run over real HTTP.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.guest.emulator import (
    EmulatorConfigError,
    GuestComponentsEmulator,
    RunningServer,
    bind_loopback,
    serve_in_thread,
)
from coco_ai.guest.initdata import build_initdata
from coco_ai.net import is_loopback

# Nothing listens here: these tests never get an answer from a broker.
UNUSED_KBS = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def emulator() -> GuestComponentsEmulator:
    init = build_initdata(UNUSED_KBS, None, {"io.coco-ai.run-id": "run-routes"})
    return GuestComponentsEmulator(init, gpus=2, handshake_retries=1, retry_delay=0)


@pytest.fixture(scope="module")
def served(emulator: GuestComponentsEmulator) -> Iterator[RunningServer]:
    server = serve_in_thread(emulator)
    yield server
    server.stop()


@pytest.mark.parametrize("peer", ["10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1"])
@pytest.mark.parametrize(
    "path",
    ["/info", "/aa/token?token_type=kbs", "/cdh/resource/a/b/c", "/aa/evidence?runtime_data=x"],
)
def test_non_loopback_peer_gets_403(
    emulator: GuestComponentsEmulator, peer: str, path: str
) -> None:
    with TestClient(emulator.app, client=(peer, 40000)) as http:
        resp = http.get(path)
    assert resp.status_code == 403 and resp.text == "Forbidden"


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers_are_served(emulator: GuestComponentsEmulator, peer: str) -> None:
    with TestClient(emulator.app, client=(peer, 40000)) as http:
        resp = http.get("/info")
    assert resp.status_code == 200
    body = resp.json()
    assert body["tee"] == "sample" and body["additional_tees"] == ["sampledevice"]
    assert body["feature"] == "all" and body["version"]


def test_loopback_classification() -> None:
    assert is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback(None) and not is_loopback("host")


def test_refuses_non_loopback_bind() -> None:
    with pytest.raises(EmulatorConfigError, match="loopback"):
        bind_loopback("0.0.0.0", 0)


@pytest.mark.timeout(60)
def test_evidence_over_http(emulator: GuestComponentsEmulator, served: RunningServer) -> None:
    with httpx.Client(base_url=served.url, trust_env=False) as http:
        raw = http.get("/aa/evidence", params={"runtime_data": "hello"})
        assert raw.status_code == 200
        assert raw.headers["content-type"] == "application/octet-stream"
        ev = json.loads(raw.content)
        assert base64.b64decode(ev["report_data"]) == b"hello"
        assert base64.b64decode(ev["init_data"]) == emulator.initdata.digest()

        too_long = http.get("/aa/evidence", params={"runtime_data": "x" * 65})
        assert too_long.status_code == 500 and "64 bytes" in too_long.text
        bad = http.get("/aa/evidence", params={"runtime_data": "!!", "encoding": "base64"})
        assert bad.status_code == 400
        hex_enc = http.get("/aa/evidence", params={"runtime_data": "a", "encoding": "hex"})
        assert hex_enc.status_code == 400
        assert http.get("/aa/evidence").status_code == 400

        dev = http.get("/aa/additional-evidence", params={"runtime_data": "d"}).json()
        assert len(dev["sampledevice"]["device_evidence_list"]) == 2

    with GuestClient(served.url) as client:
        data = bytes(range(64))
        assert base64.b64decode(client.get_evidence(data)["report_data"]) == data
        with pytest.raises(GuestError, match="at most 64"):
            client.get_evidence(b"x" * 65)
        assert client.info()["additional_tees"] == ["sampledevice"]


@pytest.mark.timeout(60)
def test_route_errors_match_api_server_rest(served: RunningServer) -> None:
    with httpx.Client(base_url=served.url, trust_env=False) as http:
        assert http.get("/aa/token").status_code == 400
        assert http.get("/aa/token", params={"token_type": "coco_as"}).status_code == 500
        assert http.post("/info").status_code == 405
        assert http.get("/nope").status_code == 404
        assert http.post("/aa/evidence?runtime_data=x").status_code == 404
        # Encoded traversal is decoded by the router and refused before any broker call.
        traversal = http.get("/cdh/resource/default/%2E%2E/key")
        assert traversal.status_code == 500 and "relative-path" in traversal.text
    with GuestClient(served.url) as client:
        # The broker is unreachable: a CDH failure is a 500 carrying the error text.
        with pytest.raises(GuestError) as err:
            client.get_resource("kbs:///default/key/one")
        assert err.value.status == 500 and err.value.message
        with pytest.raises(GuestError, match="bad resource URI"):
            client.get_resource("kbs:///default/../one")


def test_client_reports_unreachable_server() -> None:
    sock = bind_loopback("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    with (
        GuestClient(f"http://127.0.0.1:{port}", timeout=5) as client,
        pytest.raises(GuestError, match="unreachable"),
    ):
        client.info()


def test_emulator_config_errors() -> None:
    init = build_initdata(UNUSED_KBS, None, {})
    with pytest.raises(EmulatorConfigError, match="gpus"):
        GuestComponentsEmulator(init, gpus=-1)
