"""The attested retrieval service over real HTTP on loopback: an attested caller gets a cited
answer; every unauthorised request gets the same 401; malformed and oversized requests get a
400/413 that never echoes what was sent."""

from __future__ import annotations

import json

import httpx
import pytest

from coco_ai.workloads.rag_serve.app import (
    ATTESTATION_HEADER,
    NONCE_HEADER,
    PROOF_HEADER,
    UNAUTHORIZED_BODY,
)
from coco_ai.workloads.rag_serve.client import (
    RagServiceClient,
    RagServiceError,
    ServiceTrust,
    ServiceVerificationError,
)
from tests.rag_serve.conftest import SERVICE_RUN

pytestmark = pytest.mark.timeout(600)


def client_for(service, trust, caller_guests, caller: str, **kwargs) -> RagServiceClient:
    from coco_ai.guest.client import GuestClient

    guest = GuestClient(caller_guests[caller].url)
    return RagServiceClient.from_guest(service.url, trust, caller_id=caller, guest=guest, **kwargs)


def test_attested_caller_gets_cited_answers(service, trust, caller_guests, repository) -> None:
    texts = {d.id: d.text for d in repository.documents}
    with client_for(service, trust, caller_guests, "alice") as client:
        claims = client.verify_service()
        assert claims["io.coco-ai.workload"] == "rag_serve"
        assert claims["io.coco-ai.rag-index-run"] == service.service.index_run_id

        doc = repository.documents[3]
        probe = doc.text.split(". ")[1] + "."
        out = client.retrieve(probe, k=4)
        assert out["index"]["manifest_digest"] == service.service.manifest_digest
        results = out["results"]
        assert [r["rank"] for r in results] == [1, 2, 3, 4]
        for r in results:  # every result cites its document and offsets exactly
            assert texts[r["doc_id"]][r["start"] : r["end"]] == r["text"]
        # the same search, straight on the loaded index in this process, ranks the same chunks
        direct = service.service.retriever.retrieve(probe, 4)
        assert [(r["doc_id"], r["chunk"]) for r in results] == [(h.doc_id, h.chunk) for h in direct]

        top = results[0]  # a chunk's own text finds that chunk first
        again = client.retrieve(top["text"], k=1)["results"][0]
        assert (again["doc_id"], again["chunk"]) == (top["doc_id"], top["chunk"])

        # OpenAI-compatible chat: the answer sentence comes from a cited chunk
        chat = client.chat([{"role": "user", "content": top["text"]}], top_k=3)
        assert chat["object"] == "chat.completion"
        content = chat["choices"][0]["message"]["content"]
        cited = chat["citations"][0]
        sentence = content.rsplit(" [", 1)[0]
        assert sentence and sentence in cited["text"]
        assert content.endswith(f"[{cited['doc_id']}#{cited['chunk']}]")
        assert texts[cited["doc_id"]][cited["start"] : cited["end"]] == cited["text"]


def _raw(service, headers: dict[str, str], body: bytes = b'{"query": "x"}') -> httpx.Response:
    return httpx.post(
        service.url + "/v1/retrieve",
        content=body,
        headers=headers,
        trust_env=False,
        timeout=60,
        verify=service.tls_context(),
    )


def _bearer(caller: str, credential: bytes) -> str:
    from coco_ai.kbs.wire import b64url_encode

    return f"Bearer {caller}.{b64url_encode(credential)}"


def _attestation(caller_guests, caller: str) -> tuple[str, bytes]:
    """The caller TEE's token and the private key it attests (as its guest API gives them)."""
    from coco_ai.guest.client import GuestClient

    with GuestClient(caller_guests[caller].url) as guest:
        return guest.get_token()


def _token(caller_guests, caller: str) -> str:
    return _attestation(caller_guests, caller)[0]


