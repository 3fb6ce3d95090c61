"""EAR token verification (ES256, x5c chain to the trust anchor, iat/exp) and claim accessors,
including the claims of a real Trustee token."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coco_ai.kbs.ear import parse_ear_claims, sign_ear_token, unverified_header, verify_ear_token
from coco_ai.kbs.errors import TokenVerifierError
from coco_ai.kbs.jwe import TeeKeyPair

from .conftest import ear_claims, make_cert, new_token_ca

FIXTURE = Path(__file__).parent / "data" / "example.token.json"


def _real_claims() -> dict:
    return json.loads(FIXTURE.read_text())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def tee_pubkey() -> dict:
    return TeeKeyPair.generate().public_jwk()


def test_real_trustee_claims_parse_and_cpu0_is_contraindicated():
    claims = parse_ear_claims(_real_claims())
    assert claims.issued_at == 1760426134 and claims.expires_at == 1760426434
    assert claims.status("cpu0") == "contraindicated"
    assert claims.trust_vector("cpu0")["hardware"] == 97
    assert not claims.all_affirming()
    assert claims.gpu_submods() == []
    assert claims.init_data() == "00" * 64
    assert claims.init_data_claims() is None
    assert "sgx" in claims.annotated_evidence("cpu0")
    with pytest.raises(TokenVerifierError, match="tee-pubkey"):
        claims.tee_pubkey()
    with pytest.raises(TokenVerifierError, match="gpu0"):
        claims.status("gpu0")


def test_real_trustee_claims_survive_signing_and_verification():
    raw = _real_claims()
    # A CA valid when that token was issued (October 2025).
    ca = new_token_ca("2025", start=dt.datetime.fromtimestamp(raw["iat"] - 86400, dt.UTC))
    claims = verify_ear_token(ca.sign(raw), ca.anchor_pem, now=raw["iat"] + 10)
    assert claims.raw == raw
    assert claims.status("cpu0") == "contraindicated"
    assert not claims.all_affirming()


def test_valid_token_and_accessors(token_ca, tee_pubkey):
    payload = ear_claims(tee_pubkey, gpus=11)
    claims = verify_ear_token(token_ca.sign(payload), token_ca.anchor_pem)
    assert claims.tee_pubkey() == tee_pubkey
    assert claims.gpu_submods() == [f"gpu{i}" for i in range(11)]
    assert claims.status("gpu10") == "affirming"
    assert claims.all_affirming(min_gpus=11)
    assert not claims.all_affirming(min_gpus=12)


def test_one_warning_submod_breaks_all_affirming(token_ca, tee_pubkey):
    payload = ear_claims(tee_pubkey, gpus=2)
    payload["submods"]["gpu1"]["ear.status"] = "warning"
    claims = verify_ear_token(token_ca.sign(payload), token_ca.anchor_pem)
    assert not claims.all_affirming(min_gpus=2)


def test_independent_library_verifies_our_signature(token_ca, tee_pubkey):
    payload = ear_claims(tee_pubkey)
    token = token_ca.sign(payload)
    decoded = pyjwt.decode(token, token_ca.leaf.public_key(), algorithms=["ES256"])
    assert decoded == payload
    header = unverified_header(token)
    assert header["alg"] == "ES256"
    assert len(header["jwk"]["x5c"]) == 2


def test_other_trust_anchor_is_refused(token_ca, tee_pubkey):
    other = new_token_ca("other")
    with pytest.raises(TokenVerifierError, match="trust anchor"):
        verify_ear_token(token_ca.sign(ear_claims(tee_pubkey)), other.anchor_pem)


def test_anchor_bundle_with_several_certificates(token_ca, tee_pubkey):
    bundle = new_token_ca("other").anchor_pem + token_ca.anchor_pem
    verify_ear_token(token_ca.sign(ear_claims(tee_pubkey)), bundle)


def test_changed_claim_is_refused(token_ca, tee_pubkey):
    token = token_ca.sign(ear_claims(tee_pubkey))
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["submods"]["cpu0"]["ear.status"] = "affirming"
    claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data"] = "ff" * 48
    forged = ".".join([header, _b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(TokenVerifierError, match="signature"):
        verify_ear_token(forged, token_ca.anchor_pem)


def test_expiry_and_issued_in_future_with_leeway(token_ca, tee_pubkey):
    token = token_ca.sign(ear_claims(tee_pubkey, lifetime=300))
    iat, exp = unverified_claims(token)["iat"], unverified_claims(token)["exp"]
    anchor = token_ca.anchor_pem
    verify_ear_token(token, anchor, now=iat)
    verify_ear_token(token, anchor, now=exp - 1)
    with pytest.raises(TokenVerifierError, match="expired"):
        verify_ear_token(token, anchor, now=exp)
    verify_ear_token(token, anchor, now=exp, leeway=5)
    with pytest.raises(TokenVerifierError, match="expired"):
        verify_ear_token(token, anchor, now=exp + 10, leeway=5)
    with pytest.raises(TokenVerifierError, match="future"):
        verify_ear_token(token, anchor, now=iat - 30)
    verify_ear_token(token, anchor, now=iat - 30, leeway=60)


def unverified_claims(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def _resign_header(token_ca, token: str, header: dict) -> str:
    _, payload, _ = token.split(".")
    return ".".join([_b64url(json.dumps(header).encode()), payload, "c2ln"])


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "EdDSA"])
def test_other_algorithms_are_refused(token_ca, tee_pubkey, alg):
    token = token_ca.sign(ear_claims(tee_pubkey))
    header = {**unverified_header(token), "alg": alg}
    with pytest.raises(TokenVerifierError):
        verify_ear_token(_resign_header(token_ca, token, header), token_ca.anchor_pem)


def test_token_without_x5c_is_refused(token_ca, tee_pubkey):
    # Trustee's ephemeral-key mode: header jwk only, nothing endorses it.
    token = token_ca.sign(ear_claims(tee_pubkey))
    header = unverified_header(token)
    del header["jwk"]["x5c"]
    with pytest.raises(TokenVerifierError, match="x5c"):
        verify_ear_token(_resign_header(token_ca, token, header), token_ca.anchor_pem)


def test_header_jwk_must_be_the_certified_key(token_ca, tee_pubkey):
    rogue = ec.generate_private_key(ec.SECP256R1())
    token = sign_ear_token(ear_claims(tee_pubkey), rogue, token_ca.chain)
    with pytest.raises(TokenVerifierError, match="jwk"):
        verify_ear_token(token, token_ca.anchor_pem)


def test_chain_missing_intermediate_is_refused(token_ca, tee_pubkey):
    token = sign_ear_token(ear_claims(tee_pubkey), token_ca.leaf_key, [token_ca.leaf])
    with pytest.raises(TokenVerifierError, match="trust anchor"):
        verify_ear_token(token, token_ca.anchor_pem)


def test_intermediate_that_is_not_a_ca_is_refused(token_ca, tee_pubkey):
    key = ec.generate_private_key(ec.SECP256R1())
    not_ca = make_cert("test inter", "test root", key.public_key(), token_ca.root_key, ca=False)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("signer", "test inter", leaf_key.public_key(), key, ca=False)
    token = sign_ear_token(ear_claims(tee_pubkey), leaf_key, [leaf, not_ca])
    with pytest.raises(TokenVerifierError, match="chain"):
        verify_ear_token(token, token_ca.anchor_pem)


def test_expired_signer_certificate_is_refused(token_ca, tee_pubkey):
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old = make_cert(
        "old signer",
        "test inter",
        leaf_key.public_key(),
        token_ca.inter_key,
        ca=False,
        days=2,
        start=start,
    )
    token = sign_ear_token(ear_claims(tee_pubkey), leaf_key, [old, token_ca.inter])
    with pytest.raises(TokenVerifierError, match="not valid now"):
        verify_ear_token(token, token_ca.anchor_pem)


def test_non_p256_signer_is_refused_at_signing(token_ca, tee_pubkey):
    with pytest.raises(ValueError):
        sign_ear_token(
            ear_claims(tee_pubkey), ec.generate_private_key(ec.SECP384R1()), token_ca.chain
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("exp"),
        lambda c: c.update(iat="1"),
        lambda c: c.update(exp=c["iat"] - 1),
        lambda c: c.update(submods={}),
        lambda c: c.update(iat=True),
    ],
)
def test_malformed_payload_is_refused(token_ca, tee_pubkey, mutate):
    payload = ear_claims(tee_pubkey)
    mutate(payload)
    with pytest.raises(TokenVerifierError):
        verify_ear_token(token_ca.sign(payload), token_ca.anchor_pem)


@pytest.mark.parametrize("token", ["", "a.b", "not.a.jwt", "....", 5])
def test_garbage_tokens_are_refused(token_ca, token):
    with pytest.raises(TokenVerifierError):
        verify_ear_token(token, token_ca.anchor_pem)


def test_bad_anchor_pem(token_ca, tee_pubkey):
    token = token_ca.sign(ear_claims(tee_pubkey))
    with pytest.raises(TokenVerifierError, match="anchor"):
        verify_ear_token(token, b"not a pem")
    der = token_ca.root.public_bytes(serialization.Encoding.DER)
    with pytest.raises(TokenVerifierError):
        verify_ear_token(token, der)


# -- version encodings (attestation-service/src/ear_token/broker.rs `pubkey_jwk`) ----------


def _short_coordinate_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose x has a leading zero byte (v0.20.0 then writes 31 bytes)."""
    while True:  # about 1 key in 256; the loop ends quickly
        key = ec.generate_private_key(ec.SECP256R1())
        if key.public_key().public_numbers().x < 1 << 248:
            return key


