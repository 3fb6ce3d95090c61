"""Per-identity mTLS credentials of a federation, kept in Trustee and released by its policy.

The data owner (``coco-ai federation provision``, never Airflow) creates a federation CA for one
federation, issues each party a certificate and key, uploads each party's bundle as the KBS resource
``kbs:///coco-ai-fl/<federation>/<role>.<participant-id>`` and drops the CA key, so no further
certificate of this federation can ever be issued. The resource policies' federation_binding_ok
rule releases a bundle only to a TEE whose attestation is affirming (CPU and every GPU, approved
code) and whose initdata names exactly that federation, role and participant; the party fetches it
through its confidential data hub and configures NVFlare's mutual TLS with it.

Bundle (UTF-8 JSON, one KBS resource)::

    {"version": 1, "federation", "role", "participant_id",
     "ca": <federation CA PEM>, "cert": <party certificate PEM>, "key": <PKCS#8 PEM>,
     "admin_cert", "admin_key"}   # the last two: the aggregator's only

The aggregator's bundle also carries the NVFlare admin credential it submits the run's job with
(CN ``<aggregator id>@admin``, role ``project_admin``): the job is started from inside the
aggregator's TEE, so no admin key has to exist outside a TEE for a pipeline run.

The certificate: subject CN = participant id, O = "coco-ai federation <federation>", OU = role;
SAN DNS = participant id (plus, for the aggregator, the host names and IPs its peers dial);
extended key usage clientAuth for participants, serverAuth + clientAuth for the aggregator.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coco_ai.federated.identity import AGGREGATOR, PARTICIPANT, FederationIdentity
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.errors import ResourceDeleteUnconfirmed

BUNDLE_VERSION = 1
# RSA, as NVFlare's own provisioning: NVFlare 2.9 signs its identity assertions (registration,
# job signatures) with the party's key under RSA-PSS, which an EC key cannot do.
RSA_BITS = 2048
DEFAULT_VALIDITY = dt.timedelta(days=2)
# NVFlare's startup-kit file names (its provisioner's): the root CA and the party's pair.
NVFLARE_ROOT_CA = "rootCA.pem"
_NVFLARE_PAIR = {
    AGGREGATOR: ("server.crt", "server.key"),
    PARTICIPANT: ("client.crt", "client.key"),
}
#: The NVFlare role of the job-submitting admin (its certificate's unstructuredName).
NVFLARE_ADMIN_ROLE = "project_admin"
_BUNDLE_FIELDS = {"version", "federation", "role", "participant_id", "ca", "cert", "key"}
_ADMIN_FIELDS = {"admin_cert", "admin_key"}


def submitter_name(aggregator_id: str) -> str:
    """The NVFlare admin name of the aggregator's job submitter (``@`` is outside the
    participant-id alphabet, so it can never be a party's site name)."""
    return f"{aggregator_id}@admin"


class CredentialError(ValueError):
    """A credential bundle or federation that is malformed or not what it must be (says why)."""


