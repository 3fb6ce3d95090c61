"""Fixtures for the KBS client tests: a token-signing CA and an in-process KBS.

`FakeKbs` is an httpx.MockTransport handler (an injected transport, not a patch) that speaks
Trustee's wire protocol strictly enough to catch client mistakes: it checks the protocol version,
the session cookie, the nonce, and recomputes the runtime-data bindings of the CPU and device
evidence byte for byte before it issues an ES256 EAR token; resources come back as JWE to the
attested key. Real-HTTP tests against the full stand-in live in tests/trustee_dev.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pki import make_cert

from coco_ai.kbs.ear import TRUSTEE_EAT_PROFILE, EarClaims, sign_ear_token, verify_ear_token
from coco_ai.kbs.errors import (
    AttestationError,
    KbsError,
    PluginInternalError,
    PolicyDenied,
    TokenNotFound,
    error_body,
    error_status,
)
from coco_ai.kbs.jwe import encrypt_for_tee
from coco_ai.kbs.wire import cpu_runtime_data_digest, device_runtime_data_digest

KBS_URL = "https://kbs.test"


@dataclass
class TokenCa:
    """A root CA, an intermediate CA and an EAR signer leaf (P-256)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @property
    def anchor_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf, self.inter]

    def sign(self, claims: dict) -> str:
        return sign_ear_token(claims, self.leaf_key, self.chain)