def _header_jwk(token: str) -> dict:
    return unverified_header(token)["jwk"]


def test_v020_encoding_unpadded_url_x5c_and_short_coordinates_verify(token_ca, tee_pubkey):
    key = _short_coordinate_key()
    leaf = make_cert("short", "test inter", key.public_key(), token_ca.inter_key, ca=False)
    chain = [leaf, token_ca.inter]
    token = sign_ear_token(ear_claims(tee_pubkey), key, chain, trustee_version="0.20.0")
    header = unverified_header(token)
    assert list(header) == ["typ", "alg", "jwk"]
    jwk = header["jwk"]
    assert list(jwk) == ["alg", "x5c", "kty", "crv", "x", "y"] and jwk["alg"] == "ES256"
    assert "kid" not in jwk
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert jwk["x5c"][0] == _b64url(der)  # base64url, no padding
    assert len(base64.urlsafe_b64decode(jwk["x"] + "==")) == 31  # not left-padded
    claims = verify_ear_token(token, token_ca.anchor_pem)
    assert claims.tee_pubkey() == tee_pubkey


def test_v021_encoding_standard_x5c_and_padded_coordinates_verify(token_ca, tee_pubkey):
    key = _short_coordinate_key()
    leaf = make_cert("short", "test inter", key.public_key(), token_ca.inter_key, ca=False)
    token = sign_ear_token(ear_claims(tee_pubkey), key, [leaf, token_ca.inter])
    jwk = _header_jwk(token)
    assert jwk["x5c"][0] == base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    assert len(base64.urlsafe_b64decode(jwk["x"] + "==")) == 32
    verify_ear_token(token, token_ca.anchor_pem)


