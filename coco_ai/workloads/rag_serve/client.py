"""The caller's side of the retrieval service: verify the service's attestation, then query it
with the caller's own Trustee-released credential, and accept only answers signed by the
attested service key (docs/formats/rag.md §5).

Before the first query :meth:`RagServiceClient.verify_service` fetches ``/v1/attestation`` and
requires: the EAR token chains to the data owner's trust anchor (and signer, when pinned), is
unexpired, every submod affirming; its initdata claims name the role ``rag_serve``, an image the
data owner approved and (when given) the promoted index manifest the caller expects; the
advertised signing key is the token's attested TEE key; over https, the advertised TLS
certificate is for that key, and from then on the client trusts that certificate only, so a
query is only ever sent to the attested TEE. Every later response must carry a
signature by that key over the request's method, path, a fresh nonce, status and body: a
response from anything else — another process, a replay — is refused, whatever it says.

The caller's credential, its own attestation token and the TEE key that token attests come
from its own TEE's guest API (:meth:`RagServiceClient.from_guest`): the credential is a KBS
resource Trustee releases only to a TEE whose initdata names it
(coco_ai.workloads.rag_serve.identity), and every request carries a proof of possession of the
key, signed over the request's method, path, nonce, time and the verified service's run id
(coco_ai.workloads.rag_serve.signing), so the credential and token alone do not get in.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from coco_ai.workloads.rag_serve.app import (
    ATTESTATION_HEADER,
    NONCE_HEADER,
    PROOF_HEADER,
    SIGNATURE_HEADER,
)
from coco_ai.workloads.rag_serve.identity import INDEX_MANIFEST_KEY, SERVICE_ROLE
from coco_ai.workloads.rag_serve.signing import (
    TeeSigner,
    request_signing_input,
    response_signing_input,
    verify_es256,
)


class ServiceVerificationError(Exception):
    """The service did not prove itself (attestation, role, image, index or a signature)."""


class RagServiceError(Exception):
    """The (verified) service refused the request: ``status`` and its one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ServiceTrust:
    """What the caller requires of the service: the data owner's anchor and approvals."""

    trust_anchor_pem: bytes
    approved_image_digests: frozenset[str]
    token_signer_pem: bytes | None = None
    index_manifest_digest: str | None = None  # the promoted index the caller expects, if any

    @classmethod
    def from_owner_policy(cls, policy, *, index_manifest_digest: str | None = None):
        """From a verified coco_ai.owner_policy.OwnerPolicy."""
        return cls(
            trust_anchor_pem=policy.trust_anchor_pem.encode(),
            approved_image_digests=frozenset(policy.approved_image_digests),
            token_signer_pem=policy.token_signer_pem.encode(),
            index_manifest_digest=index_manifest_digest,
        )


#: a caller's own token is fetched again this long before its exp
TOKEN_REFRESH_MARGIN_S = 30


def _cached_attestation(
    fetch: Callable[[], tuple[str, bytes]], clock: Callable[[], float] = time.time
):
    """``fetch`` (the caller's guest API ``/aa/token``: the token and the TEE key it attests),
    called again only near the token's exp."""
    from coco_ai.kbs.ear import unverified_claims

    held: list[tuple[tuple[str, bytes], float]] = []

    def attestation() -> tuple[str, bytes]:
        if not held or clock() > held[0][1] - TOKEN_REFRESH_MARGIN_S:
            fresh = fetch()
            held[:] = [(fresh, float(unverified_claims(fresh[0]).expires_at))]
        return held[0][0]

    return attestation


