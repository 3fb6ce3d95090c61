"""KbsAdminClient request shapes, both admin-auth generations (tokens checked with PyJWT and
joserfc, independent of the jwcrypto that signs them), and TLS with a pinned CA over real
loopback HTTPS."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jwt as jrfc_jwt
from joserfc.jwk import OKPKey
from pki import make_cert, new_key, pem, private_pem, self_signed_ca

from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.kbs.client import (
    BearerTokenAdminAuth,
    KbsAdminClient,
    KbsClient,
    SelfSignedAdminAuth,
    mint_admin_token,
)
from coco_ai.kbs.errors import AdminAuthError, KbsTlsError, ParsePolicyError, UnexpectedResponse

from .conftest import KBS_URL

PREFIX = "https://github.com/confidential-containers/kbs/errors/"
# Chosen so that standard base64 would contain '+', '/' and padding.
REGO = 'package policy\n\ndefault allow := false\n# ~~~ ??? >>> é\nallow if { input.x == "y" }\n'


@pytest.fixture(scope="module")
def admin_key() -> tuple[bytes, ed25519.Ed25519PublicKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, key.public_key()


class Recorder:
    """Admin endpoints of a KBS, recording every request; answers are programmable."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: dict[tuple[str, str], httpx.Response] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.get((request.method, request.url.path))
        return answer if answer is not None else httpx.Response(200)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def admin(recorder, admin_key) -> KbsAdminClient:
    auth = SelfSignedAdminAuth(admin_key[0])
    return KbsAdminClient(KBS_URL, auth=auth, transport=httpx.MockTransport(recorder))


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bearer(request: httpx.Request) -> str:
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def test_v020_self_signed_token_shape(admin, recorder, admin_key):
    admin.set_resource_policy(REGO)
    token = _bearer(recorder.last)
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": "EdDSA", "typ": "JWT"}
    claims = pyjwt.decode(token, admin_key[1], algorithms=["EdDSA"])
    assert set(claims) == {"iat", "exp"}
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 5


