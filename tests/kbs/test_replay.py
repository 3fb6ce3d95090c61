"""The admin client against Trustee's exact answers, replayed over real loopback HTTP.

tests/kbs/replay/<version>.json records, for every call our operators make, the response a
Trustee of that version gives (status, the headers that matter, body), each with the source
file it was read from. A future drift in Trustee or in the client shows up here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coco_ai.kbs.admin_auth import BearerTokenAdminAuth
from coco_ai.kbs.client import KbsAdminClient, ProvisionedResource
from coco_ai.kbs.errors import (
    AdminAuthError,
    PluginInternalError,
    PluginNotFound,
    ResourceDeleteUnconfirmed,
    RvpsError,
)

REPLAY = Path(__file__).parent / "replay"
VERSIONS = ("0.20.0", "0.21.0", "main")
# Any well-formed JWS: the replayed Trustee does not check it (its answer is recorded).
AUTH = BearerTokenAdminAuth("e30.e30.c2ln")


def _exchanges(version: str) -> dict[str, dict]:
    name = "main.json" if version == "main" else f"v{version}.json"
    doc = json.loads((REPLAY / name).read_text())
    assert doc["trustee_version"] == version
    exchanges = {e["name"]: e for e in doc["exchanges"]}
    assert all(
        e["source"].startswith("confidential-containers/trustee@") for e in exchanges.values()
    )
    return exchanges


class _Replay(BaseHTTPRequestHandler):
    exchanges: list[dict]
    seen: list[dict]

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        for exchange in self.exchanges:
            wanted = exchange["request"]
            if (wanted["method"], wanted["path"]) == (self.command, self.path):
                self.seen.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                response = exchange["response"]
                payload = response["body"].encode()
                self.send_response(response["status"])
                for header, value in response["headers"].items():
                    self.send_header(header, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
        self.send_response(599, "not in the replay")
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # Only the status line and our recorded headers: no Server/Date noise to depend on.
        self.send_response_only(code, message)


@contextmanager
def replay(version: str, *names: str) -> Iterator[tuple[KbsAdminClient, list[dict]]]:
    recorded = _exchanges(version)
    seen: list[dict] = []
    handler = type("Handler", (_Replay,), {"exchanges": [recorded[n] for n in names], "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    client = KbsAdminClient(
        f"http://127.0.0.1:{server.server_address[1]}", auth=AUTH, trustee_version=version
    )
    try:
        yield client, seen
    finally:
        client.close()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("version", VERSIONS)
def test_resource_set_and_delete(version):
    with replay(version, "resource set", "resource delete") as (client, seen):
        assert client.set_resource("coco-ai/run-key/r1", b"\x00key") is None
        assert client.delete_resource("kbs:///coco-ai/run-key/r1") is None
    assert seen[0]["body"] == b"\x00key"
    assert seen[0]["headers"]["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("version", VERSIONS)
def test_delete_of_absent_resource_is_typed_not_hidden(version):
    with (
        replay(version, "resource delete absent") as (client, _),
        pytest.raises(ResourceDeleteUnconfirmed) as refused,
    ):
        client.delete_resource("coco-ai/run-key/absent")
    assert refused.value.path == "coco-ai/run-key/absent"
    assert refused.value.status == 401 and refused.value.detail == "Plugin internal error"
    # A caller that does not expect "maybe absent" still sees a PluginInternalError.
    assert isinstance(refused.value, PluginInternalError)


@pytest.mark.parametrize("version", VERSIONS)
def test_policies(version):
    names = ("resource policy set", "resource policy get", "attestation policy set")
    with replay(version, *names) as (client, seen):
        assert client.set_resource_policy("package policy\ndefault allow := false\n") is None
        assert client.get_resource_policy() is None  # ids only: the text cannot be read back
        assert client.set_attestation_policy("package policy\n", "default_gpu") is None
    uploaded = json.loads(seen[2]["body"])
    assert uploaded["policy_id"] == "default_gpu" and uploaded["type"] == "rego"


@pytest.mark.parametrize("version", VERSIONS)
def test_reference_values(version):
    names = ("reference value set", "reference value get", "reference value get absent")
    with replay(version, *names) as (client, _):
        assert client.set_sample_reference_value("device_svn", "2") is None
        assert client.get_reference_value("device_svn") == ["2"]
        with pytest.raises(RvpsError, match="No reference value found"):
            client.get_reference_value("absent")


@pytest.mark.parametrize("version", VERSIONS)
def test_liveness(version):
    with replay(version, "healthz", "metrics") as (client, seen):
        assert client.alive()
    # v0.20.0 is probed at /metrics, later versions at /healthz: one request either way.
    assert [s["path"] for s in seen] == ["/metrics" if version == "0.20.0" else "/healthz"]


def test_liveness_detection_falls_back_from_healthz_to_metrics():
    with replay("0.20.0", "healthz", "metrics") as (client, seen):
        client.trustee_version = None
        assert client.alive()
    assert [s["path"] for s in seen] == ["/healthz", "/metrics"]
    with replay("0.20.0", "healthz") as (client, _):  # nothing but the 404
        client.trustee_version = None
        assert not client.alive()


@pytest.mark.parametrize("version", ["0.20.0", "0.21.0"])
def test_no_provisioner_before_main(version):
    with replay(version, "provision (project shape)") as (client, _):
        with pytest.raises(PluginNotFound):
            client.provision_vm("run-0001")
        with pytest.raises(PluginNotFound):  # the project's old per-run key request
            client.provision_run_key(None, {"initdata_key": "io.coco-ai.run-id", "value": "r"})


def test_main_provisioner():
    with replay("main", "provision", "deprovision") as (client, seen):
        provisioned = client.provision_vm("run-0001")
        client.deprovision_vm(provisioned.uuid)
    recorded = _exchanges("main")["provision"]
    assert json.loads(seen[0]["body"]) == recorded["request"]["json"]
    assert provisioned == ProvisionedResource(
        uuid="30791c26-edaf-5f07-add6-2f02bbb327c8",
        resource_path="default/30791c26-edaf-5f07-add6-2f02bbb327c8/root",
    )
    assert provisioned.initdata_binding() == f"kbs+provisioner:///{provisioned.resource_path}"


def test_main_refuses_the_project_provision_shape():
    with (
        replay("main", "provision (project shape)") as (client, _),
        pytest.raises(PluginInternalError),
    ):
        client.provision_run_key(None, {"initdata_key": "io.coco-ai.run-id", "value": "r"})


@pytest.mark.parametrize(
    ("version", "name", "variant"),
    [
        ("0.20.0", "admin refused (builtin endpoint)", "AdminAuth"),
        ("0.21.0", "admin refused (builtin endpoint)", "AdminAuthAccess"),
        ("0.21.0", "admin refused (plugin path)", "AdminAuthInitialization"),
    ],
)
def test_admin_refusals_of_every_generation_are_admin_auth_errors(version, name, variant):
    with replay(version, name) as (client, _), pytest.raises(AdminAuthError) as refused:
        if "plugin" in name:
            client.delete_resource("coco-ai/run-key/refused")
        else:
            client.set_attestation_policy("package policy\n", "default_cpu")
    assert refused.value.variant == variant and refused.value.status == 401
