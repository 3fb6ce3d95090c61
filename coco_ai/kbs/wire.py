"""Wire primitives of the KBS protocol 0.4.0 (pure functions, no I/O).

The evidence binding follows Trustee byte for byte: SHA-384 over RFC 8785 (JCS) canonical
JSON of the runtime data (`kbs/src/attestation/backend.rs`, guest `rcar_client.rs`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import rfc8785

PROTOCOL_VERSION = "0.4.0"

# kbs:///repo/type/tag and kbs+resource:///repo/type/tag both address the `resource` plugin.
RESOURCE_URI_SCHEMES = ("kbs://", "kbs+resource://")
# Trustee main's provisioner plugin: a guest may fetch `default/<uuid>/root` only when its
# initdata claims bind this key to `kbs+provisioner:///default/<uuid>/root`
# (kbs/src/plugins/implementations/provisioner/mod.rs handle_get_resource).
PROVISIONER_INITDATA_KEY = "trustee.kbs.resource"


def provisioner_binding(resource_path: str) -> str:
    """The `trustee.kbs.resource` initdata value that unlocks a provisioner resource."""
    return f"kbs+provisioner:///{resource_path}"


_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of `obj` (what Trustee hashes)."""
    return rfc8785.dumps(obj)


def cpu_runtime_data_digest(nonce: str, tee_pubkey: dict, additional_evidence: str) -> bytes:
    """48-byte SHA-384 bound into the primary (CPU) evidence.

    `additional_evidence` is the exact string sent in `tee-evidence.additional_evidence`
    ("" when there are no devices); the key is present even when empty.
    """
    if not isinstance(additional_evidence, str):
        raise TypeError("additional_evidence must be the JSON string as sent ('' for none)")
    return hashlib.sha384(
        canonical_json(
            {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": tee_pubkey}
        )
    ).digest()


def device_runtime_data_digest(nonce: str, tee_pubkey: dict) -> bytes:
    """48-byte SHA-384 bound into every additional (device) evidence."""
    return hashlib.sha384(canonical_json({"nonce": nonce, "tee-pubkey": tee_pubkey})).digest()


def b64url_encode(data: bytes) -> str:
    """base64url without padding (JOSE, Trustee policy uploads)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of b64url_encode: no padding, no characters outside the alphabet."""
    if not isinstance(text, str) or not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not unpadded base64url") from None


def validate_segment(s: str) -> str:
    """Return `s` if it is a safe resource-path segment, else raise ValueError.

    Only [A-Za-z0-9._-]+ is allowed, so percent-encoding, slashes, backslashes and control
    characters can never reach a server path; '.' and '..' are refused outright.
    """
    if not isinstance(s, str) or not s:
        raise ValueError("resource path segment is empty")
    if s in (".", ".."):
        raise ValueError(f"resource path segment {s!r} is a relative-path component")
    if not _SEGMENT_RE.fullmatch(s):
        raise ValueError(
            f"resource path segment {s!r} has characters outside [A-Za-z0-9._-] "
            "(percent-encoding, slashes and backslashes are refused)"
        )
    return s


@dataclass(frozen=True)
class ResourcePath:
    """A KBS `resource` plugin path: repository / type / tag."""

    repo: str
    type: str
    tag: str

    def __post_init__(self) -> None:
        for seg in (self.repo, self.type, self.tag):
            validate_segment(seg)

    def uri(self) -> str:
        return f"kbs:///{self.repo}/{self.type}/{self.tag}"

    def url_path(self) -> str:
        return f"{self.repo}/{self.type}/{self.tag}"

    def __str__(self) -> str:
        return self.uri()


def parse_resource_path(path: str) -> ResourcePath:
    """Parse "repo/type/tag" (no scheme, no leading slash) into a ResourcePath."""
    if not isinstance(path, str):
        raise ValueError("resource path must be a string")
    segments = path.split("/")
    if len(segments) != 3:
        raise ValueError(
            f"resource path {path!r} must have exactly 3 segments repo/type/tag, "
            f"got {len(segments)}"
        )
    return ResourcePath(*(validate_segment(s) for s in segments))


def parse_resource_uri(uri: str) -> ResourcePath:
    """Parse `kbs:///repo/type/tag` or `kbs+resource:///repo/type/tag`.

    As in CoCo's CDH, any host:port in the authority is ignored (the configured KBS is used).
    Queries, fragments, more or fewer than three segments, empty segments, '.', '..',
    percent-encoded bytes and backslashes are all refused.
    """
    if not isinstance(uri, str):
        raise ValueError("resource URI must be a string")
    for scheme in RESOURCE_URI_SCHEMES:
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            break
    else:
        raise ValueError(f"resource URI {uri!r} must start with kbs:/// or kbs+resource:///")
    if "?" in rest or "#" in rest:
        raise ValueError(f"resource URI {uri!r} must not carry a query or fragment")
    slash = rest.find("/")
    if slash < 0:
        raise ValueError(f"resource URI {uri!r} has no path")
    return parse_resource_path(rest[slash + 1 :])


def to_resource_path(uri_or_path: str | ResourcePath) -> ResourcePath:
    """Accept a ResourcePath, a `kbs:///…` URI or a bare `repo/type/tag` path."""
    if isinstance(uri_or_path, ResourcePath):
        return uri_or_path
    if isinstance(uri_or_path, str) and "://" in uri_or_path:
        return parse_resource_uri(uri_or_path)
    return parse_resource_path(uri_or_path)
