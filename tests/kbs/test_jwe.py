"""JWE as Trustee sends it: shape, round trip, and interoperability with joserfc (an independent
JOSE implementation) in both directions, plus a from-scratch RSA-OAEP/AES-GCM decryption that
pins the AAD to the protected member as received."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwe as jrfc_jwe
from joserfc.jwk import ECKey, RSAKey

from coco_ai.kbs.errors import JweError
from coco_ai.kbs.jwe import TeeKeyPair, encrypt_for_tee

ALGS = ["ECDH-ES+A256KW", "RSA-OAEP-256"]
PLAINTEXT = b"\x00\x01 data key \xff" * 3


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.fixture(scope="module", params=ALGS)
def keypair(request) -> TeeKeyPair:
    return TeeKeyPair.generate(request.param)


def _joserfc_key(kp: TeeKeyPair, private: bool):
    cls = ECKey if kp.alg.startswith("ECDH") else RSAKey
    return cls.import_key(kp.private_pem() if private else kp.public_jwk())


def _compact(jwe: dict) -> str:
    return ".".join(jwe[k] for k in ("protected", "encrypted_key", "iv", "ciphertext", "tag"))


def _flattened(compact: str) -> dict:
    names = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
    return dict(zip(names, compact.split("."), strict=True))


def _flip_first(b64: str) -> str:
    return ("B" if b64[0] == "A" else "A") + b64[1:]


def test_public_jwk_shapes():
    ec = TeeKeyPair.generate("ECDH-ES+A256KW").public_jwk()
    assert set(ec) == {"kty", "crv", "alg", "x", "y"}
    assert (ec["kty"], ec["crv"], ec["alg"]) == ("EC", "P-256", "ECDH-ES+A256KW")
    rsa = TeeKeyPair.generate("RSA-OAEP-256").public_jwk()
    assert set(rsa) == {"kty", "alg", "n", "e"}
    assert (rsa["kty"], rsa["alg"]) == ("RSA", "RSA-OAEP-256")
    for value in (ec["x"], ec["y"], rsa["n"], rsa["e"]):
        assert "=" not in value and "+" not in value and "/" not in value


def test_trustee_shape(keypair):
    jwe = encrypt_for_tee(PLAINTEXT, keypair.public_jwk())
    assert set(jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert "aad" not in jwe
    header = json.loads(b64d(jwe["protected"]))
    assert header["alg"] == keypair.alg and header["enc"] == "A256GCM"
    assert list(header)[:2] == ["alg", "enc"]  # serde field order: alg, enc, extras
    assert len(b64d(jwe["iv"])) == 12 and len(b64d(jwe["tag"])) == 16
    if keypair.alg == "ECDH-ES+A256KW":
        assert set(header["epk"]) == {"crv", "kty", "x", "y"}
        assert len(b64d(jwe["encrypted_key"])) == 40  # AES-KW of a 32-byte CEK
    else:
        assert "epk" not in header
        assert len(b64d(jwe["encrypted_key"])) == 256


def test_round_trip_and_pem_reload(keypair):
    jwe = encrypt_for_tee(PLAINTEXT, keypair.public_jwk())
    assert keypair.decrypt(jwe) == PLAINTEXT
    assert keypair.decrypt(json.dumps(jwe).encode()) == PLAINTEXT
    reloaded = TeeKeyPair.from_pem(keypair.private_pem())
    assert reloaded.alg == keypair.alg
    assert reloaded.public_jwk() == keypair.public_jwk()
    assert reloaded.decrypt(jwe) == PLAINTEXT


def test_joserfc_encrypts_we_decrypt(keypair):
    # joserfc's compact form puts epk in the protected header, exactly where Trustee puts it.
    compact = jrfc_jwe.encrypt_compact(
        {"alg": keypair.alg, "enc": "A256GCM"},
        PLAINTEXT,
        _joserfc_key(keypair, private=False),
        algorithms=[keypair.alg, "A256GCM"],
    )
    assert keypair.decrypt(_flattened(compact)) == PLAINTEXT


def test_we_encrypt_joserfc_decrypts(keypair):
    jwe = encrypt_for_tee(PLAINTEXT, keypair.public_jwk())
    key = _joserfc_key(keypair, private=True)
    algs = [keypair.alg, "A256GCM"]
    assert jrfc_jwe.decrypt_compact(_compact(jwe), key, algorithms=algs).plaintext == PLAINTEXT
    assert jrfc_jwe.decrypt_json(jwe, key, algorithms=algs).plaintext == PLAINTEXT


def test_independent_rsa_decrypt_uses_protected_string_as_aad():
    kp = TeeKeyPair.generate("RSA-OAEP-256")
    jwe = encrypt_for_tee(PLAINTEXT, kp.public_jwk())
    private = load_pem_private_key(kp.private_pem(), password=None)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    cek = private.decrypt(b64d(jwe["encrypted_key"]), oaep)
    assert len(cek) == 32
    aead = AESGCM(cek)
    sealed = b64d(jwe["ciphertext"]) + b64d(jwe["tag"])
    assert aead.decrypt(b64d(jwe["iv"]), sealed, jwe["protected"].encode("ascii")) == PLAINTEXT


def test_reserialised_protected_header_fails(keypair):
    jwe = encrypt_for_tee(PLAINTEXT, keypair.public_jwk())
    header = json.loads(b64d(jwe["protected"]))
    pretty = base64.urlsafe_b64encode(json.dumps(header, indent=1).encode()).rstrip(b"=")
    with pytest.raises(JweError):
        keypair.decrypt({**jwe, "protected": pretty.decode()})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: {**j, "aad": "eHl6"},
        lambda j: {**j, "header": {"kid": "x"}},
        lambda j: {k: v for k, v in j.items() if k != "tag"},
        lambda j: {**j, "protected": j["protected"] + "=="},
        lambda j: {**j, "tag": "AAAAAAAAAAAAAAAAAAAAAA"},
        lambda j: {**j, "ciphertext": _flip_first(j["ciphertext"])},
        lambda j: {**j, "iv": 5},
    ],
)
def test_rejects_non_trustee_or_tampered(keypair, mutate):
    jwe = encrypt_for_tee(PLAINTEXT, keypair.public_jwk())
    with pytest.raises(JweError):
        keypair.decrypt(mutate(jwe))


def test_rejects_other_enc_and_alg():
    kp = TeeKeyPair.generate("ECDH-ES+A256KW")
    compact = jrfc_jwe.encrypt_compact(
        {"alg": "ECDH-ES+A256KW", "enc": "A128GCM"},
        PLAINTEXT,
        ECKey.import_key(kp.public_jwk()),
        algorithms=["ECDH-ES+A256KW", "A128GCM"],
    )
    with pytest.raises(JweError, match="enc"):
        kp.decrypt(_flattened(compact))
    compact = jrfc_jwe.encrypt_compact(
        {"alg": "ECDH-ES", "enc": "A256GCM"},
        PLAINTEXT,
        ECKey.import_key(kp.public_jwk()),
        algorithms=["ECDH-ES", "A256GCM"],
    )
    with pytest.raises(JweError, match="alg"):
        kp.decrypt(_flattened(compact))


def test_wrong_key_fails():
    a, b = TeeKeyPair.generate(), TeeKeyPair.generate()
    with pytest.raises(JweError):
        b.decrypt(encrypt_for_tee(PLAINTEXT, a.public_jwk()))


@pytest.mark.parametrize(
    "pubkey",
    [
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "BB"},  # no alg
        {"kty": "RSA", "alg": "RSA1_5", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "secp256k1", "alg": "ECDH-ES+A256KW", "x": "AA", "y": "BB"},
        {"kty": "oct", "alg": "A256KW", "k": "AAAA"},
        "not a jwk",
    ],
)
def test_encrypt_refuses_unsupported_keys(pubkey):
    with pytest.raises(JweError):
        encrypt_for_tee(PLAINTEXT, pubkey)


def test_private_key_never_in_repr():
    kp = TeeKeyPair.generate()
    d = kp._key.get("d")
    assert d and d not in repr(kp) and d not in str(kp)
    assert "PRIVATE" not in repr(kp)


def test_from_pem_rejects_garbage():
    with pytest.raises(ValueError):
        TeeKeyPair.from_pem(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n")


@pytest.mark.parametrize(
    "key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
    ],
)
def test_from_pem_rejects_keys_trustee_cannot_use(key):
    pem = key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        TeeKeyPair.from_pem(pem)


def test_from_pem_accepts_p521():
    pem = ec.generate_private_key(ec.SECP521R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kp = TeeKeyPair.from_pem(pem)
    assert kp.public_jwk()["crv"] == "P-521"
    assert kp.decrypt(encrypt_for_tee(PLAINTEXT, kp.public_jwk())) == PLAINTEXT
