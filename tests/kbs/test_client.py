"""KbsClient against an in-process KBS (httpx.MockTransport): the RCAR handshake, cookie and
Bearer modes, the re-attest limit, handshake retries, typed errors, path validation."""

from __future__ import annotations

import json

import httpx
import pytest

from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.kbs.client import KbsClient, get_resource_with_token
from coco_ai.kbs.ear import verify_ear_token
from coco_ai.kbs.errors import (
    AttestationError,
    InvalidRequestPath,
    KbsUnavailable,
    PluginInternalError,
    PolicyDenied,
    ProtocolVersionError,
    TokenNotFound,
    TokenVerifierError,
    UnexpectedResponse,
)
from coco_ai.kbs.jwe import TeeKeyPair

from .conftest import KBS_URL

INITDATA = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"io.coco-ai.run-id" = "run-1"\n'


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(kbs, devices=(), **kwargs) -> KbsClient:
    kwargs.setdefault("sleep", Sleeps())
    return KbsClient(KBS_URL, SampleAttester(), devices, transport=kbs.transport(), **kwargs)


def test_cookie_mode_handshake_and_resource(fake_kbs):
    client = make_client(fake_kbs)
    assert client.get_resource("kbs:///default/key/one") == b"secret-one"
    assert fake_kbs.auth_bodies == [
        {
            "version": "0.4.0",
            "tee": "sample",
            "extra-params": {"supported-hash-algorithms": ["sha384"]},
        }
    ]
    attestation = fake_kbs.attestations[0]
    assert set(attestation) == {"runtime-data", "tee-evidence"}  # no init-data given
    assert attestation["runtime-data"]["tee-pubkey"] == client.tee_key.public_jwk()
    assert attestation["tee-evidence"]["additional_evidence"] == ""
    claims = verify_ear_token(client.token, fake_kbs.ca.anchor_pem)
    assert claims.tee_pubkey() == client.tee_key.public_jwk()
    # The session is reused: a second fetch needs no new handshake.
    assert client.get_resource("default/key/one") == b"secret-one"
    assert fake_kbs.count("POST", "/auth") == 1
    get = [r for r in fake_kbs.requests if r.method == "GET"][-1]
    assert get.headers["cookie"].startswith("kbs-session-id=")
    assert "authorization" not in get.headers


def test_composite_evidence_and_initdata(fake_kbs):
    client = make_client(fake_kbs, devices=[SampleDeviceAttester(count=3)], initdata_toml=INITDATA)
    claims = verify_ear_token(client.attest(), fake_kbs.ca.anchor_pem)
    assert claims.gpu_submods() == ["gpu0", "gpu1", "gpu2"]
    assert claims.init_data_claims() == {"io.coco-ai.run-id": "run-1"}
    attestation = fake_kbs.attestations[0]
    assert attestation["init-data"] == {"format": "toml", "body": INITDATA}
    additional = attestation["tee-evidence"]["additional_evidence"]
    assert isinstance(additional, str)
    assert len(json.loads(additional)["sampledevice"]["device_evidence_list"]) == 3


def test_rsa_tee_key(fake_kbs):
    client = make_client(fake_kbs, tee_key=TeeKeyPair.generate("RSA-OAEP-256"))
    assert client.get_resource("kbs:///default/key/one") == b"secret-one"
    assert fake_kbs.attestations[0]["runtime-data"]["tee-pubkey"]["kty"] == "RSA"


@pytest.mark.parametrize(
    "extra",
    ["", {}, {"selected-hash-algorithm": "sha384"}, '{"selected-hash-algorithm":"sha384"}', None],
)
def test_challenge_extra_params_string_or_object(fake_kbs, extra):
    fake_kbs.extra_params = extra
    assert make_client(fake_kbs).get_resource("default/key/one") == b"secret-one"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"selected-hash-algorithm": "sha512"}, AttestationError),
        ('{"selected-hash-algorithm":"sm3"}', AttestationError),
        ("not json", UnexpectedResponse),
        ([1, 2], UnexpectedResponse),
    ],
)
def test_challenge_extra_params_refused(fake_kbs, extra, error):
    fake_kbs.extra_params = extra
    client = make_client(fake_kbs)
    with pytest.raises(error):
        client.attest()
    assert fake_kbs.count("POST", "/attest") == 0


