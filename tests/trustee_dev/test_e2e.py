"""Happy paths end to end with the real KbsClient over real HTTP (TLS with a pinned CA, and
plain HTTP on loopback): token shape, cookie and Bearer modes, per-run grants, revocation."""

from __future__ import annotations

import base64
import json

import pytest

from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.admin_auth import SelfSignedAdminAuth
from coco_ai.kbs.client import KbsAdminClient, KbsClient
from coco_ai.kbs.ear import TRUSTEE_EAT_PROFILE, verify_ear_token
from coco_ai.kbs.errors import KbsUnavailable, PluginInternalError, PolicyDenied, RvpsError
from coco_ai.trustee_dev import serve_in_thread
from coco_ai.trustee_dev.state import StateDir
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE
from tests.trustee_dev.conftest import handshake

pytestmark = pytest.mark.timeout(60)

RUN_KEY = "io.coco-ai.run-id"


def test_attest_and_fetch_over_tls(stand):
    stand.admin.set_resource("coco-ai/dataset-key/e2e", b"dataset key bytes")
    with stand.client(gpus=3, run_id="run-e2e") as client:
        token = client.attest()
        assert client.get_resource("kbs:///coco-ai/dataset-key/e2e") == b"dataset key bytes"
        # Bearer mode: the token alone, verified against the stand-in's CA.
        assert (
            client.get_resource_with_token("coco-ai/dataset-key/e2e", token) == b"dataset key bytes"
        )
        tee_pubkey = client.tee_key.public_jwk()
    claims = verify_ear_token(token, stand.anchor, signer_pem=stand.signer)
    raw = claims.raw
    assert raw["eat_profile"] == TRUSTEE_EAT_PROFILE
    # `iss` is an EAR extension since v0.21.0 (attestation-service/src/ear_token/broker.rs).
    assert raw.get("iss") == (None if stand.version == "0.20.0" else "CoCo-Attestation-Service")
    assert raw["exp"] - raw["iat"] == 300
    assert raw["ear.verifier-id"]["developer"] == "https://confidentialcontainers.org"
    assert sorted(raw["submods"]) == ["cpu0", "gpu0", "gpu1", "gpu2"]
    for name, submod in raw["submods"].items():
        assert submod["ear.status"] == "affirming", name
        assert submod["ear.appraisal-policy-id"] == "default"
        assert submod["ear.trustworthiness-vector"]["hardware"] == 2
    cpu = raw["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert cpu["sample"]["svn"] == "1"
    assert cpu["runtime_data_claims"]["tee-pubkey"] == {
        k: tee_pubkey[k] for k in ("kty", "crv", "alg", "x", "y")
    }
    assert json.loads(cpu["runtime_data_claims"]["additional-evidence"])["sampledevice"]
    initdata = build_initdata(
        stand.url, stand.ca, {RUN_KEY: "run-e2e"}, image=APPROVED_IMAGE, module=APPROVED_MODULE
    )
    assert cpu["init_data_claims"][RUN_KEY] == "run-e2e"
    assert cpu["init_data_claims"]["cdh.toml"]["kbc"]["url"] == stand.url
    assert claims.init_data() is not None
    assert base64.b64decode(claims.init_data()) == initdata.digest()
    gpu = raw["submods"]["gpu1"]["ear.veraison.annotated-evidence"]
    assert gpu["sampledevice"]["svn"] == "2"
    assert set(gpu["runtime_data_claims"]) == {"nonce", "tee-pubkey"}
    assert "init_data" not in gpu


def test_plain_http_on_loopback(tmp_path, admin_keys):
    server = serve_in_thread(
        tmp_path / "state", admin_keys.public_pem, tls=False, approved_images=[APPROVED_IMAGE]
    )
    try:
        assert server.url.startswith("http://127.0.0.1:")
        admin = KbsAdminClient(server.url, auth=SelfSignedAdminAuth(admin_keys.private_pem))
        admin.set_resource("coco-ai/k/plain", b"over http")
        initdata = build_initdata(
            server.url, None, {RUN_KEY: "r"}, image=APPROVED_IMAGE, module=APPROVED_MODULE
        )
        client = KbsClient(
            server.url,
            SampleAttester(init_data_digest=initdata.digest()),
            [SampleDeviceAttester()],
            initdata_toml=initdata.toml,
        )
        assert client.get_resource("kbs:///coco-ai/k/plain") == b"over http"
    finally:
        server.stop()


def test_tls_client_without_pinned_ca_is_refused(stand):
    client = KbsClient(stand.url, SampleAttester(), [SampleDeviceAttester()], handshake_retries=1)
    with pytest.raises(KbsUnavailable):
        client.attest()


def test_per_run_grant_pinned_to_initdata_and_revoked(stand):
    """A run's grant (coco_ai.run_keys) under the dev policy, over real HTTP: released only to
    a TEE whose initdata names it and a run; gone once deleted."""
    path = "coco-ai-run/grant/run-42"
    uri = f"kbs:///{path}"
    stand.admin.set_resource(path, b'{"run_id":"run-42"}')

    def fetch(extra: dict[str, str]) -> bytes:
        initdata = build_initdata(
            stand.url, stand.ca, extra, image=APPROVED_IMAGE, module=APPROVED_MODULE
        )
        with KbsClient(
            stand.url,
            SampleAttester(init_data_digest=initdata.digest()),
            [SampleDeviceAttester()],
            initdata_toml=initdata.toml,
            ca_cert=stand.ca,
            handshake_retries=1,
        ) as client:
            return client.get_resource(uri)

    assert fetch({RUN_KEY: "run-42", "io.coco-ai.run-grant": uri}) == b'{"run_id":"run-42"}'
    # Another run's TEE, naming its own grant: refused.
    with pytest.raises(PolicyDenied):
        fetch({RUN_KEY: "run-43", "io.coco-ai.run-grant": "kbs:///coco-ai-run/grant/run-43"})
    # The right run without naming the grant, or naming it outside a run: refused.
    with pytest.raises(PolicyDenied):
        fetch({RUN_KEY: "run-42"})
    with pytest.raises(PolicyDenied):
        fetch({"io.coco-ai.run-grant": uri})
    # The release audit names the one TEE that received the grant, by its initdata; the
    # denied requests left no line.
    released = [r for r in StateDir(stand.state_dir).releases() if r["path"] == path]
    assert [r["init_data_claims"][RUN_KEY] for r in released] == ["run-42"]
    assert released[0]["init_data_claims"]["io.coco-ai.run-grant"] == uri
    initdata = build_initdata(
        stand.url,
        stand.ca,
        {RUN_KEY: "run-42", "io.coco-ai.run-grant": uri},
        image=APPROVED_IMAGE,
        module=APPROVED_MODULE,
    )
    assert base64.b64decode(released[0]["init_data"]) == initdata.digest()
    assert b"run_id" not in json.dumps(released).encode()  # names only, never the resource
    stand.admin.delete_resource(path)
    with pytest.raises(PluginInternalError):
        fetch({RUN_KEY: "run-42", "io.coco-ai.run-grant": uri})


def test_prod_policy_set_denies_sample_evidence(tmp_path, admin_keys):
    server = serve_in_thread(
        tmp_path / "state",
        admin_keys.public_pem,
        policy_set="prod",
        approved_images=[APPROVED_IMAGE],
    )
    try:
        ca = server.tls_ca_path.read_bytes()
        with KbsAdminClient(
            server.url, auth=SelfSignedAdminAuth(admin_keys.private_pem), ca_cert=ca
        ) as admin:
            admin.set_resource("coco-ai/k/prod", b"never to sample")
        client = KbsClient(
            server.url, SampleAttester(), [SampleDeviceAttester()], ca_cert=ca, handshake_retries=1
        )
        with client:
            client.attest()  # attestation succeeds; the production resource policy refuses
            with pytest.raises(PolicyDenied):
                client.get_resource("kbs:///coco-ai/k/prod")
    finally:
        server.stop()


def test_reference_values_drive_the_trust_vector(stand):
    assert stand.admin.get_reference_value("svn") == ["1"]
    with pytest.raises(RvpsError):
        stand.admin.get_reference_value("no-such-id")
    stand.admin.set_resource("coco-ai/dataset-key/rv", b"rv")
    stand.admin.set_sample_reference_value("svn", ["7"])
    try:
        with stand.client() as client:
            token = client.attest()
            with pytest.raises(PolicyDenied):
                client.get_resource("kbs:///coco-ai/dataset-key/rv")
        cpu0 = verify_ear_token(token, stand.anchor).raw["submods"]["cpu0"]
        assert cpu0["ear.status"] == "contraindicated"
        assert cpu0["ear.trustworthiness-vector"]["hardware"] == 97
    finally:
        stand.admin.set_sample_reference_value("svn", ["1"])
    with stand.client() as client:
        assert client.get_resource("kbs:///coco-ai/dataset-key/rv") == b"rv"


def test_reattest_on_same_session_returns_same_token(stand):
    with stand.http() as http:
        hs = handshake(http)
        body = hs.attestation()
        first = hs.attest(body).json()["token"]
        again = hs.attest(body).json()["token"]
    assert first == again


def test_challenge_shape_and_cookie(stand):
    with stand.http() as http:
        response = http.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
    challenge = response.json()
    assert challenge["extra-params"] == ""
    assert len(base64.b64decode(challenge["nonce"], validate=True)) == 32
    cookie = response.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    assert name == "kbs-session-id"
    value = rest.split(";")[0]
    assert len(value) == 32 and int(value, 16) >= 0
    assert "Expires=" in cookie
    with stand.http() as http:
        # /healthz since v0.21.0; /metrics in every version (kbs/src/api_server.rs).
        assert http.get("/healthz").status_code == (404 if stand.version == "0.20.0" else 200)
        assert http.get("/metrics").status_code == 200
        listing = http.get(
            "/kbs/v0/resource-policy",
            headers={"Authorization": stand.auth_header()},
        )
    assert listing.json() == ["resource-policy"]


def test_rsa_tee_key(stand):
    from coco_ai.kbs.jwe import TeeKeyPair

    stand.admin.set_resource("coco-ai/dataset-key/rsa", b"to an RSA key")
    with stand.client(tee_key=TeeKeyPair.generate("RSA-OAEP-256")) as client:
        assert client.get_resource("kbs:///coco-ai/dataset-key/rsa") == b"to an RSA key"
        pubkey = verify_ear_token(client.token, stand.anchor).tee_pubkey()
    assert pubkey["kty"] == "RSA" and pubkey["alg"] == "RSA-OAEP-256"
    assert set(pubkey) == {"kty", "alg", "n", "e"}
