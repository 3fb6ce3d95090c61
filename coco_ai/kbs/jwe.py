"""JWE as Trustee sends resources: RFC 7516 flattened JSON, `enc` A256GCM, no `aad` member.

Key management is `ECDH-ES+A256KW` (EC P-256, the guest default; the ephemeral key sits in the
protected header as `epk`) or `RSA-OAEP-256`. AAD is the `protected` member exactly as
received (RFC 7516 §5.1 step 14). jwcrypto does the cryptography.
"""

from __future__ import annotations

import json
from typing import Any

from jwcrypto import jwe as _jwe
from jwcrypto import jwk as _jwk
from jwcrypto.common import JWException

from coco_ai.kbs.errors import JweError
from coco_ai.kbs.wire import b64url_decode, b64url_encode

EC_ALG = "ECDH-ES+A256KW"
RSA_ALG = "RSA-OAEP-256"
CONTENT_ENC = "A256GCM"
SUPPORTED_ALGS = (EC_ALG, RSA_ALG)

_FLATTENED_MEMBERS = {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
_RSA_BITS = 2048  # as the guest attestation agent (keypair.rs)


def _check_pubkey(tee_pubkey: dict) -> str:
    if not isinstance(tee_pubkey, dict):
        raise JweError("tee-pubkey must be a JWK object")
    kty, alg = tee_pubkey.get("kty"), tee_pubkey.get("alg")
    if alg == EC_ALG and kty == "EC" and tee_pubkey.get("crv") in ("P-256", "P-521"):
        return alg
    if alg == RSA_ALG and kty == "RSA":
        return alg
    raise JweError(
        f"unsupported tee-pubkey (kty={kty!r}, alg={alg!r}, crv={tee_pubkey.get('crv')!r}); "
        f"expected EC P-256/P-521 with {EC_ALG} or RSA with {RSA_ALG}"
    )


def encrypt_for_tee(plaintext: bytes, tee_pubkey: dict) -> dict:
    """Encrypt `plaintext` to the TEE public key as Trustee does (flattened JWE dict)."""
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    alg = _check_pubkey(tee_pubkey)
    public = {k: v for k, v in tee_pubkey.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    try:
        key = _jwk.JWK(**public)
        token = _jwe.JWE(
            plaintext, protected={"alg": alg, "enc": CONTENT_ENC}, algs=[alg, CONTENT_ENC]
        )
        token.add_recipient(key)
        # The compact form moves the generated `epk` into the protected header (and
        # re-encrypts with that header as AAD), which is where Trustee puts it.
        compact = token.serialize(compact=True)
    except (JWException, ValueError, TypeError) as exc:
        raise JweError(f"JWE encryption failed: {type(exc).__name__}") from None
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    return {
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }


class TeeKeyPair:
    """The TEE's ephemeral key pair whose public half goes into `runtime-data.tee-pubkey`.

    The private key never appears in repr/str.
    """

    def __init__(self, key: _jwk.JWK, alg: str) -> None:
        if alg not in SUPPORTED_ALGS:
            raise ValueError(f"unsupported TEE key algorithm {alg!r}; use one of {SUPPORTED_ALGS}")
        if not key.has_private:
            raise ValueError("TeeKeyPair needs a private key")
        kty = key.get("kty")
        if (alg == EC_ALG) != (kty == "EC") or kty not in ("EC", "RSA"):
            raise ValueError(f"key type {kty!r} does not match algorithm {alg!r}")
        if kty == "EC" and key.get("crv") not in ("P-256", "P-521"):
            raise ValueError(
                f"EC TEE keys must be P-256 or P-521 (kbs-types), not {key.get('crv')}"
            )
        if kty == "RSA" and key.get_op_key("decrypt").key_size < _RSA_BITS:
            raise ValueError(f"RSA TEE keys must have at least {_RSA_BITS} bits")
        self._key = key
        self.alg = alg

    @classmethod
    def generate(cls, alg: str = EC_ALG) -> TeeKeyPair:
        if alg == EC_ALG:
            return cls(_jwk.JWK.generate(kty="EC", crv="P-256"), alg)
        if alg == RSA_ALG:
            return cls(_jwk.JWK.generate(kty="RSA", size=_RSA_BITS), alg)
        raise ValueError(f"unsupported TEE key algorithm {alg!r}; use one of {SUPPORTED_ALGS}")

    @classmethod
    def from_pem(cls, pem: bytes | str, alg: str | None = None) -> TeeKeyPair:
        """Load a PEM private key (e.g. the `tee_keypair` from `/aa/token`).

        `alg` defaults to ECDH-ES+A256KW for EC keys and RSA-OAEP-256 for RSA keys.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = _jwk.JWK.from_pem(data)
        except (ValueError, TypeError, JWException):
            raise ValueError("not a PEM private key (EC or RSA)") from None
        if alg is None:
            alg = EC_ALG if key.get("kty") == "EC" else RSA_ALG
        return cls(key, alg)

    def public_jwk(self) -> dict:
        """The kbs-types TeePubKey JWK: EC {kty,crv,alg,x,y} or RSA {kty,alg,n,e}."""
        pub = self._key.export_public(as_dict=True)
        if pub["kty"] == "EC":
            return {"kty": "EC", "crv": pub["crv"], "alg": self.alg, "x": pub["x"], "y": pub["y"]}
        return {"kty": "RSA", "alg": self.alg, "n": pub["n"], "e": pub["e"]}

    def private_pem(self) -> bytes:
        return self._key.export_to_pem(private_key=True, password=None)

    def decrypt(self, jwe: dict | str | bytes) -> bytes:
        """Decrypt a flattened JWE sent by a KBS to this key.

        Refuses anything but the Trustee shape: the five flattened members, no `aad`,
        `enc` A256GCM, `alg` equal to this key's algorithm.
        """
        if isinstance(jwe, bytes | str):
            try:
                jwe = json.loads(jwe)
            except ValueError:
                raise JweError("resource response is not JSON") from None
        if not isinstance(jwe, dict):
            raise JweError("resource response is not a JWE object")
        if "aad" in jwe:
            raise JweError("JWE carries an 'aad' member; Trustee never sends one")
        members = set(jwe)
        if members != _FLATTENED_MEMBERS:
            raise JweError(
                f"JWE members {sorted(members)} differ from the flattened form "
                f"{sorted(_FLATTENED_MEMBERS)}"
            )
        if not all(isinstance(jwe[m], str) for m in members):
            raise JweError("JWE members must be base64url strings")
        header = _protected_header(jwe["protected"])
        if header.get("enc") != CONTENT_ENC:
            raise JweError(f"JWE enc {header.get('enc')!r} is not {CONTENT_ENC}")
        if header.get("alg") != self.alg:
            raise JweError(f"JWE alg {header.get('alg')!r} does not match the TEE key ({self.alg})")
        try:
            token = _jwe.JWE(algs=[self.alg, CONTENT_ENC])
            token.deserialize(json.dumps(jwe), key=self._key)
        except (JWException, ValueError, TypeError) as exc:
            raise JweError(f"JWE decryption failed: {type(exc).__name__}") from None
        return token.payload

    def __repr__(self) -> str:
        return f"TeeKeyPair(alg={self.alg!r}, public={self.public_jwk()!r})"

    __str__ = __repr__


def _protected_header(protected: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(protected)
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise JweError("JWE protected header is not base64url JSON") from None
    # jwcrypto authenticates base64url(decoded header); insisting that this re-encoding equals
    # the received string makes the AAD exactly "the protected member as received".
    if b64url_encode(raw) != protected:
        raise JweError("JWE protected header is not canonical unpadded base64url")
    if not isinstance(header, dict):
        raise JweError("JWE protected header is not a JSON object")
    return header
