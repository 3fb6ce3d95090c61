"""Signatures by attested TEE keys around the retrieval service (docs/formats/rag.md §5.3): the
service signs every response, a caller signs every request (its proof of possession). ES256,
raw r||s, base64url; each input starts with its own context string, so one kind of signature is
never accepted as the other."""

from __future__ import annotations

import hashlib

_SIGNING_CONTEXT = b"coco-ai/rag-response/v1"
_PROOF_CONTEXT = b"coco-ai/rag-request/v1"


def request_signing_input(
    method: str, path: str, nonce: str, timestamp: int, service_run_id: str
) -> bytes:
    """What a caller signs with its attested TEE key for each request (its proof of possession),
    bound to this service run so that it cannot be replayed to another service."""
    return b"\n".join(
        [
            _PROOF_CONTEXT,
            method.encode(),
            path.encode(),
            nonce.encode(),
            str(timestamp).encode(),
            service_run_id.encode(),
        ]
    )


def response_signing_input(method: str, path: str, nonce: str, status: int, body: bytes) -> bytes:
    """What the service signs for each response, and the client verifies."""
    return b"\n".join(
        [
            _SIGNING_CONTEXT,
            method.encode(),
            path.encode(),
            nonce.encode(),
            str(status).encode(),
            hashlib.sha256(body).hexdigest().encode(),
        ]
    )


class TeeSigner:
    """ES256 (raw r||s, base64url) with the TEE private key whose public half the TEE's EAR token
    attests: the service's responses, a caller's proofs of possession."""

    def __init__(self, tee_key_pem: bytes) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self._key = load_pem_private_key(tee_key_pem, password=None)

    def sign(self, data: bytes) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        from coco_ai.kbs.wire import b64url_encode

        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def verify_es256(public_key, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (raw r||s, base64url) is ``public_key``'s ES256 over ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from coco_ai.kbs.wire import b64url_decode

    try:
        raw = b64url_decode(signature)
        if len(raw) != 64:
            return False
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature, TypeError, AttributeError):
        return False
    return True