class RagServiceClient:
    def __init__(
        self,
        url: str,
        trust: ServiceTrust,
        *,
        caller_id: str,
        credential: bytes,
        attestation: Callable[[], tuple[str, bytes]],
        timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trust = trust
        self._caller_id = caller_id
        self._credential = credential
        self._attestation = attestation  # (EAR token, PEM of the TEE key it attests)
        self._service_run = ""  # the verified service's run id (what each proof is bound to)
        self._clock = clock
        self._service_key = None  # the attested signing key, once verify_service succeeded
        self._url, self._timeout = url, timeout
        self._tls = url.startswith("https://")
        # https: the first client only fetches the (public) attestation, certificate unchecked;
        # queries go through a client that trusts exactly the certificate of the attested key
        self._http = httpx.Client(
            base_url=url, timeout=timeout, trust_env=False, verify=not self._tls
        )

    @classmethod
    def from_guest(cls, url: str, trust: ServiceTrust, *, caller_id: str, guest, **kwargs):
        """A client whose credential and token come from the caller's own guest API (a
        coco_ai.guest.client.GuestClient of the caller's TEE)."""
        from coco_ai.workloads.rag_serve.identity import credential_path

        credential = guest.get_resource(credential_path(caller_id).uri())
        return cls(
            url,
            trust,
            caller_id=caller_id,
            credential=credential,
            attestation=_cached_attestation(guest.get_token),
            **kwargs,
        )

    def __enter__(self) -> RagServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def verify_service(self) -> dict[str, str]:
        """Prove the service (module docstring); its initdata claims."""
        from jwcrypto import jwk
        from jwcrypto.common import JWException

        from coco_ai.crypto.manifest import same_ec_key
        from coco_ai.guest.initdata import IMAGE_DIGEST_KEY, RUN_ID_KEY, WORKLOAD_KEY
        from coco_ai.kbs.ear import verify_ear_token
        from coco_ai.kbs.errors import KbsError

        try:
            resp = self._http.get("/v1/attestation")
            doc = resp.json()
            token, advertised = doc["token"], doc["signing_key"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ServiceVerificationError(f"no attestation from the service: {exc}") from None
        trust = self._trust
        try:
            claims = verify_ear_token(
                token, trust.trust_anchor_pem, now=self._clock(), signer_pem=trust.token_signer_pem
            )
        except KbsError as exc:
            raise ServiceVerificationError(f"service token does not verify: {exc}") from None
        if not claims.all_affirming():
            raise ServiceVerificationError("service token is not affirming for every submod")
        init = claims.init_data_claims() or {}
        if init.get(WORKLOAD_KEY) != SERVICE_ROLE:
            raise ServiceVerificationError(
                f"service initdata names role {init.get(WORKLOAD_KEY)!r}, not {SERVICE_ROLE!r}"
            )
        if init.get(IMAGE_DIGEST_KEY) not in trust.approved_image_digests:
            raise ServiceVerificationError(
                f"service image {init.get(IMAGE_DIGEST_KEY)!r} is not approved"
            )
        expected_index = trust.index_manifest_digest
        if expected_index is not None and init.get(INDEX_MANIFEST_KEY) != expected_index:
            raise ServiceVerificationError(
                f"service serves index {init.get(INDEX_MANIFEST_KEY)!r}, not {expected_index}"
            )
        try:
            attested = claims.tee_pubkey()
            if not isinstance(advertised, dict) or not same_ec_key(advertised, attested):
                raise ServiceVerificationError("advertised signing key is not the attested one")
            key = jwk.JWK(**{k: attested[k] for k in ("kty", "crv", "x", "y")})
            service_key = key.get_op_key("verify")
        except (KbsError, KeyError, TypeError, ValueError, JWException):
            raise ServiceVerificationError("service token has no usable P-256 key") from None
        if self._tls:
            self._pin_certificate(doc.get("certificate"), service_key)
        self._service_key = service_key
        self._service_run = str(init.get(RUN_ID_KEY, ""))
        return {k: v for k, v in init.items() if isinstance(v, str)}

    def _pin_certificate(self, certificate: object, service_key) -> None:
        """Query only over TLS to the holder of the attested key: the advertised certificate
        must be for that key, and becomes the one certificate the next client trusts."""
        import ssl

        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        def spki(key) -> bytes:
            return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

        try:
            cert = x509.load_pem_x509_certificate(str(certificate).encode())
            same = spki(cert.public_key()) == spki(service_key)
        except ValueError:
            same = False
        if not same:
            raise ServiceVerificationError("service TLS certificate is not for the attested key")
        context = ssl.create_default_context(cadata=cert.public_bytes(Encoding.PEM).decode())
        context.check_hostname = False  # the pinned certificate is the identity, not a name
        self._http.close()
        self._http = httpx.Client(
            base_url=self._url, timeout=self._timeout, trust_env=False, verify=context
        )

    def retrieve(self, query: str, k: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query}
        if k is not None:
            body["k"] = k
        return self._post("/v1/retrieve", body)

    def chat(self, messages: Iterable[dict[str, str]], **options: Any) -> dict[str, Any]:
        return self._post("/v1/chat/completions", {"messages": list(messages), **options})

    def post_raw(self, path: str, content: bytes, headers: dict[str, str] | None = None):
        """(status, body) of a signed response to any body (what a test of limits needs)."""
        return self._send(path, content, headers or {})

    def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        status, body = self._send(path, json.dumps(doc).encode(), {})
        try:
            parsed = json.loads(body)
        except ValueError:
            raise ServiceVerificationError("signed response is not JSON") from None
        if status != 200:
            reason = parsed.get("error", "") if isinstance(parsed, dict) else ""
            raise RagServiceError(status, str(reason))
        return parsed

    def _send(self, path: str, content: bytes, extra: dict[str, str]) -> tuple[int, bytes]:
        from coco_ai.kbs.wire import b64url_encode

        if self._service_key is None:
            self.verify_service()
        nonce = secrets.token_urlsafe(24)
        token, tee_key_pem = self._attestation()
        now = int(self._clock())
        proof = TeeSigner(tee_key_pem).sign(
            request_signing_input("POST", path, nonce, now, self._service_run)
        )
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self._caller_id}.{b64url_encode(self._credential)}",
            ATTESTATION_HEADER: token,
            NONCE_HEADER: nonce,
            PROOF_HEADER: f"{now}.{proof}",
            **extra,
        }
        try:
            resp = self._http.post(path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceVerificationError(f"service unreachable: {exc}") from None
        signed = response_signing_input("POST", path, nonce, resp.status_code, resp.content)
        if not verify_es256(self._service_key, signed, resp.headers.get(SIGNATURE_HEADER, "")):
            raise ServiceVerificationError(
                f"response to {path} is not signed by the attested service key"
            )
        return resp.status_code, resp.content


def main(argv: list[str] | None = None) -> int:
    """``python -m coco_ai.workloads.rag_serve.client --config FILE``: an attested probe caller
    (e.g. a readiness check in its own TEE). It verifies the service, asks one question with its
    own credential and prints only counts and digests (never the question, a chunk or an
    answer). Config JSON: ``service_url``, ``caller_id``, ``trust_anchor_file``,
    ``approved_image_digests``, ``question``, optional ``guest_api_url``, ``token_signer_file``,
    ``index_manifest_digest``, ``k``. Exit 0 answered, 1 refused or unverifiable, 2 bad config."""
    import argparse
    import sys
    from pathlib import Path

    from coco_ai.guest.client import DEFAULT_BASE_URL, GuestClient, GuestError

    parser = argparse.ArgumentParser(prog="python -m coco_ai.workloads.rag_serve.client")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        signer = cfg.get("token_signer_file")
        trust = ServiceTrust(
            trust_anchor_pem=Path(cfg["trust_anchor_file"]).read_bytes(),
            approved_image_digests=frozenset(cfg["approved_image_digests"]),
            token_signer_pem=Path(signer).read_bytes() if signer else None,
            index_manifest_digest=cfg.get("index_manifest_digest"),
        )
        url, caller, question = cfg["service_url"], cfg["caller_id"], cfg["question"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"rag-client: error: bad config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        with GuestClient(cfg.get("guest_api_url", DEFAULT_BASE_URL)) as guest:
            client = RagServiceClient.from_guest(url, trust, caller_id=caller, guest=guest)
            with client:
                claims = client.verify_service()
                out = client.retrieve(question, cfg.get("k"))
    except (GuestError, ServiceVerificationError, RagServiceError) as exc:
        print(f"rag-client: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(
        f"[rag-client] service of index {claims.get(INDEX_MANIFEST_KEY)} verified; "
        f"{len(out['results'])} results with citations"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
