"""The retrieval service's HTTP API (docs/formats/rag.md §5): Starlette on uvicorn.

- ``GET /v1/attestation`` (public): ``{"token": <EAR token>, "signing_key": <its tee-pubkey
  JWK>, "certificate": <the TLS certificate, PEM, for that same key>}``. The token is this
  TEE's, so a caller proves the service's code, initdata and key — and pins the TLS certificate
  of that key — before it sends anything (coco_ai.workloads.rag_serve.client).
- ``POST /v1/retrieve`` ``{"query", "k"?}`` → ``{"results": [{rank, score, doc_id, chunk,
  start, end, title, text}], "index": {run_id, manifest_digest}}``.
- ``POST /v1/chat/completions`` (OpenAI-compatible subset): the last ``user`` message is the
  question; the answer is the sentence of the top chunks that best matches it (extractive, the
  default) or the answer model's greedy answer from the top chunks (generative), with citations.

Every response carries ``X-CoCo-AI-Signature``: ES256 (raw r||s, base64url) by the attested TEE
key over ``response_signing_input`` (method, path, the caller's nonce, status, body digest).

Access: callers send ``Authorization: Bearer <caller id>.<base64url credential>``,
``X-CoCo-AI-Attestation: <their EAR token>``, a fresh ``X-CoCo-AI-Nonce`` and
``X-CoCo-AI-Proof: <unix seconds>.<ES256 signature>`` by the TEE key their token attests over
``request_signing_input`` (method, path, nonce, time, this service's run id): proof that the
caller holds the key, so a stolen credential and token are not enough, and a proof is good
once, for this service, within ``PROOF_WINDOW_S``. Anything else gets 401 with one fixed body,
before the request body is read. Limits (config ``limits``) apply only after that: a body over
``max_body_bytes`` is 413, anything malformed 400 naming the field, never echoing content.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coco_ai.workloads.rag_serve.config import Limits
from coco_ai.workloads.rag_serve.service import LoadedService, RequestProof
from coco_ai.workloads.rag_serve.signing import (
    TeeSigner,
    request_signing_input,
    response_signing_input,
)

SIGNATURE_HEADER = "X-CoCo-AI-Signature"
NONCE_HEADER = "X-CoCo-AI-Nonce"
ATTESTATION_HEADER = "X-CoCo-AI-Attestation"
PROOF_HEADER = "X-CoCo-AI-Proof"
UNAUTHORIZED_BODY = b'{"error":"unauthorized"}'
MODEL_PREFIX = "coco-ai-rag"  # + "-extractive" or "-generative" (the service's answer_mode)
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_BEARER = re.compile(r"Bearer ([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.([A-Za-z0-9_-]{43})")
_PROOF = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{86})")


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def tee_key_certificate(tee_key_pem: bytes, *, lifetime_s: int = 7 * 24 * 3600) -> bytes:
    """A self-signed X.509 certificate (PEM) for the TEE key: the service's TLS certificate. It
    proves nothing by itself; a caller trusts it only because its public key is the one the
    service's EAR token attests (coco_ai.workloads.rag_serve.client)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509.oid import NameOID

    key = load_pem_private_key(tee_key_pem, password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coco-ai rag_serve TEE key")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def build_app(
    service: LoadedService,
    limits: Limits,
    *,
    default_k: int,
    certificate_pem: bytes | None = None,
) -> Starlette:
    from coco_ai.guest.initdata import RUN_ID_KEY
    from coco_ai.kbs.ear import unverified_claims
    from coco_ai.kbs.wire import b64url_decode

    _, tee_key_pem = service.attestation()
    signer = TeeSigner(tee_key_pem)
    own_run = service.claims[RUN_ID_KEY]

    def reply(request: Request, status: int, body: bytes) -> Response:
        nonce = request.headers.get(NONCE_HEADER, "")
        nonce = nonce if _NONCE.fullmatch(nonce) else ""
        signature = signer.sign(
            response_signing_input(request.method, request.url.path, nonce, status, body)
        )
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={SIGNATURE_HEADER: signature, "Cache-Control": "no-store"},
        )

    def json_reply(request: Request, status: int, doc: Any) -> Response:
        return reply(request, status, json.dumps(doc, ensure_ascii=False).encode())

    async def authorized(request: Request) -> bool:
        match = _BEARER.fullmatch(request.headers.get("authorization", ""))
        token = request.headers.get(ATTESTATION_HEADER, "")
        caller, credential = (match.group(1), match.group(2)) if match else ("", "A" * 43)
        try:
            presented = b64url_decode(credential)
        except ValueError:
            presented = b""
        proof = _PROOF.fullmatch(request.headers.get(PROOF_HEADER, ""))
        nonce = request.headers.get(NONCE_HEADER, "")
        timestamp, signature = (int(proof.group(1)), proof.group(2)) if proof else (0, "A" * 86)
        possession = RequestProof(
            nonce,
            timestamp,
            request_signing_input(request.method, request.url.path, nonce, timestamp, own_run),
            signature,
        )
        ok = await run_in_threadpool(service.gate.admits, caller, presented, token, possession)
        return bool(match) and bool(proof) and bool(_NONCE.fullmatch(nonce)) and ok

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and (
            not declared.isdigit() or int(declared) > limits.max_body_bytes
        ):
            raise _BadRequest(413, f"body over {limits.max_body_bytes} bytes")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limits.max_body_bytes:
                raise _BadRequest(413, f"body over {limits.max_body_bytes} bytes")
        try:
            doc = json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError:
            raise _BadRequest(400, "body is not UTF-8") from None
        except ValueError:
            raise _BadRequest(400, "body is not JSON") from None
        if not isinstance(doc, dict):
            raise _BadRequest(400, "body is not a JSON object")
        return doc

    def query_text(value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _BadRequest(400, f"{field} must be a non-empty string")
        if len(value) > limits.max_query_chars:
            raise _BadRequest(400, f"{field} is over {limits.max_query_chars} characters")
        return value

    def top_k(doc: dict[str, Any], field: str) -> int:
        k = doc.get(field, default_k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
            raise _BadRequest(400, f"{field} must be an integer in [1, {limits.max_k}]")
        return k

    def endpoint(handler):
        async def wrapped(request: Request) -> Response:
            if not await authorized(request):
                return reply(request, 401, UNAUTHORIZED_BODY)
            try:
                doc = await read_json(request)
                return json_reply(request, 200, await handler(doc))
            except _BadRequest as exc:
                return json_reply(request, exc.status, {"error": exc.reason})

        return wrapped

    index_ref = {"run_id": service.index_run_id, "manifest_digest": service.manifest_digest}

    async def retrieve(doc: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(doc) - {"query", "k"})
        if unknown:
            raise _BadRequest(400, "unknown field in body")
        query, k = query_text(doc.get("query"), "query"), top_k(doc, "k")
        hits = await run_in_threadpool(service.retriever.retrieve, query, k)
        return {"results": [h.to_dict() for h in hits], "index": index_ref}

    async def chat(doc: dict[str, Any]) -> dict[str, Any]:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(400, "messages must be a non-empty list")
        if len(messages) > limits.max_messages:
            raise _BadRequest(400, f"messages holds more than {limits.max_messages} entries")
        question = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise _BadRequest(400, f"messages[{i}] must be {{role, content}}")
            content = query_text(m.get("content"), f"messages[{i}].content")
            if m["role"] == "user":
                question = content
        if question is None:
            raise _BadRequest(400, "messages holds no user message")
        if doc.get("stream"):
            raise _BadRequest(400, "stream is not supported")
        k = top_k(doc, "top_k")
        answer, cited = await run_in_threadpool(service.retriever.answer, question, k)
        if cited:
            content = answer + "".join(f" [{c.doc_id}#{c.chunk}]" for c in cited)
        else:
            content = "No indexed document answers this question."
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{MODEL_PREFIX}-{service.retriever.answer_mode}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "citations": [{**h.citation(), "title": h.title, "text": h.text} for h in cited],
            "index": index_ref,
        }

    async def attestation(request: Request) -> Response:
        token, _ = await run_in_threadpool(service.attestation)
        key = unverified_claims(token).tee_pubkey()
        public = {k: key[k] for k in ("kty", "crv", "x", "y")}
        doc = {"token": token, "signing_key": public}
        if certificate_pem is not None:
            doc["certificate"] = certificate_pem.decode()
        return json_reply(request, 200, doc)

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_reply(request, 404, {"error": "not found"})

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_reply(request, 405, {"error": "method not allowed"})

    return Starlette(
        routes=[
            Route("/v1/attestation", attestation, methods=["GET"]),
            Route("/v1/retrieve", endpoint(retrieve), methods=["POST"]),
            Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