def test_bearer_mode(fake_kbs):
    client = make_client(fake_kbs)
    token = client.attest()
    fake_kbs.sessions.clear()  # no cookie can help: only the token authorises
    assert client.get_resource_with_token("kbs:///default/key/one", token) == b"secret-one"
    get = fake_kbs.requests[-1]
    assert get.headers["authorization"] == f"Bearer {token}"
    assert "cookie" not in get.headers


def test_bearer_mode_without_attester_like_a_workload(fake_kbs):
    # What a workload does with /aa/token's {token, tee_keypair}.
    client = make_client(fake_kbs)
    token = client.attest()
    key = TeeKeyPair.from_pem(client.tee_key.private_pem())
    data = get_resource_with_token(
        KBS_URL, "default/key/one", token, key, transport=fake_kbs.transport()
    )
    assert data == b"secret-one"


def test_bearer_mode_refuses_a_forged_token(fake_kbs):
    client = make_client(fake_kbs)
    header, payload, _sig = client.attest().split(".")
    fake_kbs.sessions.clear()
    with pytest.raises(TokenVerifierError):
        client.get_resource_with_token("default/key/one", f"{header}.{payload}.AAAA")


def test_401_re_attests_at_most_three_times(fake_kbs):
    fake_kbs.reject_resource = [TokenNotFound() for _ in range(10)]
    client = make_client(fake_kbs)
    with pytest.raises(TokenNotFound) as info:
        client.get_resource("default/key/one")
    assert info.value.status == 401
    assert fake_kbs.count("GET", "/default/key/one") == 3
    assert fake_kbs.count("POST", "/auth") == 3


def test_401_then_success_after_re_attest(fake_kbs):
    fake_kbs.reject_resource = [TokenNotFound(), TokenVerifierError()]
    client = make_client(fake_kbs)
    assert client.get_resource("default/key/one") == b"secret-one"
    assert fake_kbs.count("GET", "/default/key/one") == 3
    assert fake_kbs.count("POST", "/auth") == 3


@pytest.mark.parametrize("status", [401, 403])
def test_policy_denial_is_final_and_distinguishable(fake_kbs, status):
    fake_kbs.reject_resource = [PolicyDenied(status=status)]
    client = make_client(fake_kbs)
    with pytest.raises(PolicyDenied) as info:
        client.get_resource("default/key/one")
    assert info.value.variant == "PolicyDeny" and info.value.status == status
    assert fake_kbs.count("GET", "/default/key/one") == 1
    assert fake_kbs.count("POST", "/auth") == 1


def test_policy_denial_from_the_policy(fake_kbs):
    fake_kbs.allow = lambda claims, path: path != "default/key/one"
    with pytest.raises(PolicyDenied):
        make_client(fake_kbs).get_resource("default/key/one")


def test_missing_resource_surfaces_as_plugin_internal_error(fake_kbs):
    with pytest.raises(PluginInternalError):
        make_client(fake_kbs).get_resource("default/key/absent")


def test_404_is_final(fake_kbs):
    fake_kbs.reject_resource = [InvalidRequestPath(status=404)]
    with pytest.raises(InvalidRequestPath):
        make_client(fake_kbs).get_resource("default/key/one")
    assert fake_kbs.count("GET", "/default/key/one") == 1


def _connect_error(request):
    raise httpx.ConnectError("connection refused", request=request)


def _bad_gateway(request):
    return httpx.Response(503, text="<html>upstream down</html>")


def test_handshake_retries_transient_failures_with_backoff(fake_kbs):
    fake_kbs.fail_auth = [_connect_error, _bad_gateway, _connect_error]
    sleeps = Sleeps()
    client = make_client(fake_kbs, retry_delay=0.5, sleep=sleeps)
    assert client.get_resource("default/key/one") == b"secret-one"
    assert sleeps == [0.5, 1.0, 2.0]
    assert fake_kbs.count("POST", "/auth") == 4


