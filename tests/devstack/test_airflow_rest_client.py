"""The devstack's Airflow REST client rides out transient api-server failures on idempotent
calls only (an in-process transport stands in for the api-server)."""

from __future__ import annotations

import json

import httpx
import pytest

from coco_ai.devstack import airflow
from coco_ai.devstack.airflow import AirflowApiError, AirflowRestClient
from coco_ai.devstack.processes import ServiceError


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(airflow, "_RETRY_DELAYS_S", (0.0, 0.0, 0.0))


class FlakyApiServer:
    """Answers /auth/token, then fails the first `failures` API calls with `status` (or drops
    the connection when `status` is None), then serves a small connections table."""

    def __init__(self, failures: int, status: int | None = 500, commit_failed: bool = True):
        self.failures = failures
        self.status = status
        self.commit_failed = commit_failed
        self.connections: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        self.calls.append((request.method, request.url.path))
        if self.failures > 0:
            self.failures -= 1
            if not self.commit_failed and request.method == "POST":
                self._apply(request)
            if self.status is None:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(self.status, json={"detail": "Database error"})
        return self._apply(request)

    def _apply(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"connections": list(self.connections.values())})
        body = json.loads(request.content)
        if request.method == "POST" and body["connection_id"] in self.connections:
            return httpx.Response(409, json={"detail": "exists"})
        self.connections[body["connection_id"]] = body
        return httpx.Response(200, json=body)


def client(server: FlakyApiServer) -> AirflowRestClient:
    return AirflowRestClient(
        "http://api-server", "admin", "pw", transport=httpx.MockTransport(server)
    )


def test_put_connection_rides_out_a_database_error():
    server = FlakyApiServer(failures=2)
    client(server).put_connection("coco_ai_trustee", "coco_ai_trustee", {"url": "http://kbs"})
    assert server.calls == [("POST", "/api/v2/connections")] * 3
    assert json.loads(server.connections["coco_ai_trustee"]["extra"]) == {"url": "http://kbs"}


def test_put_connection_whose_failed_answer_hid_a_commit_patches_it():
    server = FlakyApiServer(failures=1, commit_failed=False)
    client(server).put_connection("c", "http", {"v": 1})
    assert server.calls == [
        ("POST", "/api/v2/connections"),
        ("POST", "/api/v2/connections"),
        ("PATCH", "/api/v2/connections/c"),
    ]


def test_reads_ride_out_a_dropped_connection():
    server = FlakyApiServer(failures=2, status=None)
    assert client(server).request("GET", "/api/v2/connections") == {"connections": []}
    assert len(server.calls) == 3


def test_a_post_that_is_not_idempotent_is_never_repeated():
    server = FlakyApiServer(failures=1)
    with pytest.raises(AirflowApiError, match="HTTP 500"):
        client(server).request("POST", "/api/v2/dags/d/dagRuns", json={"connection_id": "x"})
    assert server.calls == [("POST", "/api/v2/dags/d/dagRuns")]


def test_persistent_failure_is_reported_after_bounded_retries():
    server = FlakyApiServer(failures=100, status=503)
    with pytest.raises(AirflowApiError, match="HTTP 503"):
        client(server).request("GET", "/api/v2/connections")
    assert len(server.calls) == 1 + len(airflow._RETRY_DELAYS_S)


def test_unreachable_api_server_is_named():
    server = FlakyApiServer(failures=100, status=None)
    with pytest.raises(ServiceError, match="api-server at http://api-server is unreachable"):
        client(server).request("GET", "/api/v2/connections")


def test_client_errors_are_not_retried():
    server = FlakyApiServer(failures=1, status=404)
    with pytest.raises(AirflowApiError, match="HTTP 404"):
        client(server).request("GET", "/api/v2/connections")
    assert len(server.calls) == 1