def _proof(
    caller_guests,
    signer: str,
    *,
    service_run: str = SERVICE_RUN,
    path: str = "/v1/retrieve",
    at: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Fresh proof-of-possession headers signed with ``signer``'s attested TEE key."""
    import secrets
    import time

    from coco_ai.workloads.rag_serve.signing import TeeSigner, request_signing_input

    nonce = nonce or secrets.token_urlsafe(24)
    when = int(time.time() if at is None else at)
    key = _attestation(caller_guests, signer)[1]
    signature = TeeSigner(key).sign(request_signing_input("POST", path, nonce, when, service_run))
    return {NONCE_HEADER: nonce, PROOF_HEADER: f"{when}.{signature}"}


def test_every_unauthorised_request_gets_the_same_401(
    service, caller_guests, credentials, clock_offset
) -> None:
    import time

    alice, bob, mallory = (_token(caller_guests, c) for c in ("alice", "bob", "mallory"))
    good = {"Authorization": _bearer("alice", credentials["alice"]), ATTESTATION_HEADER: alice}
    proven = {**good, **_proof(caller_guests, "alice")}
    assert _raw(service, proven).status_code == 200  # the baseline: this caller is admitted

    refused = {
        "no credential, no token": {},
        "credential without attestation": {"Authorization": good["Authorization"]},
        "attestation without credential": {ATTESTATION_HEADER: alice},
        "wrong credential": {
            "Authorization": _bearer("alice", credentials["bob"]),
            ATTESTATION_HEADER: alice,
        },
        # bob's own credential and attested TEE, presented as alice
        "another identity's credential": {
            "Authorization": _bearer("alice", credentials["bob"]),
            ATTESTATION_HEADER: bob,
        },
        # alice's credential, replayed from bob's TEE (its initdata names bob)
        "credential from a TEE of another identity": {
            "Authorization": good["Authorization"],
            ATTESTATION_HEADER: bob,
        },
        # attested, holds a credential Trustee released to it, but the service admits no mallory
        "caller not admitted by the service": {
            "Authorization": _bearer("mallory", credentials["mallory"]),
            ATTESTATION_HEADER: mallory,
        },
        "token tampered": {
            "Authorization": good["Authorization"],
            ATTESTATION_HEADER: alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB"),
        },
        "malformed authorization": {
            "Authorization": "Basic YWxpY2U6eA==",
            ATTESTATION_HEADER: alice,
        },
    }
    refused = {what: {**h, **_proof(caller_guests, "alice")} for what, h in refused.items()}
    # alice's credential and live token stolen by a TEE without alice's key: no proof, or one
    # by another key, for another service, request or time, or replayed
    refused["no proof of possession"] = good
    refused["proof by another TEE's key"] = {**good, **_proof(caller_guests, "mallory")}
    refused["proof for another service"] = {
        **good,
        **_proof(caller_guests, "alice", service_run="run-rag-serve-2"),
    }
    refused["proof for another request"] = {
        **good,
        **_proof(caller_guests, "alice", path="/v1/chat/completions"),
    }
    refused["stale proof"] = {**good, **_proof(caller_guests, "alice", at=time.time() - 600)}
    refused["replayed proof"] = proven
    for what, headers in refused.items():
        resp = _raw(service, headers, body=b"\xff" * 100_000)  # never read: no 400 or 413
        assert (resp.status_code, resp.content) == (401, UNAUTHORIZED_BODY), what

    # an expired attestation: the same token, presented after its exp (with a proof made then)
    clock_offset[0] = 24 * 3600
    try:
        late = {**good, **_proof(caller_guests, "alice", at=time.time() + clock_offset[0])}
        resp = _raw(service, late)
        assert (resp.status_code, resp.content) == (401, UNAUTHORIZED_BODY)
    finally:
        clock_offset[0] = 0.0
    assert _raw(service, {**good, **_proof(caller_guests, "alice")}).status_code == 200


def test_revoked_credential_is_refused(service, stack, caller_guests, credentials) -> None:
    from coco_ai.workloads.rag_serve.identity import credential_path

    carol = {"Authorization": _bearer("carol", credentials["carol"])}
    carol[ATTESTATION_HEADER] = _token(caller_guests, "carol")
    assert _raw(service, {**carol, **_proof(caller_guests, "carol")}).status_code == 200
    stack.admin.delete_resource(credential_path("carol"))  # the data owner revokes carol
    assert service.service.gate.refresh() == ["carol"]  # what the refresh thread does
    resp = _raw(service, {**carol, **_proof(caller_guests, "carol")})
    assert (resp.status_code, resp.content) == (401, UNAUTHORIZED_BODY)
    # others are unaffected
    assert "alice" in service.service.gate.admitted


MARKER = "Zq7-secret-query-marker"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json " + MARKER.encode(), 400, "body is not JSON"),
        (b'{"query": "\xff\xfe' + MARKER.encode() + b'"}', 400, "body is not UTF-8"),
        (json.dumps([MARKER]).encode(), 400, "body is not a JSON object"),
        (json.dumps({"query": ""}).encode(), 400, "query must be a non-empty string"),
        (json.dumps({"query": MARKER * 40}).encode(), 400, "query is over 512 characters"),
        (json.dumps({"query": MARKER, "k": 11}).encode(), 400, "k must be an integer in [1, 10]"),
        (json.dumps({"query": MARKER, "k": "3"}).encode(), 400, "k must be an integer in [1, 10]"),
        (json.dumps({"query": MARKER, MARKER: 1}).encode(), 400, "unknown field in body"),
        (json.dumps({"query": MARKER * 200}).encode(), 413, "body over 4096 bytes"),
    ],
)
def test_malformed_or_oversized_requests_are_refused_without_echo(
    service, trust, caller_guests, body, status, reason
) -> None:
    with client_for(service, trust, caller_guests, "alice") as client:
        got_status, got_body = client.post_raw("/v1/retrieve", body)  # signed, verified
    assert got_status == status
    assert json.loads(got_body) == {"error": reason}
    assert MARKER.encode() not in got_body


