"""The stand-in without extensions behaves as the emulated Trustee version, item by item.

Each test names the Trustee source it reproduces; the compatibility table in
docs/architecture/trustee_dev.md lists the same facts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
import uuid

import pytest

from coco_ai import policies
from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.client import KbsAdminClient, KbsClient
from coco_ai.kbs.ear import sign_ear_token, unverified_header, verify_ear_token
from coco_ai.kbs.errors import (
    AttestationError,
    PluginInternalError,
    PluginNotFound,
    ResourceDeleteUnconfirmed,
    TokenVerifierError,
)
from coco_ai.kbs.versions import TRUSTEE_VERSIONS
from tests.code_binding import APPROVED_IMAGE
from tests.trustee_dev.conftest import (
    error_type,
    handshake,
    start_stand,
    stop_stand,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=TRUSTEE_VERSIONS)
def pure(request, tmp_path_factory, admin_keys):
    """The stand-in as `request.param` with no extension at all."""
    running = start_stand(
        tmp_path_factory.mktemp("pure"), admin_keys, trustee_version=request.param
    )
    yield running
    stop_stand(running)


def _client(stand, cpu=None, devices=(), initdata=None) -> KbsClient:
    return KbsClient(
        stand.url,
        cpu or SampleAttester(),
        list(devices),
        initdata_toml=initdata,
        ca_cert=stand.ca,
        handshake_retries=1,
    )


# -- liveness and metrics (kbs/src/api_server.rs, kbs/src/prometheus/mod.rs) --------------


def test_healthz_only_from_v021_and_metrics_everywhere(pure):
    with pure.http() as http:
        healthz = http.get("/healthz")
        metrics = http.get("/metrics")
        refused = http.post("/metrics")
    assert healthz.status_code == (404 if pure.version == "0.20.0" else 200)
    assert metrics.status_code == 200
    assert "content-type" not in metrics.headers  # HttpResponse::Ok().body(report)
    assert refused.status_code == 405
    text = metrics.text
    for family in (
        "kbs_http_requests_total",
        "kbs_auth_requests_total",
        "kbs_attestation_requests_total",
        "kbs_policy_evaluations_total",
        "kbs_http_request_duration_seconds",
        "kbs_http_active_connections",
    ):
        assert f"# TYPE {family} " in text, family
    assert f'version="{pure.version}"' in text


def test_metrics_count_what_happened(pure):
    def value(text: str, sample: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(sample + " "))
        return float(line.rsplit(" ", 1)[1])

    with pure.http() as http:
        before = http.get("/metrics").text
    pure.admin.set_resource("coco-ai/metrics/counted", b"x")
    with _client(pure) as client:
        client.attest()
    with pure.http() as http:
        after = http.get("/metrics").text
    for sample, grew in (
        ("kbs_auth_requests_total", 1),
        ("kbs_auth_successes_total", 1),
        ("kbs_attestation_requests_total", 1),
        ("kbs_http_requests_total", 3),
    ):
        assert value(after, sample) - value(before, sample) == grew, sample
    assert 'kbs_resource_writes_total{resource_path="coco-ai/metrics/counted"} 1' in after
    assert 'kbs_attestation_successes_total{tee_type="sample"}' in after


def test_alive_is_version_aware(pure):
    assert pure.admin.alive()  # configured with the emulated version
    with KbsAdminClient(pure.url, auth=pure.admin._auth, ca_cert=pure.ca) as detecting:
        assert detecting.alive()  # /healthz, then /metrics on 404
    with KbsAdminClient(
        pure.url, auth=pure.admin._auth, ca_cert=pure.ca, trustee_version="0.21.0"
    ) as wrong:
        # A client told "0.21.0" probes /healthz only: a v0.20.0 KBS looks down to it.
        assert wrong.alive() == (pure.version != "0.20.0")


# -- revoke (kbs/src/plugins/implementations/resource/kv_storage.rs) ----------------------


def test_delete_of_an_absent_resource_is_plugin_internal_error(pure):
    with pure.http() as http:
        response = http.delete(
            "/kbs/v0/resource/coco-ai/revoke/never-there",
            headers={"Authorization": pure.auth_header()},
        )
    assert response.status_code == 401
    assert "content-type" not in response.headers
    assert response.json() == {
        "type": "https://github.com/confidential-containers/kbs/errors/PluginInternalError",
        "detail": "Plugin internal error",
    }
    pure.admin.set_resource("coco-ai/revoke/once", b"k")
    with pure.http() as http:
        deleted = http.delete(
            "/kbs/v0/resource/coco-ai/revoke/once", headers={"Authorization": pure.auth_header()}
        )
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert deleted.headers["content-type"] == "text/xml"
    with pytest.raises(ResourceDeleteUnconfirmed) as again:
        pure.admin.delete_resource("kbs:///coco-ai/revoke/once")
    assert again.value.path == "coco-ai/revoke/once"
    assert isinstance(again.value, PluginInternalError) and again.value.status == 401


# -- evidence (deps/verifier/src/sample*, kbs-types CompositeEvidence) --------------------


def test_guest_shaped_sample_evidence_with_initdata_is_accepted(pure):
    initdata = build_initdata(pure.url, pure.ca, {"io.coco-ai.run-id": "guest-shaped"})
    # guest-components' SampleAttester: {svn, report_data} only, no init_data field.
    with _client(pure, SampleAttester(), [SampleDeviceAttester()], initdata.toml) as client:
        token = client.attest()
    claims = verify_ear_token(token, pure.anchor, signer_pem=pure.signer)
    # Trustee reports the digest of the body it received; it checks nothing for `sample`.
    assert base64.b64decode(claims.init_data()) == initdata.digest()
    assert claims.init_data_claims()["io.coco-ai.run-id"] == "guest-shaped"


def test_sample_init_data_field_is_ignored_unless_the_extension_checks_it(
    pure, tmp_path, admin_keys
):
    sent = build_initdata(pure.url, pure.ca, {"io.coco-ai.run-id": "sent"})
    other = build_initdata(pure.url, pure.ca, {"io.coco-ai.run-id": "measured"})
    wrong_digest = SampleAttester(init_data_digest=other.digest())
    with _client(pure, wrong_digest, (), sent.toml) as client:
        claims = verify_ear_token(client.attest(), pure.anchor)
    assert base64.b64decode(claims.init_data()) == sent.digest()
    checking = start_stand(
        tmp_path,
        admin_keys,
        trustee_version=pure.version,
        extensions=frozenset({"sample-initdata-check"}),
    )
    try:
        with (
            _client(checking, wrong_digest, (), sent.toml) as client,
            pytest.raises(AttestationError, match="initdata digest mismatch"),
        ):
            client.attest()
    finally:
        stop_stand(checking)


def test_tee_evidence_without_additional_evidence_is_refused(pure):
    with pure.http() as http:
        hs = handshake(http)
        body = hs.attestation(gpus=0)
        del body["tee-evidence"]["additional_evidence"]
        response = hs.attest(body)
    assert response.status_code == 401
    assert error_type(response) == "AttestationError"
    assert "additional_evidence" in response.json()["detail"]


def test_sampledevice_list_yields_only_gpu0(pure, tmp_path, admin_keys):
    with _client(pure, SampleAttester(), [SampleDeviceAttester(count=3)]) as client:
        raw = verify_ear_token(client.attest(), pure.anchor).raw
    assert sorted(raw["submods"]) == ["cpu0", "gpu0"]
    gpu = raw["submods"]["gpu0"]["ear.veraison.annotated-evidence"]
    if pure.version == "main":  # commit f1340ff6 adds report_data to the claims
        assert set(gpu) == {"sampledevice", "report_data", "runtime_data_claims"}
        assert set(gpu["sampledevice"]) == {"svn"}
    else:
        assert gpu == {"sampledevice": {"svn": "2"}}
    multi = start_stand(
        tmp_path,
        admin_keys,
        trustee_version=pure.version,
        extensions=frozenset({"multi-gpu-sampledevice"}),
    )
    try:
        with _client(multi, SampleAttester(), [SampleDeviceAttester(count=3)]) as client:
            raw = verify_ear_token(client.attest(), multi.anchor).raw
        assert sorted(raw["submods"]) == ["cpu0", "gpu0", "gpu1", "gpu2"]
    finally:
        stop_stand(multi)


def test_policy_without_trust_claims_yields_status_none(pure):
    # attestation-service/src/ear_token/broker.rs: no rule -> trust_vector.set_all(0).
    pure.admin.set_attestation_policy("package policy\n\nallow := true\n", "default_gpu")
    try:
        with _client(pure, SampleAttester(), [SampleDeviceAttester()]) as client:
            raw = verify_ear_token(client.attest(), pure.anchor).raw
    finally:
        pure.admin.set_attestation_policy(
            policies.load("attestation_gpu_sampledevice"), "default_gpu"
        )
    gpu = raw["submods"]["gpu0"]
    assert gpu["ear.status"] == "none"
    assert set(gpu["ear.trustworthiness-vector"].values()) == {0}
    assert len(gpu["ear.trustworthiness-vector"]) == 8
    assert raw["submods"]["cpu0"]["ear.status"] == "affirming"


# -- malformed and deeply nested JSON (serde_json recursion limit) ------------------------


def test_deeply_nested_json_gets_the_endpoints_4xx(pure):
    deep = b"[" * 200_000
    just_too_deep = json.dumps({"policy": [[[]]]}).replace("[[[]]]", "[" * 128 + "]" * 128)
    auth = {"Authorization": pure.auth_header()}
    with pure.http() as http:
        hs = handshake(http)
        answers = {
            "auth": http.post("/kbs/v0/auth", content=deep),
            "attest": hs.attest(deep),
            "resource-policy": http.post("/kbs/v0/resource-policy", content=deep, headers=auth),
            "resource-policy 128": http.post(
                "/kbs/v0/resource-policy", content=just_too_deep.encode(), headers=auth
            ),
            "attestation-policy": http.post(
                "/kbs/v0/attestation-policy", content=deep, headers=auth
            ),
            "reference-value": http.post("/kbs/v0/reference-value", content=deep, headers=auth),
        }
        if pure.version == "main":
            answers["provisioner"] = http.post(
                "/kbs/v0/provisioner/provision", content=deep, headers=auth
            )
    expected = {
        "auth": "AttestationError",
        "attest": "AttestationError",
        "resource-policy": "ParsePolicyError",
        "resource-policy 128": "ParsePolicyError",
        "attestation-policy": "AttestationError",
        "reference-value": "RvpsError",
        "provisioner": "PluginInternalError",
    }
    for name, response in answers.items():
        assert response.status_code == 401, (name, response.text)
        assert error_type(response) == expected[name], name


# -- EAR encoding per version and separate CAs (attestation-service ear_token/broker.rs) ---


def test_tokens_are_encoded_as_the_version_encodes_them(pure):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with _client(pure) as client:
        token = client.attest()
    jwk = unverified_header(token)["jwk"]
    legacy = pure.version == "0.20.0"
    der = x509.load_pem_x509_certificate(pure.signer).public_bytes(serialization.Encoding.DER)
    standard = base64.b64encode(der).decode()
    url_unpadded = base64.urlsafe_b64encode(der).rstrip(b"=").decode()
    assert jwk["x5c"] == [url_unpadded if legacy else standard]
    assert jwk["alg"] == "ES256" and "kid" not in jwk
    claims = verify_ear_token(token, pure.anchor, signer_pem=pure.signer)
    assert ("iss" in claims.raw) != legacy


def test_tls_and_token_cas_are_separate(pure):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert pure.ca != pure.anchor
    tls_dir = pure.state_dir / "tls"
    tls_cert = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    tls_key = serialization.load_pem_private_key(
        (tls_dir / "server-key.pem").read_bytes(), password=None
    )
    with _client(pure) as client:
        genuine = verify_ear_token(client.attest(), pure.anchor).raw
        forged = sign_ear_token(dict(genuine), tls_key, [tls_cert])
        with pytest.raises(TokenVerifierError):
            verify_ear_token(forged, pure.anchor)
        with pytest.raises(TokenVerifierError):  # nor through the TLS CA: serverAuth EKU
            verify_ear_token(forged, pure.ca)
        pure.admin.set_resource("coco-ai/ca/separate", b"only for real tokens")
        with pytest.raises(TokenVerifierError):
            client.get_resource_with_token("coco-ai/ca/separate", forged)


# -- the provisioner plugin (main only: kbs/src/plugins/implementations/provisioner) ------


def _provisioner_initdata(url: str, ca: bytes, bound: str) -> str:
    base = build_initdata(url, ca, {"io.coco-ai.run-id": "vm"}).toml
    return base + f'"trustee.kbs.resource" = "{bound}"\n'


def test_provisioner_only_on_main(pure):
    if pure.version != "main":
        with pytest.raises(PluginNotFound):
            pure.admin.provision_vm("vm-a")
        with pure.http() as http:  # nor the project's old request shape
            old = http.post(
                "/kbs/v0/provisioner/provision",
                json={"bind": {"initdata_key": "io.coco-ai.run-id", "value": "r"}},
                headers={"Authorization": pure.auth_header()},
            )
        assert (old.status_code, error_type(old)) == (404, "PluginNotFound")
        return
    provisioned = pure.admin.provision_vm("vm-a", "team")
    expected = uuid.uuid5(uuid.UUID("feab5599-6854-52bc-95f0-0241c03e620a"), "team/vm-a")
    assert provisioned.uuid == str(expected)
    assert provisioned.resource_path == f"default/{expected}/root"
    assert pure.admin.provision_vm("vm-a", "team") == provisioned  # idempotent
    with pure.http() as http:
        old = http.post(
            "/kbs/v0/provisioner/provision",
            json={"bind": {"initdata_key": "io.coco-ai.run-id", "value": "r"}},
            headers={"Authorization": pure.auth_header()},
        )
    assert (old.status_code, error_type(old)) == (401, "PluginInternalError")

    # The resource policy also guards the provisioner plugin; the dev policy names only
    # `resource`, so this test allows any affirming CPU for its duration.
    pure.admin.set_resource_policy(
        "package policy\n\nimport rego.v1\n\ndefault allow := false\n\n"
        'allow if input.submods.cpu0["ear.status"] == "affirming"\n'
    )
    try:
        _provisioned_confdata_flow(pure, provisioned)
    finally:
        pure.admin.set_resource_policy(policies.resource_policy_text("dev", [APPROVED_IMAGE]))


def _provisioned_confdata_flow(pure, provisioned) -> None:
    toml = _provisioner_initdata(pure.url, pure.ca, provisioned.initdata_binding())
    with _client(pure, SampleAttester(), [SampleDeviceAttester()], toml) as client:
        token = client.attest()
        confdata = _provisioner_get(client, provisioned.resource_path)
    key = tomllib.loads(confdata.decode())["data"]["io.cryptsetup.key.text.root"]
    assert len(key) == 32 and key.isalnum()
    claims = verify_ear_token(token, pure.anchor)
    assert base64.b64decode(claims.init_data()) == hashlib.sha384(toml.encode()).digest()

    elsewhere = _provisioner_initdata(pure.url, pure.ca, "kbs+provisioner:///default/x/root")
    with _client(pure, SampleAttester(), [SampleDeviceAttester()], elsewhere) as client:
        client.attest()
        with pytest.raises(PluginInternalError):
            _provisioner_get(client, provisioned.resource_path)

    pure.admin.deprovision_vm(provisioned.uuid)
    pure.admin.deprovision_vm(provisioned.uuid)  # answers "deleted" whatever was stored
    with _client(pure, SampleAttester(), [SampleDeviceAttester()], toml) as client:
        client.attest()
        with pytest.raises(PluginInternalError):
            _provisioner_get(client, provisioned.resource_path)


def _provisioner_get(client: KbsClient, path: str) -> bytes:
    """GET /kbs/v0/provisioner/<path> over the client's attested session."""
    from coco_ai.kbs.client import SESSION_COOKIE, _raise_for

    response = client._http.request(
        "GET",
        f"/kbs/v0/provisioner/{path}",
        headers={"Cookie": f"{SESSION_COOKIE}={client._session}"},
    )
    _raise_for(response)
    return client.tee_key.decrypt(response.content)


def test_json_depth_limit_is_serde_jsons_and_ignores_strings():
    from coco_ai.trustee_dev import jsonbody

    assert jsonbody.loads("[" * 127 + "]" * 127) is not None
    with pytest.raises(jsonbody.JsonBodyError, match="recursion limit"):
        jsonbody.loads("[" * 128 + "]" * 128)
    text = json.dumps({"rego": "[" * 500 + '\\"{'})
    assert jsonbody.loads(text) == {"rego": "[" * 500 + '\\"{'}
    with pytest.raises(jsonbody.JsonBodyError):
        jsonbody.loads(b"\xff")
