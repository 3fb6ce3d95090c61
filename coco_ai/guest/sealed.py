"""CoCo sealed secrets: seal (the data owner's side) and unseal (inside the TEE).

Wire-compatible with guest-components ``confidential-data-hub/hub/src/secret`` and its ``secret``
CLI (docs/formats/sealed-secret.md): ``sealed.`` + a JWS compact serialization, ES256 over
P-256, protected header ``{"b64":true,"alg":"ES256","kid":<KBS resource URI>}``, payload the
``0.1.0`` secret JSON. The ``kid`` resource holds the data owner's public P-256 JWK; a ``vault``
secret names the KBS resource that holds the plaintext.

Unsealing fetches both resources through the guest's attested KBS path (a ``fetch_resource``
callable: ``GuestClient.get_resource`` inside a pod, the emulator's own KBS client in process),
verifies the signature before it reads the payload, and refuses anything it does not fully
understand. What this module refuses that upstream's CDH accepts is listed in the format doc
(unknown header/payload members, kids that are local credential paths, private JWKs as kids,
envelope secrets, non-canonical base64url).

Limits: a sealed secret is at most MAX_SEALED_SECRET_BYTES, a signing JWK at most
MAX_JWK_BYTES. No Airflow imports; the plaintext only ever goes to the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from coco_ai.kbs.resource_path import ResourcePath, parse_resource_uri
from coco_ai.kbs.wire import b64url_decode, b64url_encode

SEALED_PREFIX = "sealed."
SEALED_SECRET_VERSION = "0.1.0"  # noqa: S105 - a format version, not a secret
SIGNING_ALG = "ES256"
KBS_PROVIDER = "kbs"
# A Kubernetes Secret holds at most 1 MiB; a vault secret is a few hundred bytes. 64 KiB bounds
# the work an attacker-supplied string can cause before its signature is checked.
MAX_SEALED_SECRET_BYTES = 64 * 1024
MAX_JWK_BYTES = 8 * 1024
# ES256 signature: r || s, 32 bytes each (RFC 7518 §3.4).
_COORD_BYTES = 32
# Members we understand; anything else (crit, jku, jwk, x5u, …) is refused, not ignored.
_HEADER_MEMBERS = {"alg", "kid", "b64", "typ"}
_VAULT_MEMBERS = {"version", "type", "name", "provider", "provider_settings", "annotations"}
_ENVELOPE_MEMBERS = {
    "version",
    "type",
    "provider",
    "key_id",
    "encrypted_key",
    "encrypted_data",
    "wrap_type",
    "iv",
    "provider_settings",
    "annotations",
}

FetchResource = Callable[[str], bytes]
#: ``unseal(sealed, expected_resource)``: e.g. ``GuestClient(url).unseal_secret`` bound by keyword.
Unseal = Callable[[str | bytes, str | None], bytes]


class SealedSecretError(ValueError):
    """A sealed secret, signing key or resource was refused; nothing was released."""


@dataclass(frozen=True)
class VaultSecret:
    """A ``vault`` secret: a pointer to the KBS resource ``name`` that holds the plaintext."""

    name: str
    provider: str = KBS_PROVIDER
    provider_settings: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        # Member order as upstream's serde output (version, tag, then the struct's fields).
        return {
            "version": SEALED_SECRET_VERSION,
            "type": "vault",
            "name": self.name,
            "provider": self.provider,
            "provider_settings": self.provider_settings,
            "annotations": self.annotations,
        }


@dataclass(frozen=True)
class SealedSecret:
    """The structure of a ``sealed.`` string, parsed but not yet verified."""

    kid: str
    header: dict[str, Any]
    signing_input: bytes
    signature: bytes
    payload_bytes: bytes

    @property
    def kid_path(self) -> ResourcePath:
        return parse_resource_uri(self.kid)


# -- parsing ---------------------------------------------------------------------------------


def parse_sealed_secret(sealed: str | bytes) -> SealedSecret:
    """Split and decode a ``sealed.`` string; checks structure and header, not the signature."""
    if isinstance(sealed, bytes):
        if len(sealed) > MAX_SEALED_SECRET_BYTES:
            raise _too_large(len(sealed))
        try:
            sealed = sealed.decode("utf-8")
        except UnicodeDecodeError:
            raise SealedSecretError("sealed secret is not UTF-8") from None
    if not isinstance(sealed, str):
        raise SealedSecretError("sealed secret must be a string")
    if len(sealed) > MAX_SEALED_SECRET_BYTES:
        raise _too_large(len(sealed))
    if not sealed.startswith(SEALED_PREFIX):
        raise SealedSecretError(f"sealed secret must start with {SEALED_PREFIX!r}")
    jws = sealed[len(SEALED_PREFIX) :]
    segments = jws.split(".")
    if len(segments) != 3:
        raise SealedSecretError(
            f"sealed secret must be sealed.<header>.<payload>.<signature>, got {len(segments)} "
            "JWS segments"
        )
    header_b64, payload_b64, signature_b64 = segments
    header_bytes = _decode_segment(header_b64, "protected header")
    payload_bytes = _decode_segment(payload_b64, "payload")
    signature = _decode_segment(signature_b64, "signature")
    header = _json_object(header_bytes, "protected header")
    unknown = set(header) - _HEADER_MEMBERS
    if unknown:
        raise SealedSecretError(
            f"protected header has members this unsealer does not understand: {sorted(unknown)}"
        )
    if header.get("alg") != SIGNING_ALG:
        raise SealedSecretError(
            f"protected header alg must be {SIGNING_ALG}, got {header.get('alg')!r}"
        )
    # b64:false (RFC 7797) would mean an unencoded payload; upstream always writes true.
    if header.get("b64", True) is not True:
        raise SealedSecretError("protected header b64 must be true when present")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SealedSecretError("protected header has no kid (the signing key's KBS URI)")
    try:
        parse_resource_uri(kid)
    except ValueError as exc:
        raise SealedSecretError(
            f"kid {kid!r} is not a KBS resource URI kbs:///repo/type/tag "
            f"(local credential kids are not supported): {exc}"
        ) from None
    if len(signature) != 2 * _COORD_BYTES:
        raise SealedSecretError(
            f"ES256 signature must be {2 * _COORD_BYTES} bytes (r || s), got {len(signature)}"
        )
    return SealedSecret(
        kid=kid,
        header=header,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
        payload_bytes=payload_bytes,
    )


def public_key_from_jwk(jwk_bytes: bytes, where: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a public JWK (as uploaded to the kid resource), strictly."""
    jwk = _jwk_object(jwk_bytes, where)
    if "d" in jwk:
        raise SealedSecretError(
            f"{where} holds a private JWK (member d): the KBS must serve only the public key"
        )
    return _ec_public(jwk, where)


