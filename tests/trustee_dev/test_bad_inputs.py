"""Every bad input of issue 3, over real HTTP: Trustee's status and error type, nothing released.

"Nothing released" is checked where something could leak: no token in a failed attestation,
the failed session cannot fetch a resource, and denied resource requests carry no JWE.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time

import pytest

from coco_ai import policies
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.admin_auth import SelfSignedAdminAuth, mint_admin_token
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.errors import AdminAuthError, PolicyEngineError
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.trustee_dev.state import StateDir
from coco_ai.trustee_dev.tokens import TokenBroker
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE
from tests.trustee_dev.conftest import b64url_nopad, error_type, handshake, make_admin_keys

pytestmark = pytest.mark.timeout(60)

SECRET = b"resource-that-must-not-leak"
PATH = "coco-ai/dataset-key/bad-inputs"


@pytest.fixture(scope="module", autouse=True)
def _resource(stand):
    stand.admin.set_resource(PATH, SECRET)


def assert_not_released(stand, hs) -> None:
    """The session of a failed attestation holds no token: it gets no resource."""
    response = hs.resource(PATH)
    assert response.status_code == 401
    assert error_type(response) == "TokenNotFound"
    assert SECRET not in response.content


def assert_denied(response, status: int, variant: str) -> None:
    assert response.status_code == status, response.text
    assert error_type(response) == variant
    assert "token" not in response.json()
    assert "ciphertext" not in response.json()


# -- RCAR --------------------------------------------------------------------------------


def test_protocol_version_mismatch(stand):
    with stand.http() as http:
        response = http.post(
            "/kbs/v0/auth", json={"version": "0.3.0", "tee": "sample", "extra-params": ""}
        )
    assert_denied(response, 401, "AttestationError")
    assert "Protocol Version Mismatch" in response.json()["detail"]
    assert "kbs-session-id" not in response.headers.get("set-cookie", "")


def test_unknown_tee(stand):
    with stand.http() as http:
        response = http.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "quantum", "extra-params": ""}
        )
    assert_denied(response, 401, "AttestationError")
    assert "quantum" in response.json()["detail"]
    assert "set-cookie" not in response.headers


def test_attest_without_auth(stand):
    with stand.http() as http:
        hs = handshake(http)
        body = hs.attestation()
        no_cookie = http.post("/kbs/v0/attest", json=body)
        forged = http.post(
            "/kbs/v0/attest", json=body, headers={"Cookie": "kbs-session-id=" + "0" * 32}
        )
    assert_denied(no_cookie, 401, "AttestationError")
    assert "cookie" in no_cookie.json()["detail"]
    assert_denied(forged, 401, "AttestationError")


def test_nonce_mismatch(stand):
    with stand.http() as http:
        hs = handshake(http)
        other = base64.b64encode(b"\x01" * 32).decode()
        response = hs.attest(hs.attestation(nonce=other))
        assert_denied(response, 401, "AttestationError")
        assert "nonce" in response.json()["detail"]
        assert_not_released(stand, hs)


def test_changed_tee_pubkey(stand):
    with stand.http() as http:
        hs = handshake(http)
        body = hs.attestation()
        body["runtime-data"]["tee-pubkey"] = TeeKeyPair.generate().public_jwk()
        response = hs.attest(body)
        assert_denied(response, 401, "AttestationError")
        assert "REPORT_DATA" in response.json()["detail"]
        assert_not_released(stand, hs)


def test_changed_additional_evidence(stand):
    with stand.http() as http:
        hs = handshake(http)
        body = hs.attestation(gpus=1)
        devices = json.loads(body["tee-evidence"]["additional_evidence"])
        devices["sampledevice"]["svn"] = "99"  # device report data still valid: CPU binding breaks
        body["tee-evidence"]["additional_evidence"] = json.dumps(devices)
        response = hs.attest(body)
        assert_denied(response, 401, "AttestationError")
        assert "REPORT_DATA" in response.json()["detail"]
        assert_not_released(stand, hs)


def test_malformed_json(stand):
    with stand.http() as http:
        auth = http.post("/kbs/v0/auth", content=b"{not json")
        hs = handshake(http)
        attest = hs.attest(b'{"runtime-data": ')
        assert_not_released(stand, hs)
    assert_denied(auth, 401, "AttestationError")
    assert_denied(attest, 401, "AttestationError")
    with stand.http() as http:
        policy = http.post(
            "/kbs/v0/resource-policy",
            content=b"{oops",
            headers={"Authorization": stand.auth_header()},
        )
    assert_denied(policy, 401, "ParsePolicyError")


def test_body_over_two_mib(stand):
    limit = 2 * 1024 * 1024
    auth = stand.auth_header()
    with stand.http() as http:
        too_big = http.post(
            "/kbs/v0/resource/coco-ai/big/blob",
            content=b"x" * (limit + 1),
            headers={"Authorization": auth},
        )
        attest = http.post("/kbs/v0/auth", content=b" " * (limit + 1))
        at_limit = http.post(
            "/kbs/v0/resource/coco-ai/big/blob",
            content=b"y" * limit,
            headers={"Authorization": auth},
        )
    assert too_big.status_code == 413
    assert too_big.text == "A payload reached size limit."
    assert attest.status_code == 413
    assert at_limit.status_code == 200
    assert StateDir(stand.state_dir).get_resource("coco-ai/big/blob").data == b"y" * limit


def test_initdata_digest_mismatch(stand):
    expected = build_initdata(
        stand.url,
        stand.ca,
        {"io.coco-ai.run-id": "run-a"},
        image=APPROVED_IMAGE,
        module=APPROVED_MODULE,
    )
    other = build_initdata(
        stand.url,
        stand.ca,
        {"io.coco-ai.run-id": "run-b"},
        image=APPROVED_IMAGE,
        module=APPROVED_MODULE,
    )
    with stand.http() as http:
        hs = handshake(http)
        response = hs.attest(hs.attestation(initdata_toml=other.toml, digest=expected.digest()))
        assert_denied(response, 401, "AttestationError")
        assert "initdata digest mismatch" in response.json()["detail"]
        assert_not_released(stand, hs)

        hs = handshake(http)
        response = hs.attest(hs.attestation(initdata_toml=expected.toml, digest=None))
        assert_denied(response, 401, "AttestationError")
        assert "no init_data digest" in response.json()["detail"]

        hs = handshake(http)
        body = hs.attestation(initdata_toml=expected.toml, digest=expected.digest())
        body["init-data"]["format"] = "json"
        response = hs.attest(body)
        assert_denied(response, 401, "AttestationError")
        assert "Unsupported initdata format" in response.json()["detail"]


def test_expired_session(stand):
    with stand.http() as http:
        hs = handshake(http)
        stand.clock.offset = 5 * 60 + 1
        try:
            response = hs.attest(hs.attestation())
        finally:
            stand.clock.offset = 0
        assert_denied(response, 401, "AttestationError")
        assert "expired" in response.json()["detail"]
        assert_not_released(stand, hs)


def test_attested_session_expires(stand):
    with stand.http() as http:
        hs = handshake(http)
        assert hs.attest(hs.attestation()).status_code == 200
        assert hs.resource(PATH).status_code == 200
        stand.clock.offset = 5 * 60 + 1
        try:
            response = hs.resource(PATH)
        finally:
            stand.clock.offset = 0
    assert_denied(response, 401, "TokenNotFound")


def test_old_attestation_replayed_on_new_session(stand):
    with stand.http() as http:
        first = handshake(http)
        old_body = first.attestation()
        assert first.attest(old_body).status_code == 200
        second = handshake(http)
        response = second.attest(old_body)
        assert_denied(response, 401, "AttestationError")
        assert "nonce" in response.json()["detail"]
        assert_not_released(stand, second)


# -- resource policy -----------------------------------------------------------------------


def test_no_gpu_evidence_under_gpu_requiring_policy(stand):
    with stand.http() as http:
        hs = handshake(http)
        response = hs.attest(hs.attestation(gpus=0))
        assert response.status_code == 200  # attestation itself is fine: the policy decides
        denied = hs.resource(PATH)
    assert_denied(denied, 401, "PolicyDeny")
    assert SECRET not in denied.content


def test_fewer_gpus_than_required(stand):
    original = policies.resource_policy_text("dev", [APPROVED_IMAGE])
    needs_two = original.replace("min_gpus := 1", "min_gpus := 2")
    assert needs_two != original
    stand.admin.set_resource_policy(needs_two)
    try:
        with stand.http() as http:
            one = handshake(http)
            assert one.attest(one.attestation(gpus=1)).status_code == 200
            denied = one.resource(PATH)
            two = handshake(http)
            assert two.attest(two.attestation(gpus=2)).status_code == 200
            allowed = two.resource(PATH)
    finally:
        stand.admin.set_resource_policy(original)
    assert_denied(denied, 401, "PolicyDeny")
    assert allowed.status_code == 200
    assert two.key.decrypt(allowed.json()) == SECRET


def test_missing_resource_and_unknown_plugin(stand):
    with stand.http() as http:
        hs = handshake(http)
        assert hs.attest(hs.attestation()).status_code == 200
        missing = hs.resource("coco-ai/dataset-key/absent")
        plugin = http.get("/kbs/v0/nebula-ca/credential")
    assert_denied(missing, 401, "PluginInternalError")
    assert_denied(plugin, 404, "PluginNotFound")


# -- tokens ------------------------------------------------------------------------------


def _bearer_get(stand, token: str):
    with stand.http() as http:
        return http.get(f"/kbs/v0/resource/{PATH}", headers={"Authorization": f"Bearer {token}"})


def test_token_from_another_signer(stand, tmp_path):
    with stand.http() as http:
        hs = handshake(http)
        token = hs.attest(hs.attestation()).json()["token"]
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    foreign = TokenBroker(StateDir(tmp_path / "other-trustee")).issue(
        payload["submods"], time.time(), 300
    )
    response = _bearer_get(stand, foreign)
    assert_denied(response, 401, "TokenVerifierError")
    assert _bearer_get(stand, token).status_code == 200  # the genuine one works


def test_token_with_changed_claim(stand):
    with stand.http() as http:
        hs = handshake(http)
        token = hs.attest(hs.attestation(gpus=0)).json()["token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    # Forge a GPU into the token: the policy would allow it, the signature must not.
    claims["submods"]["gpu0"] = dict(claims["submods"]["cpu0"])
    forged_payload = b64url_nopad(json.dumps(claims))
    response = _bearer_get(stand, f"{header}.{forged_payload}.{signature}")
    assert_denied(response, 401, "TokenVerifierError")


def test_expired_token(stand):
    with stand.http() as http:
        hs = handshake(http)
        token = hs.attest(hs.attestation()).json()["token"]
    stand.clock.offset = 5 * 60 + 1
    try:
        response = _bearer_get(stand, token)
    finally:
        stand.clock.offset = 0
    assert_denied(response, 401, "TokenVerifierError")


# -- admin -------------------------------------------------------------------------------


def _admin_post(stand, authorization: str | None):
    headers = {"Authorization": authorization} if authorization else {}
    with stand.http() as http:
        return http.post("/kbs/v0/resource/coco-ai/admin/probe", content=b"x", headers=headers)


def test_admin_unsigned_other_key_expired_or_wrong_role(stand):
    other = make_admin_keys()
    now = time.time()
    unsigned_header = b64url_nopad(json.dumps({"alg": "none", "typ": "JWT"}))
    unsigned_claims = b64url_nopad(json.dumps({"iat": int(now), "exp": int(now) + 300}))
    legacy = stand.version == "0.20.0"
    attempts = {
        "no header": None,
        "alg none": f"Bearer {unsigned_header}.{unsigned_claims}.",
        "other key": SelfSignedAdminAuth(other.private_pem).authorization(),
        "expired": SelfSignedAdminAuth(
            stand.keys.private_pem, clock=lambda: now - 3600
        ).authorization(),
        # v0.20.0 Simple: an `aud` it was not configured for; v0.21+: a role its ACL refuses.
        "wrong role": f"Bearer {mint_admin_token(stand.keys.private_pem, role='viewer')}",
    }
    if not legacy:  # bearer_jwt: the v0.20 self-signed token has no role
        attempts["no role"] = SelfSignedAdminAuth(stand.keys.private_pem).authorization()
    # v0.20.0: AdminAuth; v0.21.0+ on a plugin path (resource): AdminAuthInitialization.
    expected = "AdminAuth" if legacy else "AdminAuthInitialization"
    for name, authorization in attempts.items():
        response = _admin_post(stand, authorization)
        assert response.status_code == 401, name
        assert "content-type" not in response.headers, name
        assert error_type(response) == expected, name
    assert StateDir(stand.state_dir).get_resource("coco-ai/admin/probe") is None
    # The genuine style of this version works; the client maps every wire name to one type.
    stand.admin.set_resource("coco-ai/admin/probe", b"ok")
    assert StateDir(stand.state_dir).get_resource("coco-ai/admin/probe").data == b"ok"
    with (
        KbsAdminClient(
            stand.url, auth=SelfSignedAdminAuth(other.private_pem), ca_cert=stand.ca
        ) as intruder,
        pytest.raises(AdminAuthError) as refused,
    ):
        intruder.set_resource_policy(policies.resource_policy_text("dev", [APPROVED_IMAGE]))
    assert refused.value.variant == ("AdminAuth" if legacy else "AdminAuthAccess")


def test_rego_syntax_error_keeps_old_policy(stand):
    policy_file = stand.state_dir / "policies" / "resource-policy.rego"
    before = policy_file.read_bytes()
    with pytest.raises(PolicyEngineError):
        stand.admin.set_resource_policy("package policy\n\nallow if {\n")
    assert policy_file.read_bytes() == before
    with stand.http() as http:
        auth = stand.auth_header()
        response = http.post(
            "/kbs/v0/attestation-policy",
            json={"type": "rego", "policy_id": "default_cpu", "policy": b64url_nopad("package")},
            headers={"Authorization": auth},
        )
        assert_denied(response, 401, "AttestationError")
        hs = handshake(http)
        assert hs.attest(hs.attestation()).status_code == 200
        assert hs.key.decrypt(hs.resource(PATH).json()) == SECRET  # old policies still apply


# -- paths -------------------------------------------------------------------------------


def _raw_request(stand, method: str, target: str, headers: dict | None = None):
    host, port = stand.url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cadata=stand.ca.decode())
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request(
            method, target, body=b"evil" if method == "POST" else None, headers=headers or {}
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    "target",
    [
        "/kbs/v0/resource/../../../etc/passwd",
        "/kbs/v0/resource/coco-ai/../dataset-key/bad-inputs",
        "/kbs/v0/resource/coco-ai/%2e%2e/bad-inputs",
        "/kbs/v0/resource/coco-ai%2Fdataset-key/bad-inputs/x",
        "/kbs/v0/resource/coco-ai/dataset-key/%2E%2E%2Fbad-inputs",
        "/kbs/v0/resource/coco-ai/dataset-key/..%5Cbad-inputs",
    ],
)
def test_traversal_paths(stand, target):
    with stand.http() as http:
        hs = handshake(http)
        assert hs.attest(hs.attestation()).status_code == 200
    status, body = _raw_request(
        stand, "GET", target, headers={"Cookie": f"kbs-session-id={hs.cookie}"}
    )
    assert status == 404
    assert body["type"].endswith("/InvalidRequestPath")
    assert "ciphertext" not in body
    auth = stand.auth_header()
    before = sorted(p for p in stand.state_dir.parent.rglob("*") if p.is_file())
    status, body = _raw_request(stand, "POST", target, headers={"Authorization": auth})
    assert status == 404
    assert body["type"].endswith("/InvalidRequestPath")
    assert sorted(p for p in stand.state_dir.parent.rglob("*") if p.is_file()) == before