def test_chat_requests_are_validated(service, trust, caller_guests) -> None:
    with client_for(service, trust, caller_guests, "alice") as client:
        for messages, reason in [
            ([], "messages must be a non-empty list"),
            ([{"role": "system", "content": MARKER}], "messages holds no user message"),
            ([{"role": "tool", "content": MARKER}], "messages[0] must be {role, content}"),
            ([{"role": "user", "content": MARKER}] * 17, "messages holds more than 16 entries"),
        ]:
            with pytest.raises(RagServiceError) as err:
                client.chat(messages)
            assert (err.value.status, err.value.reason) == (400, reason)
            assert MARKER not in str(err.value)


def test_client_refuses_a_service_it_cannot_verify(service, stack, trust, caller_guests) -> None:
    unapproved = ServiceTrust(trust.trust_anchor_pem, frozenset({"sha256:" + "0" * 64}))
    with (
        client_for(service, unapproved, caller_guests, "alice") as client,
        pytest.raises(ServiceVerificationError, match="is not approved"),
    ):
        client.retrieve("anything")
    other_index = ServiceTrust(
        trust.trust_anchor_pem,
        trust.approved_image_digests,
        index_manifest_digest="sha256:" + "1" * 64,
    )
    with (
        client_for(service, other_index, caller_guests, "alice") as client,
        pytest.raises(ServiceVerificationError, match="serves index"),
    ):
        client.retrieve("anything")
    # a service attested under another anchor (here: the stand-in's TLS CA) is not the owner's
    wrong_anchor = ServiceTrust(stack.tls_ca_pem, trust.approved_image_digests)
    with (
        client_for(service, wrong_anchor, caller_guests, "alice") as client,
        pytest.raises(ServiceVerificationError, match="does not verify"),
    ):
        client.verify_service()