def new_token_ca(name: str = "test", *, start: dt.datetime | None = None, days=30) -> TokenCa:
    def cert(subject, issuer, key, signer, ca):
        return make_cert(subject, issuer, key.public_key(), signer, ca=ca, days=days, start=start)

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = cert(f"{name} root", f"{name} root", root_key, root_key, True)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = cert(f"{name} inter", f"{name} root", inter_key, root_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(f"{name} signer", f"{name} inter", leaf_key, inter_key, False)
    return TokenCa(root_key, root, inter_key, inter, leaf_key, leaf)


@pytest.fixture(scope="session")
def token_ca() -> TokenCa:
    return new_token_ca()


def ear_claims(tee_pubkey: dict, *, gpus: int = 0, iat: int | None = None, lifetime=300) -> dict:
    iat = int(time.time()) if iat is None else iat
    vector = {"instance-identity": 0, "configuration": 2, "executables": 2, "hardware": 2}
    submods = {
        "cpu0": {
            "ear.status": "affirming",
            "ear.trustworthiness-vector": vector,
            "ear.appraisal-policy-id": "default",
            "ear.veraison.annotated-evidence": {
                "sample": {"svn": "1"},
                "init_data": None,
                "init_data_claims": None,
                "report_data": "00" * 48,
                "runtime_data_claims": {"nonce": "n", "tee-pubkey": tee_pubkey},
            },
        }
    }
    for i in range(gpus):
        submods[f"gpu{i}"] = {
            "ear.status": "affirming",
            "ear.trustworthiness-vector": vector,
            "ear.veraison.annotated-evidence": {"sampledevice": {"svn": "2"}},
        }
    return {
        "eat_profile": TRUSTEE_EAT_PROFILE,
        "iat": iat,
        "exp": iat + lifetime,
        "ear.verifier-id": {"developer": "https://confidentialcontainers.org", "build": "test"},
        "submods": submods,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class FakeKbs:
    """In-process KBS. Knobs: `extra_params`, `allow`, `resources`, `fail_auth` (queue of
    callables returning a response or raising), `reject_resource` (queue of KbsErrors)."""

    ca: TokenCa
    extra_params: object = ""
    allow: Callable[[EarClaims, str], bool] = lambda claims, path: True
    resources: dict[str, bytes] = field(default_factory=dict)
    fail_auth: list[Callable[[httpx.Request], httpx.Response]] = field(default_factory=list)
    reject_resource: list[KbsError] = field(default_factory=list)
    sessions: dict[str, dict] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    attestations: list[dict] = field(default_factory=list)
    auth_bodies: list[dict] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path.endswith(suffix))

    # -- dispatch ---------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        try:
            if path == "/kbs/v0/auth" and request.method == "POST":
                if self.fail_auth:
                    return self.fail_auth.pop(0)(request)
                return self._auth(request)
            if path == "/kbs/v0/attest" and request.method == "POST":
                return self._attest(request)
            if path.startswith("/kbs/v0/resource/") and request.method == "GET":
                return self._resource(request, path[len("/kbs/v0/resource/") :])
        except KbsError as err:
            return httpx.Response(error_status(err), json=error_body(err))
        return httpx.Response(404, json={"type": "x", "detail": "no route"})

    def _auth(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.auth_bodies.append(body)
        if body.get("version") != "0.4.0":
            raise AttestationError(
                "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version "
                f"Mismatch: expect =0.4.0 while the request is {body.get('version')}"
            )
        session = secrets.token_hex(16)
        nonce = _b64(secrets.token_bytes(32))
        self.sessions[session] = {"nonce": nonce, "tee": body["tee"], "token": None}
        return httpx.Response(
            200,
            json={"nonce": nonce, "extra-params": self.extra_params},
            headers={
                "Set-Cookie": f"kbs-session-id={session}; Expires=Thu, 26 Nov 2026 03:20:00 GMT"
            },
        )

    def _session(self, request: httpx.Request) -> tuple[str, dict] | None:
        cookie = request.headers.get("cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "kbs-session-id" and value in self.sessions:
                return value, self.sessions[value]
        return None

    def _attest(self, request: httpx.Request) -> httpx.Response:
        found = self._session(request)
        if found is None:
            raise AttestationError("Attestation error: RCAR handshake Attest failed")
        session_id, session = found
        att = json.loads(request.content)
        self.attestations.append(att)
        runtime = att["runtime-data"]
        if runtime["nonce"] != session["nonce"]:
            raise AttestationError("Attestation error: nonce mismatch")
        pubkey = runtime["tee-pubkey"]
        tee_ev = att["tee-evidence"]
        additional = tee_ev["additional_evidence"]
        if not isinstance(additional, str):
            raise AttestationError("Attestation error: additional_evidence is not a string")
        cpu_digest = cpu_runtime_data_digest(session["nonce"], pubkey, additional)
        if tee_ev["primary_evidence"]["report_data"] != _b64(cpu_digest):
            raise AttestationError("Attestation error: primary report data mismatch")
        gpus = 0
        if additional:
            dev_digest = _b64(device_runtime_data_digest(session["nonce"], pubkey))
            for tee, ev in json.loads(additional).items():
                devices = ev.get("device_evidence_list") or [ev]
                if tee != "sampledevice" or any(d["report_data"] != dev_digest for d in devices):
                    raise AttestationError("Attestation error: device report data mismatch")
                gpus += len(devices)
        claims = ear_claims(pubkey, gpus=gpus)
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        evidence["runtime_data_claims"] = {
            "nonce": session["nonce"],
            "tee-pubkey": pubkey,
            "additional-evidence": additional,
        }
        if "init-data" in att:
            evidence["init_data_claims"] = tomllib.loads(att["init-data"]["body"])["data"]
        session["token"] = self.ca.sign(claims)
        return httpx.Response(
            200,
            json={"token": session["token"]},
            headers={"Set-Cookie": f"kbs-session-id={session_id}; Path=/kbs/v0; HttpOnly"},
        )

    def _resource(self, request: httpx.Request, path: str) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        found = self._session(request)
        if found is not None and found[1]["token"]:
            token = found[1]["token"]
        elif auth.startswith("Bearer "):
            token = auth[len("Bearer ") :]
        else:
            raise TokenNotFound()
        claims = verify_ear_token(token, self.ca.anchor_pem)
        if self.reject_resource:
            raise self.reject_resource.pop(0)
        if not self.allow(claims, path):
            raise PolicyDenied()
        if path not in self.resources:
            raise PluginInternalError()
        jwe = encrypt_for_tee(self.resources[path], claims.tee_pubkey())
        return httpx.Response(200, json=jwe)


@pytest.fixture
def fake_kbs(token_ca) -> FakeKbs:
    return FakeKbs(ca=token_ca, resources={"default/key/one": b"secret-one"})