@dataclass(frozen=True)
class CredentialBundle:
    """One party's mTLS credentials; ``key_pem`` never appears in repr."""

    identity: FederationIdentity
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    #: the aggregator's job submitter (AdminCredential named submitter_name(id)), else None
    submitter: AdminCredential | None = None

    def __repr__(self) -> str:
        return f"CredentialBundle({self.identity})"

    def to_bytes(self) -> bytes:
        doc = {
            "version": BUNDLE_VERSION,
            "federation": self.identity.federation,
            "role": self.identity.role,
            "participant_id": self.identity.participant_id,
            "ca": self.ca_pem.decode("ascii"),
            "cert": self.cert_pem.decode("ascii"),
            "key": self.key_pem.decode("ascii"),
        }
        if self.submitter is not None:
            doc["admin_cert"] = self.submitter.cert_pem.decode("ascii")
            doc["admin_key"] = self.submitter.key_pem.decode("ascii")
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(
        cls, data: bytes, expected: FederationIdentity, *, now: dt.datetime | None = None
    ) -> CredentialBundle:
        """Parse a released bundle and check it is ``expected``'s, whole and currently valid."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise CredentialError("credential bundle is not UTF-8 JSON") from None
        fields = _BUNDLE_FIELDS | (_ADMIN_FIELDS if expected.role == AGGREGATOR else set())
        if not isinstance(doc, dict) or set(doc) != fields:
            raise CredentialError(f"credential bundle must have exactly {sorted(fields)}")
        if doc["version"] != BUNDLE_VERSION:
            raise CredentialError(f"credential bundle version {doc['version']!r} is not 1")
        if not all(isinstance(doc[k], str) for k in fields - {"version"}):
            raise CredentialError("credential bundle fields must be strings")
        identity = FederationIdentity(doc["federation"], doc["role"], doc["participant_id"])
        if identity != expected:
            raise CredentialError(f"credential bundle is for {identity}, not {expected}")
        submitter = None
        if identity.role == AGGREGATOR:
            submitter = AdminCredential(
                submitter_name(identity.participant_id),
                doc["ca"].encode("ascii"),
                doc["admin_cert"].encode("ascii"),
                doc["admin_key"].encode("ascii"),
            )
        bundle = cls(
            identity,
            doc["ca"].encode("ascii"),
            doc["cert"].encode("ascii"),
            doc["key"].encode("ascii"),
            submitter,
        )
        bundle.check(now=now)
        return bundle

    def check(self, *, now: dt.datetime | None = None) -> None:
        """The certificate is issued by the CA to this identity, valid now, and the key is its;
        the aggregator's job submitter likewise, under its admin name and role."""
        ca = _load_cert(self.ca_pem, "federation CA")
        at = now or dt.datetime.now(dt.UTC)
        if not ca.not_valid_before_utc <= at <= ca.not_valid_after_utc:
            raise CredentialError("federation CA is not valid now")
        cert = _check_pair(ca, self.cert_pem, self.key_pem, "party", at)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [self.identity.participant_id]:
            raise CredentialError("party certificate's CN is not the participant id")
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if [u.value for u in units] != [self.identity.role]:
            raise CredentialError("party certificate's OU is not the party's role")
        if (self.submitter is None) != (self.identity.role != AGGREGATOR):
            raise CredentialError("only the aggregator's bundle carries a job submitter")
        if self.submitter is not None:
            if self.submitter.ca_pem != self.ca_pem:
                raise CredentialError("job submitter is not of the bundle's federation CA")
            admin = _check_pair(ca, self.submitter.cert_pem, self.submitter.key_pem, "admin", at)
            subject = {
                NameOID.COMMON_NAME: submitter_name(self.identity.participant_id),
                NameOID.UNSTRUCTURED_NAME: NVFLARE_ADMIN_ROLE,
            }
            for oid, value in subject.items():
                if [a.value for a in admin.subject.get_attributes_for_oid(oid)] != [value]:
                    raise CredentialError(f"admin certificate's {oid._name} is not {value!r}")

    def write_startup_files(self, directory: str | Path) -> dict[str, Path]:
        """Write the NVFlare startup-kit files (``rootCA.pem`` and the role's pair, key 0600)
        into ``directory`` (in the TEE: tmpfs); returns name -> path."""
        out = Path(directory)
        cert_name, key_name = _NVFLARE_PAIR[self.identity.role]
        paths = {NVFLARE_ROOT_CA: out / NVFLARE_ROOT_CA, cert_name: out / cert_name}
        paths[NVFLARE_ROOT_CA].write_bytes(self.ca_pem)
        paths[cert_name].write_bytes(self.cert_pem)
        key_path = out / key_name
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)
        paths[key_name] = key_path
        return paths