def test_handshake_gives_up_after_the_retry_budget(fake_kbs):
    fake_kbs.fail_auth = [_connect_error] * 10
    sleeps = Sleeps()
    client = make_client(fake_kbs, handshake_retries=4, sleep=sleeps)
    with pytest.raises(KbsUnavailable):
        client.attest()
    assert fake_kbs.count("POST", "/auth") == 4
    assert len(sleeps) == 3


def test_protocol_version_mismatch_is_typed_and_not_retried(fake_kbs):
    def mismatch(request):
        body = {
            "type": "https://github.com/confidential-containers/kbs/errors/AttestationError",
            "detail": "Attestation error: RCAR handshake Auth failed: KBS Client Protocol "
            "Version Mismatch: expect =0.5.0 while the request is 0.4.0",
        }
        return httpx.Response(401, json=body)

    fake_kbs.fail_auth = [mismatch]
    sleeps = Sleeps()
    with pytest.raises(ProtocolVersionError):
        make_client(fake_kbs, sleep=sleeps).attest()
    assert sleeps == [] and fake_kbs.count("POST", "/auth") == 1


class LyingAttester:
    """Reports evidence bound to something other than what it was asked to bind."""

    tee = "sample"

    def evidence(self, report_data: bytes):
        return SampleAttester().evidence(bytes(48))


def test_evidence_binding_failure_is_not_retried(fake_kbs):
    sleeps = Sleeps()
    client = KbsClient(KBS_URL, LyingAttester(), transport=fake_kbs.transport(), sleep=sleeps)
    with pytest.raises(AttestationError, match="report data"):
        client.attest()
    assert sleeps == [] and client.token is None


def test_changed_key_after_attest_is_refused(fake_kbs):
    # The evidence binds the key in runtime-data: evidence for one key cannot carry another.
    class SwappingKbs:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, request):
            if request.url.path.endswith("/attest"):
                body = json.loads(request.content)
                body["runtime-data"]["tee-pubkey"] = TeeKeyPair.generate().public_jwk()
                request = httpx.Request(
                    request.method, request.url, headers=request.headers, json=body
                )
            return self.inner.handle(request)

    client = KbsClient(
        KBS_URL, SampleAttester(), transport=httpx.MockTransport(SwappingKbs(fake_kbs))
    )
    with pytest.raises(AttestationError):
        client.attest()


def test_auth_without_cookie_is_unexpected(fake_kbs):
    fake_kbs.fail_auth = [
        lambda request: httpx.Response(200, json={"nonce": "bm9uY2U=", "extra-params": ""})
    ]
    with pytest.raises(UnexpectedResponse, match="cookie"):
        make_client(fake_kbs, handshake_retries=1).attest()


@pytest.mark.parametrize(
    "uri",
    ["kbs:///default/../one", "kbs:///default/%2e%2e/one", "default\\key\\one", "a/b", "a/b/c/d"],
)
def test_bad_resource_paths_never_reach_the_network(fake_kbs, uri):
    with pytest.raises(ValueError):
        make_client(fake_kbs).get_resource(uri)
    assert fake_kbs.requests == []


def test_two_attesters_of_one_kind_are_refused(fake_kbs):
    client = make_client(fake_kbs, devices=[SampleDeviceAttester(), SampleDeviceAttester()])
    with pytest.raises(ValueError, match="one attester"):
        client.attest()


@pytest.mark.parametrize(
    "url",
    ["http://kbs.example:8080", "ftp://127.0.0.1", "https://kbs/kbs/v0", "https://kbs?x=1", "kbs"],
)
def test_url_validation(url):
    with pytest.raises(ValueError):
        KbsClient(url, SampleAttester())


def test_plain_http_allowed_on_loopback_or_knowingly():
    KbsClient("http://127.0.0.1:8080", SampleAttester()).close()
    KbsClient("http://localhost:8080", SampleAttester()).close()
    KbsClient("http://kbs.example:8080", SampleAttester(), allow_insecure_http=True).close()
    KbsClient("https://kbs.example:8080/", SampleAttester()).close()


def test_repr_carries_no_key_material(fake_kbs):
    client = make_client(fake_kbs)
    client.attest()
    text = repr(client)
    assert client.tee_key.public_jwk()["x"] not in text
    assert client.token not in text
