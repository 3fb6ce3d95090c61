"""`coco-ai demo`'s REST follower rides out an api-server outage and names the api-server when it
stays down. A small loopback HTTP server plays the api-server (the real one restarted mid-run:
tests/e2e/test_airflow_faults.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coco_ai.devstack import airflow, demo
from coco_ai.devstack.processes import ServiceError
from coco_ai.devstack.stack import StackInfo

RUN_ID = "manual__outage"


class ApiServer:
    """Answers the token and the trigger; then `unavailable` polls of the run get 503 before it
    reports the run `success` (no task instances, no XCom)."""

    def __init__(self, unavailable: int) -> None:
        self.unavailable = unavailable
        self.polls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/auth/token":
                    self._answer(201, {"access_token": "t"})
                else:
                    self._answer(200, {"dag_run_id": RUN_ID})

            def do_GET(self) -> None:
                if self.path.endswith(f"/dagRuns/{RUN_ID}"):
                    server.polls += 1
                    if server.polls <= server.unavailable:
                        self._answer(503, {"detail": "starting"})
                    else:
                        self._answer(200, {"state": "success"})
                elif self.path.endswith("/taskInstances"):
                    self._answer(200, {"task_instances": []})
                else:
                    self._answer(404, {"detail": "no such XCom"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(airflow, "_RETRY_DELAYS_S", (0.0,))  # one retry per call, at once


def _info(url: str, tmp_path) -> StackInfo:
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": "pw"}))
    return StackInfo(
        root=str(tmp_path),
        api_url=url,
        username="admin",
        password_file=str(passwords),
        **dict.fromkeys(
            (
                "trustee_url",
                "trustee_state_dir",
                "dataset_uri",
                "dataset_key_uri",
                "base_model",
                "model",
                "registry_uri",
                "registered_model_name",
                "checkpoint_store_uri",
                "staging_uri",
            ),
            "",
        ),
    )


def test_the_follower_rides_out_an_api_server_answering_503(tmp_path):
    server = ApiServer(unavailable=5)  # more than one call's own retries
    messages: list[str] = []
    try:
        summary = demo.run_pipeline(_info(server.url, tmp_path), progress=messages.append)
    finally:
        server.stop()
    assert summary["state"] == "success"
    assert server.polls == 6
    assert any("does not answer" in m and "HTTP 503" in m for m in messages), messages
    assert any("answers again" in m for m in messages), messages


def test_an_api_server_that_stays_down_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "API_OUTAGE_S", 0.5)
    server = ApiServer(unavailable=0)

    def stop_once_triggered(message: str) -> None:
        if "triggered" in message:
            server.stop()  # connections are refused from now on

    with pytest.raises(ServiceError) as failure:
        demo.run_pipeline(_info(server.url, tmp_path), progress=stop_once_triggered)
    message = str(failure.value)
    assert f"the Airflow api-server at {server.url} has not answered for" in message
    assert RUN_ID in message and "may still go on" in message
    assert "unreachable" in message  # the client's own error, naming why


def test_a_trigger_whose_answer_was_lost_is_repeated_and_finds_its_run():
    """The api-server committed the run and then failed to answer (500): the repeat gets 409
    for the run id the client chose, and returns that run; no second run is created."""
    import httpx

    from coco_ai.devstack.airflow import AirflowRestClient

    runs: dict[str, dict] = {}
    posts = []

    def api_server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        if request.method == "POST":
            body = json.loads(request.content)
            posts.append(body["dag_run_id"])
            if body["dag_run_id"] in runs:
                return httpx.Response(409, json={"detail": "exists"})
            runs[body["dag_run_id"]] = {"dag_run_id": body["dag_run_id"], "state": "queued"}
            if len(posts) == 1:
                return httpx.Response(500, json={"detail": "Database error"})
            return httpx.Response(200, json=runs[body["dag_run_id"]])
        run_id = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json=runs[run_id])

    client = AirflowRestClient(
        "http://api-server", "admin", "pw", transport=httpx.MockTransport(api_server)
    )
    run = client.trigger("d", {"epochs": 1})
    assert len(runs) == 1 and run == next(iter(runs.values()))
    assert posts == [run["dag_run_id"]] * 2
    assert run["dag_run_id"].startswith("manual__")