def _signed_with_header(token_ca, token: str, header: dict) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{_b64url(json.dumps(header).encode())}.{token.split('.')[1]}"
    r, s = decode_dss_signature(
        token_ca.leaf_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    )
    return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def test_header_key_compared_by_value_not_text(token_ca, tee_pubkey):
    token = sign_ear_token(ear_claims(tee_pubkey), token_ca.leaf_key, token_ca.chain)
    header = unverified_header(token)
    x = base64.urlsafe_b64decode(header["jwk"]["x"] + "==")
    header["jwk"]["x"] = _b64url(b"\x00" * 3 + x)  # same number, other text: still the key
    verify_ear_token(_signed_with_header(token_ca, token, header), token_ca.anchor_pem)
    header["jwk"]["x"] = _b64url((int.from_bytes(x, "big") ^ 1).to_bytes(32, "big"))
    with pytest.raises(TokenVerifierError, match="jwk is not the key"):
        verify_ear_token(_signed_with_header(token_ca, token, header), token_ca.anchor_pem)


# -- signer identity ----------------------------------------------------------------------


def _leaf_with(token_ca, *extensions):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other leaf")]))
        .issuer_name(token_ca.inter.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(token_ca.inter_key, hashes.SHA256())


def test_pinned_signer_refuses_any_other_leaf_under_the_anchor(token_ca, tee_pubkey):
    from cryptography import x509

    pin = token_ca.leaf.public_bytes(serialization.Encoding.PEM)
    genuine = token_ca.sign(ear_claims(tee_pubkey))
    verify_ear_token(genuine, token_ca.anchor_pem, signer_pem=pin)
    public_pin = token_ca.leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_ear_token(genuine, token_ca.anchor_pem, signer_pem=public_pin)  # key pin works too
    key, other = _leaf_with(token_ca, (x509.BasicConstraints(ca=False, path_length=None), True))
    forged = sign_ear_token(ear_claims(tee_pubkey), key, [other, token_ca.inter])
    verify_ear_token(forged, token_ca.anchor_pem)  # a plain signer-shaped leaf, unpinned
    with pytest.raises(TokenVerifierError, match="not the configured signer"):
        verify_ear_token(forged, token_ca.anchor_pem, signer_pem=pin)
    with pytest.raises(TokenVerifierError, match="neither a PEM certificate"):
        verify_ear_token(genuine, token_ca.anchor_pem, signer_pem=b"not a pem")


def test_unpinned_verification_refuses_tls_ca_and_non_signing_leaves(token_ca, tee_pubkey):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    leaf_only = (x509.BasicConstraints(ca=False, path_length=None), True)
    cases = {
        "TLS certificate": [
            leaf_only,
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
        "a CA": [(x509.BasicConstraints(ca=True, path_length=None), True)],
        "digitalSignature": [
            leaf_only,
            (x509.KeyUsage(False, False, True, False, False, False, False, False, False), True),
        ],
    }
    for reason, extensions in cases.items():
        key, leaf = _leaf_with(token_ca, *extensions)
        token = sign_ear_token(ear_claims(tee_pubkey), key, [leaf, token_ca.inter])
        with pytest.raises(TokenVerifierError, match=reason):
            verify_ear_token(token, token_ca.anchor_pem)
