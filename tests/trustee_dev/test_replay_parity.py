"""The stand-in answers the recorded Trustee exchanges (tests/kbs/replay) as Trustee does.

Status, Content-Type and body are compared for every exchange whose body is fixed by Trustee's
code; the metrics text and the reference value (deployment data) are compared by status and
headers only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
from coco_ai.kbs.versions import TRUSTEE_VERSIONS
from tests.trustee_dev.conftest import make_admin_keys, start_stand, stop_stand

REPLAY = Path(__file__).parents[1] / "kbs" / "replay"
BODY_IS_DATA = {"metrics", "reference value get"}
PREPARE = {
    "resource delete": ("POST", "/kbs/v0/resource/coco-ai/run-key/r1"),
}


def _exchanges(version: str) -> list[dict]:
    name = "main.json" if version == "main" else f"v{version}.json"
    return json.loads((REPLAY / name).read_text())["exchanges"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("version", TRUSTEE_VERSIONS)
def test_stand_in_answers_like_the_recording(version, tmp_path, admin_keys):
    stand = start_stand(tmp_path, admin_keys, trustee_version=version)
    intruder = SelfSignedAdminAuth(make_admin_keys().private_pem).authorization()
    bodies = {
        "resource set": b"k",
        "resource policy set": json.dumps({"policy": "cGFja2FnZSBwb2xpY3kK"}).encode(),
        "attestation policy set": json.dumps(
            {"type": "rego", "policy_id": "default_cpu", "policy": "cGFja2FnZSBwb2xpY3kK"}
        ).encode(),
        "reference value set": json.dumps(
            {"version": "0.1.0", "type": "sample", "payload": "eyJkZXZpY2Vfc3ZuIjpbIjIiXX0="}
        ).encode(),
        "provision (project shape)": json.dumps(
            {"bind": {"initdata_key": "io.coco-ai.run-id", "value": "r"}}
        ).encode(),
    }
    try:
        with stand.http() as http:
            for exchange in _exchanges(version):
                name, request, recorded = (
                    exchange["name"],
                    exchange["request"],
                    exchange["response"],
                )
                auth = intruder if name.startswith("admin refused") else stand.auth_header()
                headers = {"Authorization": auth}
                if name in PREPARE:
                    method, path = PREPARE[name]
                    http.request(method, path, content=b"k", headers=headers)
                body = bodies.get(name)
                if "json" in request:
                    body = json.dumps(request["json"]).encode()
                answer = http.request(
                    request["method"], request["path"], content=body, headers=headers
                )
                assert answer.status_code == recorded["status"], (name, answer.text)
                assert answer.headers.get("content-type") == recorded["headers"].get(
                    "content-type"
                ), name
                if name not in BODY_IS_DATA:
                    if recorded["body"].startswith("{") and "errors/" in recorded["body"]:
                        assert answer.json()["type"] == json.loads(recorded["body"])["type"], name
                        if name != "admin refused (plugin path)":  # reason text is ours
                            assert answer.json() == json.loads(recorded["body"]), name
                    else:
                        assert answer.text == recorded["body"], name
    finally:
        stop_stand(stand)