@dataclass(frozen=True)
class AdminCredential:
    """The job submitter's NVFlare admin certificate and key; kept by the data owner, never in
    Trustee or Airflow. ``key_pem`` never appears in repr."""

    name: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return f"AdminCredential({self.name})"

    def write_startup_files(self, directory: str | Path) -> None:
        """``rootCA.pem``, ``client.crt`` and ``client.key`` (0600) of an NVFlare admin kit."""
        out = Path(directory)
        (out / NVFLARE_ROOT_CA).write_bytes(self.ca_pem)
        (out / "client.crt").write_bytes(self.cert_pem)
        fd = os.open(out / "client.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)


@dataclass(frozen=True)
class Federation:
    """The result of issuing: the CA certificate, every party's bundle and, when asked for,
    the job submitter's admin credential."""

    federation: str
    ca_pem: bytes
    bundles: tuple[CredentialBundle, ...]
    admin: AdminCredential | None = None

    def summary(self) -> dict:
        """What the data owner may publish: resource URIs and certificate fingerprints."""
        return {
            "federation": self.federation,
            "ca_sha256": _fingerprint(self.ca_pem),
            "parties": [
                {
                    "role": b.identity.role,
                    "participant_id": b.identity.participant_id,
                    "credential_uri": b.identity.credential_path().uri(),
                    "cert_sha256": _fingerprint(b.cert_pem),
                }
                for b in self.bundles
            ],
        }


def issue_federation(
    federation: str,
    aggregator_id: str,
    participant_ids: Sequence[str],
    *,
    aggregator_hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    validity: dt.timedelta = DEFAULT_VALIDITY,
    admin_name: str | None = None,
) -> Federation:
    """A fresh federation CA and one bundle per party (and, with ``admin_name``, the NVFlare
    admin credential that submits the job); the CA key is not kept (it leaves scope when this
    returns), so this federation's certificates are exactly these."""
    if not participant_ids:
        raise CredentialError("a federation needs at least one participant")
    ids = [aggregator_id, *participant_ids]
    if len(set(ids)) != len(ids):
        raise CredentialError("participant ids (the aggregator's included) must be distinct")
    identities = [FederationIdentity(federation, AGGREGATOR, aggregator_id)] + [
        FederationIdentity(federation, PARTICIPANT, p) for p in participant_ids
    ]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    organisation = x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"coco-ai federation {federation}")
    ca_key = _new_key()
    ca_name = x509.Name([organisation, x509.NameAttribute(NameOID.COMMON_NAME, "federation CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), start, validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    hosts = list(aggregator_hosts)

    def issue_admin(name: str) -> AdminCredential:
        key = _new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                organisation,
                x509.NameAttribute(NameOID.UNSTRUCTURED_NAME, NVFLARE_ADMIN_ROLE),
            ]
        )
        cert = (
            _builder(subject, ca_name, key.public_key(), start, validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return AdminCredential(
            name,
            ca_pem,
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    bundles = []
    for identity in identities:
        key = _new_key()
        subject = x509.Name(
            [
                organisation,
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.participant_id),
            ]
        )
        purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
        names = [identity.participant_id]
        if identity.role == AGGREGATOR:
            purposes.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            names += hosts
        cert = (
            _builder(subject, ca_name, key.public_key(), start, validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        submitter = None
        if identity.role == AGGREGATOR:
            submitter = issue_admin(submitter_name(identity.participant_id))
        bundles.append(
            CredentialBundle(
                identity, ca_pem, cert.public_bytes(serialization.Encoding.PEM), key_pem, submitter
            )
        )
    admin = None
    if admin_name is not None:
        if not admin_name or any(ord(c) < 0x21 or c in '\\/"' for c in admin_name):
            raise CredentialError(f"admin name {admin_name!r} must be printable, without spaces")
        admin = issue_admin(admin_name)
    return Federation(federation, ca_pem, tuple(bundles), admin)


def provision(admin: KbsAdminClient, federation: Federation) -> list[str]:
    """Upload every party's bundle to Trustee (admin API); returns their URIs."""
    uris = []
    for bundle in federation.bundles:
        path = bundle.identity.credential_path()
        admin.set_resource(path, bundle.to_bytes())
        uris.append(path.uri())
    return uris


def revoke(admin: KbsAdminClient, identities: Iterable[FederationIdentity]) -> list[str]:
    """Delete the parties' bundles from Trustee; returns the URIs whose deletion Trustee could
    not confirm (absent already, or a storage failure: see ResourceDeleteUnconfirmed)."""
    unconfirmed = []
    for identity in identities:
        path = identity.credential_path()
        try:
            admin.delete_resource(path)
        except ResourceDeleteUnconfirmed:
            unconfirmed.append(path.uri())
    return unconfirmed


def _check_pair(
    ca: x509.Certificate, cert_pem: bytes, key_pem: bytes, what: str, at: dt.datetime
) -> x509.Certificate:
    """The ``what`` certificate, issued by ``ca``, valid at ``at``, with ``key_pem`` its key."""
    cert = _load_cert(cert_pem, f"{what} certificate")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CredentialError(f"{what} key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < RSA_BITS:
        raise CredentialError(f"{what} key is not an RSA key of at least {RSA_BITS} bits")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CredentialError(f"{what} certificate is not issued by the federation CA") from None
    if key.public_key() != cert.public_key():
        raise CredentialError(f"{what} key does not belong to the {what} certificate")
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CredentialError(f"{what} certificate is not valid now")
    return cert


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, start: dt.datetime, validity: dt.timedelta
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CredentialError(f"{what} is not a PEM certificate") from None


def _fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