def verify_sealed_secret(sealed: SealedSecret, public_key: ec.EllipticCurvePublicKey) -> dict:
    """The payload JSON of ``sealed`` once its ES256 signature verifies under ``public_key``."""
    r = int.from_bytes(sealed.signature[:_COORD_BYTES], "big")
    s = int.from_bytes(sealed.signature[_COORD_BYTES:], "big")
    try:
        public_key.verify(
            encode_dss_signature(r, s), sealed.signing_input, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise SealedSecretError(
            f"signature does not verify under the signing key {sealed.kid} "
            "(tampered secret or wrong key)"
        ) from None
    return _json_object(sealed.payload_bytes, "payload")


def vault_secret_from_payload(payload: Mapping[str, Any]) -> VaultSecret:
    """The vault secret of a verified payload; envelope and unknown types are refused."""
    version = payload.get("version")
    if version != SEALED_SECRET_VERSION:
        raise SealedSecretError(
            f"sealed secret version {version!r} is not supported (only {SEALED_SECRET_VERSION})"
        )
    kind = payload.get("type")
    if kind == "envelope":
        _check_members(payload, _ENVELOPE_MEMBERS, "envelope")
        # Upstream's kbs provider implements no decrypter either: envelopes need aliyun/aws/ehsm.
        raise SealedSecretError(
            f"envelope secrets (provider {payload.get('provider')!r}) need a KMS provider; "
            "only vault secrets with provider kbs are unsealed here"
        )
    if kind != "vault":
        raise SealedSecretError(f"sealed secret type must be vault or envelope, got {kind!r}")
    _check_members(payload, _VAULT_MEMBERS, "vault")
    name, provider = payload["name"], payload["provider"]
    settings, annotations = payload["provider_settings"], payload["annotations"]
    if not isinstance(name, str) or not isinstance(provider, str):
        raise SealedSecretError("vault secret name and provider must be strings")
    if not isinstance(settings, dict) or not isinstance(annotations, dict):
        raise SealedSecretError("vault secret provider_settings and annotations must be objects")
    if provider != KBS_PROVIDER:
        raise SealedSecretError(
            f"vault provider {provider!r} is not supported (only {KBS_PROVIDER})"
        )
    try:
        parse_resource_uri(name)
    except ValueError as exc:
        raise SealedSecretError(f"vault secret name is not a KBS resource URI: {exc}") from None
    return VaultSecret(name, provider, settings, annotations)


# -- unsealing -------------------------------------------------------------------------------


def unseal_secret(
    sealed: str | bytes,
    fetch_resource: FetchResource,
    *,
    expected_resource: str | None = None,
    expected_kid: str | None = None,
) -> bytes:
    """Plaintext of a sealed vault secret, fetched through the TEE's attested KBS path.

    ``fetch_resource(uri)`` returns the plaintext of a ``kbs:///`` resource after attestation.
    Order: parse the structure, fetch the kid's public JWK, verify the signature, only then read
    the payload, check it names ``expected_resource`` (and was signed under ``expected_kid``)
    when the caller pins them, and fetch the named resource. Every refusal raises
    SealedSecretError before the secret's resource is requested.
    """
    parsed = parse_sealed_secret(sealed)
    if expected_kid is not None and parsed.kid_path != _pinned(expected_kid, "expected_kid"):
        raise SealedSecretError(
            f"sealed secret is signed under {parsed.kid}, not the expected signing key "
            f"{expected_kid}"
        )
    jwk_bytes = _fetch(fetch_resource, parsed.kid_path.uri(), f"signing key {parsed.kid}")
    if len(jwk_bytes) > MAX_JWK_BYTES:
        raise SealedSecretError(
            f"signing key {parsed.kid} is {len(jwk_bytes)} bytes, more than a JWK ({MAX_JWK_BYTES})"
        )
    public_key = public_key_from_jwk(jwk_bytes, f"signing key {parsed.kid}")
    vault = vault_secret_from_payload(verify_sealed_secret(parsed, public_key))
    target = parse_resource_uri(vault.name)
    if expected_resource is not None and target != _pinned(expected_resource, "expected_resource"):
        raise SealedSecretError(
            f"sealed secret is for {vault.name}, not the expected resource {expected_resource}"
        )
    return _fetch(fetch_resource, target.uri(), f"secret resource {vault.name}")


def unseal_environment(
    env: Mapping[str, str],
    unseal: Unseal,
    expected: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``env`` with every ``sealed.`` value replaced by its plaintext (the Kata agent's rule).

    ``unseal(sealed, expected_resource)``; ``expected`` pins a variable to the resource its
    secret must name. A pinned variable must be present and sealed. The plaintext must be
    UTF-8 without NUL (an environment value cannot hold more). Unlike the Kata agent, which
    logs a failure and starts the container with the sealed string, any failure raises.
    """
    expected = dict(expected or {})
    out = dict(env)
    for name, value in env.items():
        if not value.startswith(SEALED_PREFIX):
            continue
        plaintext = _unseal_named(unseal, value, expected.pop(name, None), f"variable {name}")
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise SealedSecretError(
                f"environment variable {name}: the unsealed secret is not UTF-8"
            ) from None
        if "\0" in text:
            raise SealedSecretError(f"environment variable {name}: the unsealed secret holds NUL")
        out[name] = text
    if expected:
        raise SealedSecretError(
            f"environment variables pinned to a resource are missing or not sealed: "
            f"{sorted(expected)}"
        )
    return out


def unseal_mounted_files(
    directory: Path,
    unseal: Unseal,
    expected: Mapping[str, str] | None = None,
) -> list[str]:
    """Unseal every file of a mounted Secret volume whose content starts with ``sealed.``.

    As the Kata agent: the plaintext goes to ``<target>.unsealed`` beside the file the entry
    resolves to, and the entry becomes a symlink to it, so the workload reads the plaintext
    under the same name (this also works with kubelet's ``..data`` layout). Entries that are
    not files are skipped. Returns the names unsealed; any failure raises, leaving no
    plaintext for the failed entry.
    """
    directory = Path(directory)
    expected = dict(expected or {})
    unsealed: list[str] = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("..") or not entry.is_file():
            continue
        target = entry.resolve()
        if not target.is_relative_to(directory.resolve()):
            raise SealedSecretError(f"{entry.name} resolves outside the mounted directory")
        with target.open("rb") as f:
            head = f.read(len(SEALED_PREFIX))
            if head != SEALED_PREFIX.encode():
                continue
            content = head + f.read(MAX_SEALED_SECRET_BYTES)
        plaintext = _unseal_named(unseal, content, expected.pop(entry.name, None), entry.name)
        out = target.with_name(target.name + ".unsealed")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(plaintext)
        link = entry.with_name(entry.name + ".link-tmp")
        link.symlink_to(os.path.relpath(out, directory))
        link.replace(entry)
        unsealed.append(entry.name)
    if expected:
        raise SealedSecretError(
            f"files pinned to a resource are missing or not sealed: {sorted(expected)}"
        )
    return unsealed


# -- sealing (the data owner's side) ---------------------------------------------------------


def generate_signing_jwk(kid: str) -> dict[str, str]:
    """A new private P-256 JWK, with the members upstream ``secret keygen`` writes."""
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.private_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "alg": SIGNING_ALG,
        "use": "sig",
        "kid": kid,
        "d": b64url_encode(numbers.private_value.to_bytes(_COORD_BYTES, "big")),
        **_xy(numbers.public_numbers),
    }


def public_jwk(private_jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a JWK: what the data owner uploads as the kid resource."""
    return {k: v for k, v in private_jwk.items() if k != "d"}


def signing_key_from_jwk(jwk_bytes: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of a private JWK whose x/y match its d."""
    jwk = _jwk_object(jwk_bytes, where)
    public = _ec_public(jwk, where)
    d = _coordinate(jwk, "d", where)
    try:
        key = ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1())
    except ValueError:
        raise SealedSecretError(f"{where}: d is not a valid P-256 private scalar") from None
    if key.public_key().public_numbers() != public.public_numbers():
        raise SealedSecretError(f"{where}: x/y are not the public key of d")
    return key


def seal_vault_secret(
    secret: VaultSecret, signing_key: ec.EllipticCurvePrivateKey, signing_kid: str
) -> str:
    """``sealed.<header>.<payload>.<signature>`` for ``secret``, signed under ``signing_kid``."""
    for uri, what in ((signing_kid, "signing kid"), (secret.name, "resource URI")):
        try:
            parse_resource_uri(uri)
        except ValueError as exc:
            raise SealedSecretError(f"{what} is not a KBS resource URI: {exc}") from None
    if secret.provider != KBS_PROVIDER:
        raise SealedSecretError(f"only provider {KBS_PROVIDER} is supported")
    # Byte for byte what upstream's jose_jws Protected serializes (kata-containers CI vectors).
    header = {"b64": True, "alg": SIGNING_ALG, "kid": signing_kid}
    header_b64 = b64url_encode(_compact_json(header))
    payload_b64 = b64url_encode(_compact_json(secret.payload()))
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    r, s = decode_dss_signature(signing_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(_COORD_BYTES, "big") + s.to_bytes(_COORD_BYTES, "big")
    return f"{SEALED_PREFIX}{header_b64}.{payload_b64}.{b64url_encode(signature)}"


# -- helpers ---------------------------------------------------------------------------------


def _too_large(size: int) -> SealedSecretError:
    return SealedSecretError(
        f"sealed secret is {size} bytes; at most {MAX_SEALED_SECRET_BYTES} are accepted"
    )


def _decode_segment(text: str, what: str) -> bytes:
    try:
        data = b64url_decode(text)
    except ValueError:
        raise SealedSecretError(f"JWS {what} is not unpadded base64url") from None
    if not data:
        raise SealedSecretError(f"JWS {what} is empty")
    # Non-canonical trailing bits would let one signature have several encodings.
    if b64url_encode(data) != text:
        raise SealedSecretError(f"JWS {what} is not canonical base64url")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise SealedSecretError(f"{what} repeats the member {key!r}")
            obj[key] = value
        return obj

    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, SealedSecretError):
            raise
        raise SealedSecretError(f"{what} is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise SealedSecretError(f"{what} must be a JSON object")
    return obj


def _check_members(payload: Mapping[str, Any], members: set[str], kind: str) -> None:
    missing = members - set(payload)
    if missing:
        raise SealedSecretError(f"{kind} secret lacks {sorted(missing)}")
    unknown = set(payload) - members
    if unknown:
        raise SealedSecretError(f"{kind} secret has unknown members {sorted(unknown)}")


def _jwk_object(jwk_bytes: bytes, where: str) -> dict[str, Any]:
    if len(jwk_bytes) > MAX_JWK_BYTES:
        raise SealedSecretError(f"{where} is larger than {MAX_JWK_BYTES} bytes")
    jwk = _json_object(jwk_bytes, where)
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise SealedSecretError(
            f"{where} must be an EC P-256 JWK, got kty={jwk.get('kty')!r} crv={jwk.get('crv')!r}"
        )
    if jwk.get("alg", SIGNING_ALG) != SIGNING_ALG:
        raise SealedSecretError(f"{where} is for alg {jwk.get('alg')!r}, not {SIGNING_ALG}")
    if jwk.get("use", "sig") != "sig":
        raise SealedSecretError(f"{where} has use {jwk.get('use')!r}, not sig")
    return jwk


def _ec_public(jwk: Mapping[str, Any], where: str) -> ec.EllipticCurvePublicKey:
    x, y = _coordinate(jwk, "x", where), _coordinate(jwk, "y", where)
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    try:
        return numbers.public_key()
    except ValueError:
        raise SealedSecretError(f"{where}: x/y is not a point on P-256") from None


def _coordinate(jwk: Mapping[str, Any], member: str, where: str) -> bytes:
    value = jwk.get(member)
    try:
        data = b64url_decode(value) if isinstance(value, str) else b""
    except ValueError:
        data = b""
    if len(data) != _COORD_BYTES or b64url_encode(data) != value:
        raise SealedSecretError(f"{where}: {member} must be {_COORD_BYTES} bytes of base64url")
    return data


def _xy(numbers: ec.EllipticCurvePublicNumbers) -> dict[str, str]:
    return {
        "x": b64url_encode(numbers.x.to_bytes(_COORD_BYTES, "big")),
        "y": b64url_encode(numbers.y.to_bytes(_COORD_BYTES, "big")),
    }


def _compact_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _pinned(uri: str, what: str) -> ResourcePath:
    try:
        return parse_resource_uri(uri)
    except ValueError as exc:
        raise SealedSecretError(f"{what} is not a KBS resource URI: {exc}") from None


def _fetch(fetch_resource: FetchResource, uri: str, what: str) -> bytes:
    try:
        return fetch_resource(uri)
    except Exception as exc:  # the KBS path's own error names the cause (PolicyDeny, 404…)
        raise SealedSecretError(f"{what} could not be obtained from the KBS: {exc}") from None


def _unseal_named(
    unseal: Unseal,
    sealed: str | bytes,
    expected_resource: str | None,
    where: str,
) -> bytes:
    try:
        return unseal(sealed, expected_resource)
    except SealedSecretError as exc:
        raise SealedSecretError(f"{where}: {exc}") from None
