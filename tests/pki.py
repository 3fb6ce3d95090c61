"""The suite's one issuer of test certificates: self-signed CAs and the leaves they sign.

P-256 keys, SHA-256 signatures, a CommonName per certificate. Importable from every test
module as `pki` (pytest puts tests/ on sys.path for tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    subject: str,
    issuer_name: str,
    public_key,
    signing_key,
    *,
    ca: bool,
    days: int = 30,
    start: dt.datetime | None = None,
    ip_sans: tuple[str, ...] = (),
) -> x509.Certificate:
    """A certificate for `public_key`, valid `days` from `start` (default: a day ago)."""
    start = start or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip_sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in ip_sans]),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def self_signed_ca(
    cn: str, *, days: int = 30, start: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    return key, make_cert(cn, cn, key.public_key(), key, ca=True, days=days, start=start)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