def test_probe_caller_cli(tmp_path, service, stack, trust, caller_guests) -> None:
    import subprocess
    import sys

    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(stack.trust_anchor_pem)
    question = "Which torque applies to the " + MARKER
    config = {
        "service_url": service.url,
        "caller_id": "alice",
        "guest_api_url": caller_guests["alice"].url,
        "trust_anchor_file": str(anchor),
        "approved_image_digests": sorted(trust.approved_image_digests),
        "index_manifest_digest": service.service.manifest_digest,
        "question": question,
        "k": 3,
    }
    path = tmp_path / "probe.json"

    def probe(**override) -> subprocess.CompletedProcess:
        path.write_text(json.dumps({**config, **override}))
        module = "coco_ai.workloads.rag_serve.client"
        return subprocess.run(
            [sys.executable, "-m", module, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = probe()
    assert ok.returncode == 0, ok.stderr
    assert "3 results with citations" in ok.stdout and MARKER not in ok.stdout + ok.stderr
    # mallory's TEE has a credential, but not one the service admits
    refused = probe(caller_id="mallory", guest_api_url=caller_guests["mallory"].url)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "rag-client: error: HTTP 401: unauthorized"


@pytest.mark.parametrize("impostor_tls", [False, True], ids=["http", "https-own-certificate"])
def test_an_impostor_relaying_the_attestation_cannot_answer(
    tmp_path, service, trust, caller_guests, impostor_tls
) -> None:
    """An impostor relays the real service's (genuine) attestation. Over plain HTTP its answer
    is refused for want of the attested key's signature; over TLS with its own certificate the
    client, pinned to the attested key's certificate, never even sends it the query."""
    import threading
    import time

    import uvicorn
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from coco_ai.guest.client import GuestClient
    from coco_ai.guest.emulator import bind_loopback
    from coco_ai.workloads.rag_serve.app import tee_key_certificate

    queries = []

    async def relay_attestation(request):
        real = httpx.get(
            service.url + "/v1/attestation", trust_env=False, verify=service.tls_context()
        )
        return Response(real.content, media_type="application/json")

    async def fake_answer(request):
        queries.append(await request.body())
        return JSONResponse({"results": [], "index": {}})

    app = Starlette(
        routes=[
            Route("/v1/attestation", relay_attestation),
            Route("/v1/retrieve", fake_answer, methods=["POST"]),
        ]
    )
    tls = {}
    if impostor_tls:
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (tmp_path / "key.pem").write_bytes(key)
        (tmp_path / "cert.pem").write_bytes(tee_key_certificate(key))
        tls = {"ssl_keyfile": str(tmp_path / "key.pem"), "ssl_certfile": str(tmp_path / "cert.pem")}
    sock = bind_loopback("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **tls))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    scheme = "https" if impostor_tls else "http"
    impostor = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    expected = "certificate verify failed" if impostor_tls else "not signed by the attested"
    try:
        guest = GuestClient(caller_guests["alice"].url)
        with RagServiceClient.from_guest(impostor, trust, caller_id="alice", guest=guest) as c:
            c.verify_service()  # the relayed token itself is genuine
            with pytest.raises(ServiceVerificationError, match=expected):
                c.retrieve("anything")
    finally:
        server.should_exit = True
        thread.join(10)
    assert len(queries) == (0 if impostor_tls else 1)


def test_nothing_confidential_in_the_service_log_or_left_on_disk(
    service, service_log, service_plaintext_dirs, credentials, repository
) -> None:
    import base64

    log = service_log.getvalue()
    assert "index of run" in log and "caller(s) admitted" in log  # it did log, counts only
    for credential in credentials.values():
        assert base64.urlsafe_b64encode(credential).rstrip(b"=").decode() not in log
        assert credential.hex() not in log
    for doc in repository.documents:
        assert doc.text[:40] not in log and doc.title not in log
    assert MARKER not in log
    # the decrypted index dir is gone once the service serves
    assert service_plaintext_dirs, "the service made no plaintext dir: the check checks nothing"
    assert not [d for d in service_plaintext_dirs if d.exists()]