def test_v020_token_is_fresh_per_request(admin_key):
    now = [1_800_000_000.0]
    auth = SelfSignedAdminAuth(admin_key[0], lifetime=60, clock=lambda: now[0])
    first = auth.token()
    now[0] += 30
    second = auth.token()
    assert first != second
    claims = pyjwt.decode(
        second,
        admin_key[1],
        algorithms=["EdDSA"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {"iat": 1_800_000_030, "exp": 1_800_000_090}


def test_v020_token_signed_by_another_key_does_not_verify(admin_key):
    other = ed25519.Ed25519PrivateKey.generate()
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(SelfSignedAdminAuth(pem).token(), admin_key[1], algorithms=["EdDSA"])


def test_admin_key_must_be_ed25519():
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="Ed25519"):
        SelfSignedAdminAuth(p256)
    with pytest.raises(ValueError):
        SelfSignedAdminAuth(b"garbage")


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # Trustee's admin JWTs use EdDSA
def test_v021_minted_token_verifies_with_joserfc_and_pyjwt(admin_key):
    token = mint_admin_token(admin_key[0], role="admin", issuer="TrusteeInDocker", lifetime=600)
    public_pem = admin_key[1].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    decoded = jrfc_jwt.decode(token, OKPKey.import_key(public_pem), algorithms=["EdDSA"])
    assert decoded.header == {"alg": "EdDSA", "typ": "JWT"}
    claims = decoded.claims
    assert claims["role"] == "admin" and claims["iss"] == "TrusteeInDocker"
    assert claims["sub"] == "admin" and claims["aud"] == ["KBS"]
    assert claims["exp"] - claims["iat"] == 600
    pyjwt.decode(
        token, admin_key[1], algorithms=["EdDSA"], audience="KBS", issuer="TrusteeInDocker"
    )


def test_v021_bearer_token_is_sent_verbatim(recorder, admin_key):
    token = mint_admin_token(admin_key[0], role="pipeline")
    client = KbsAdminClient(
        KBS_URL, auth=BearerTokenAdminAuth(token), transport=httpx.MockTransport(recorder)
    )
    client.delete_resource("default/key/one")
    assert recorder.last.headers["authorization"] == f"Bearer {token}"
    assert token not in repr(client)
    with pytest.raises(ValueError):
        BearerTokenAdminAuth("not-a-jwt")


def test_resource_policy_is_base64url_without_padding(admin, recorder):
    admin.set_resource_policy(REGO)
    request = recorder.last
    assert (request.method, request.url.path) == ("POST", "/kbs/v0/resource-policy")
    body = json.loads(request.content)
    assert set(body) == {"policy"}
    assert not set(body["policy"]) & set("=+/")
    assert b64url_decode(body["policy"]).decode() == REGO


def test_get_resource_policy_decodes(admin, recorder):
    encoded = base64.urlsafe_b64encode(REGO.encode()).rstrip(b"=")
    recorder.answers[("GET", "/kbs/v0/resource-policy")] = httpx.Response(200, content=encoded)
    assert admin.get_resource_policy() == REGO
    recorder.answers[("GET", "/kbs/v0/resource-policy")] = httpx.Response(200, text="%%%")
    with pytest.raises(UnexpectedResponse):
        admin.get_resource_policy()


def test_get_resource_policy_is_none_when_trustee_lists_only_ids(admin, recorder):
    # Trustee v0.20+ answers GET with the policy ids, not the text.
    recorder.answers[("GET", "/kbs/v0/resource-policy")] = httpx.Response(
        200, json=["resource-policy"]
    )
    assert admin.get_resource_policy() is None
    recorder.answers[("GET", "/kbs/v0/resource-policy")] = httpx.Response(200, json=[1, 2])
    with pytest.raises(UnexpectedResponse):
        admin.get_resource_policy()


@pytest.mark.parametrize("policy_id", ["default_cpu", "default_gpu"])
def test_attestation_policy_message(admin, recorder, policy_id):
    admin.set_attestation_policy(REGO, policy_id)
    body = json.loads(recorder.last.content)
    assert recorder.last.url.path == "/kbs/v0/attestation-policy"
    assert body["type"] == "rego" and body["policy_id"] == policy_id
    assert "=" not in body["policy"] and b64url_decode(body["policy"]).decode() == REGO


@pytest.mark.parametrize("policy_id", ["default", "", "cpu", "../default_cpu"])
def test_attestation_policy_ids_that_trustee_would_ignore_are_refused(admin, recorder, policy_id):
    with pytest.raises(ValueError):
        admin.set_attestation_policy(REGO, policy_id)
    assert recorder.requests == []


def test_bad_rego_is_reported_typed(admin, recorder):
    recorder.answers[("POST", "/kbs/v0/resource-policy")] = httpx.Response(
        401, json={"type": PREFIX + "ParsePolicyError", "detail": "Failed to parse policy: x"}
    )
    with pytest.raises(ParsePolicyError):
        admin.set_resource_policy("package policy\nallow if {")


def test_admin_denial_is_typed(admin, recorder):
    recorder.answers[("POST", "/kbs/v0/resource/default/key/one")] = httpx.Response(
        401, json={"type": PREFIX + "AdminAuthAccess", "detail": "admin access denied"}
    )
    with pytest.raises(AdminAuthError):
        admin.set_resource("default/key/one", b"k")


def test_resource_upload_and_delete(admin, recorder):
    admin.set_resource("kbs:///default/key/one", b"\x00\xffkey")
    request = recorder.last
    assert (request.method, request.url.path) == ("POST", "/kbs/v0/resource/default/key/one")
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.content == b"\x00\xffkey"
    admin.delete_resource("default/key/one")
    assert (recorder.last.method, recorder.last.url.path) == (
        "DELETE",
        "/kbs/v0/resource/default/key/one",
    )


def test_resource_upload_limits(admin, recorder):
    with pytest.raises(ValueError, match="at most"):
        admin.set_resource("default/key/one", b"x" * (2 * 1024 * 1024 + 1))
    with pytest.raises(ValueError):
        admin.set_resource("default/../one", b"x")
    with pytest.raises(ValueError):
        admin.delete_resource("kbs:///default/%2e%2e/one")
    assert recorder.requests == []


def test_sample_reference_value_message(admin, recorder):
    admin.set_sample_reference_value("launch_digest", "abcd")
    body = json.loads(recorder.last.content)
    assert recorder.last.url.path == "/kbs/v0/reference-value"
    assert body["version"] == "0.1.0" and body["type"] == "sample"
    assert json.loads(base64.b64decode(body["payload"], validate=True)) == {
        "launch_digest": ["abcd"]
    }
    admin.set_sample_reference_value("svn", 3, as_single_value=True)
    body = json.loads(recorder.last.content)
    assert json.loads(base64.b64decode(body["payload"])) == {"svn": 3}


def test_get_reference_value(admin, recorder):
    recorder.answers[("GET", "/kbs/v0/reference-value/svn")] = httpx.Response(200, json=["1"])
    assert admin.get_reference_value("svn") == ["1"]
    with pytest.raises(ValueError):
        admin.get_reference_value("../x")


def test_provision_run_key(admin, recorder):
    bind = {"initdata_key": "io.coco-ai.run-id", "value": "run-7"}
    recorder.answers[("POST", "/kbs/v0/provisioner/provision")] = httpx.Response(
        200, json={"uuid": "u-1", "resource_path": "coco-ai/run-7/checkpoint-key"}
    )
    assert admin.provision_run_key(None, bind) == "coco-ai/run-7/checkpoint-key"
    assert json.loads(recorder.last.content) == {"bind": bind}
    path = admin.provision_run_key("kbs:///coco-ai/run-7/checkpoint-key", bind)
    assert path == "coco-ai/run-7/checkpoint-key"
    assert json.loads(recorder.last.content) == {
        "bind": bind,
        "resource_path": "coco-ai/run-7/checkpoint-key",
    }


def test_provision_run_key_refuses_bad_bind_and_answers(admin, recorder):
    with pytest.raises(ValueError):
        admin.provision_run_key(None, {"initdata_key": "io.coco-ai.run-id"})
    with pytest.raises(ValueError):
        admin.provision_run_key(None, {"initdata_key": "k", "value": ""})
    assert recorder.requests == []
    bind = {"initdata_key": "io.coco-ai.run-id", "value": "run-7"}
    recorder.answers[("POST", "/kbs/v0/provisioner/provision")] = httpx.Response(
        200, json={"uuid": "u", "resource_path": "coco-ai/../x"}
    )
    with pytest.raises(UnexpectedResponse):
        admin.provision_run_key(None, bind)
    recorder.answers[("POST", "/kbs/v0/provisioner/provision")] = httpx.Response(
        200, json={"uuid": "u", "resource_path": "coco-ai/other/key"}
    )
    with pytest.raises(UnexpectedResponse, match="requested"):
        admin.provision_run_key("coco-ai/run-7/key", bind)


def test_healthz(admin, recorder):
    assert admin.healthz() is True
    assert recorder.last.url.path == "/healthz"
    assert "authorization" not in recorder.last.headers
    recorder.answers[("GET", "/healthz")] = httpx.Response(503)
    assert admin.healthz() is False


# -- TLS with a pinned CA, over real loopback HTTPS ------------------------------------------
def _tls_material(tmp_path):
    ca_key, ca = self_signed_ca("kbs test CA")
    key = new_key()
    cert = make_cert(
        "127.0.0.1", "kbs test CA", key.public_key(), ca_key, ca=False, ip_sans=("127.0.0.1",)
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(private_pem(key))
    return pem(ca), cert_path, key_path


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def https_kbs(tmp_path):
    ca_pem, cert_path, key_path = _tls_material(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca_pem, tmp_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(30)
def test_tls_pinned_ca(https_kbs, admin_key):
    url, ca_pem, tmp_path = https_kbs
    auth = SelfSignedAdminAuth(admin_key[0])
    assert KbsAdminClient(url, auth=auth, ca_cert=ca_pem, timeout=5).healthz() is True
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_pem)
    assert KbsAdminClient(url, auth=auth, ca_cert=str(ca_file), timeout=5).healthz() is True
    assert KbsAdminClient(url, auth=auth, ca_cert=ca_pem.decode(), timeout=5).healthz() is True


@pytest.mark.timeout(30)
def test_tls_other_ca_is_refused(https_kbs, admin_key, tmp_path):
    url, _ca_pem, _ = https_kbs
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _ = _tls_material(other_dir)
    auth = SelfSignedAdminAuth(admin_key[0])
    assert KbsAdminClient(url, auth=auth, ca_cert=other_ca, timeout=5).healthz() is False
    sleeps: list[float] = []
    client = KbsClient(url, SampleAttester(), ca_cert=other_ca, timeout=5, sleep=sleeps.append)
    with pytest.raises(KbsTlsError, match="pinned CA"):
        client.attest()
    assert sleeps == []  # a certificate mismatch is not retried


def test_bad_ca_pem_is_refused():
    with pytest.raises(ValueError, match="CA certificate"):
        KbsClient(
            "https://127.0.0.1:1",
            SampleAttester(),
            ca_cert=b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n",
        )
