"""Checkpoint manifest (RFC 8785 canonical JSON) and its ES256 JWS signature by the TEE key.

A checkpoint location holds (names fixed, see docs/formats/checkpoint.md):

    objects/<ciphertext digest hex>   one encrypted file per manifest entry (content-addressed;
                                      BLAKE3-256 from manifest version 5, SHA-256 before)
    token.jwt                         the EAR attestation token of the signing TEE (when signed)
    manifest.jws                      JWS compact, payload = the manifest bytes (when signed)
    manifest.json                     the canonical manifest; written last = "checkpoint complete"
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coco_ai.crypto.errors import ManifestError, SignatureError
from coco_ai.kbs.wire import canonical_json, parse_resource_uri
from coco_ai.storage import open_store

MANIFEST_FORMAT = "coco-ai/checkpoint-manifest"
# Version 2 (file format 2, key-committing headers) drops the plaintext SHA-256 per file: the
# signed ciphertext SHA-256 identifies the plaintext. Version 3 (same file format 2) adds each
# file's header SHA-256, which is what a key holder checks on decrypt instead of hashing the
# whole ciphertext again (docs/formats/checkpoint.md §4). Versions 1 and 2 are still read.
# Version 4 is version 3 plus a signed list of keyed per-document digests (``documents``; a RAG
# index's, docs/formats/rag.md §4.1): written only by a checkpoint that has one, so every other
# checkpoint stays version 3, byte for byte.
# Version 5 (written now, with or without documents) is version 3/4 with each file's keyless
# ciphertext digest in BLAKE3-256 (``ciphertext_blake3``) instead of SHA-256: the digest every
# encryption computes, two to four times as fast as SHA-256 on a core (formats/checkpoint.md §4).
MANIFEST_VERSION = 5
DOCUMENTS_MANIFEST_VERSION = 4
READABLE_MANIFEST_VERSIONS = (1, 2, 3, 4, 5)
#: the format version of the encrypted files each manifest version lists
FILE_FORMAT_OF_MANIFEST = {1: 1, 2: 2, 3: 2, 4: 2, 5: 2}
#: manifest versions that may list documents (version 4 must)
_DOCUMENT_VERSIONS = (DOCUMENTS_MANIFEST_VERSION, 5)
#: the keyless ciphertext digest algorithm of each manifest version (entry field
#: ``ciphertext_<algorithm>``; both are 256-bit, 64 hex digits)
CIPHERTEXT_ALGORITHM_OF_MANIFEST = {1: "sha256", 2: "sha256", 3: "sha256", 4: "sha256", 5: "blake3"}
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.jws"
TOKEN_FILE = "token.jwt"  # noqa: S105  (a file name)
OBJECTS_DIR = "objects"
#: the workload's configuration, public (references and hyper-parameters, no key); its digest is
#: the manifest's training_config_digest, so a verifier can judge the recipe it names
CONFIG_FILE = "training_config.json"
#: the public files that travel beside the manifest (written before it, copied with it)
PUBLIC_FILES = (TOKEN_FILE, SIGNATURE_FILE, CONFIG_FILE)
JWS_TYPE = "coco-ai-manifest+jws"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCHEME = re.compile(r"[a-z0-9][a-z0-9/._-]{0,127}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_META_KEYS = frozenset(
    {
        "base_model_digest",
        "dataset_digest",
        "training_config_digest",
        "metrics",
        "checkpoint_id",
        "created_at",
        "documents",
    }
)


def validate_relpath(path: str) -> str:
    """A manifest path: relative POSIX, no empty/'.'/'..' parts, no backslash or control chars."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise ManifestError(f"file path {path!r} must be a non-empty relative path")
    if "\\" in path or any(ord(c) < 0x20 for c in path):
        raise ManifestError(f"file path {path!r} contains a backslash or control character")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ManifestError(f"file path {path!r} has an empty, '.' or '..' component")
    return path


def validate_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ManifestError(f"{what} {value!r} must match {_ID.pattern}")
    return value


def file_context(run_id: str, checkpoint_id: str, path: str) -> dict[str, Any]:
    """What each encrypted file's header binds: a file is only valid at this path of this
    checkpoint of this run."""
    return {
        "kind": "checkpoint-file",
        "checkpoint_id": checkpoint_id,
        "path": path,
        "run_id": run_id,
    }


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str | None  # plaintext SHA-256: manifest version 1 only
    ciphertext_size: int
    ciphertext_sha256: str | None  # keyless ciphertext digest: manifest versions 1-4
    segment_size: int
    header_sha256: str | None = None  # SHA-256 of the file's header: manifest version 3 on
    ciphertext_blake3: str | None = None  # keyless ciphertext digest: manifest version 5

    @property
    def ciphertext_algorithm(self) -> str:
        """The algorithm of this entry's keyless ciphertext digest ("sha256" or "blake3")."""
        return "blake3" if self.ciphertext_blake3 is not None else "sha256"

    @property
    def ciphertext_digest(self) -> str:
        """The keyless ciphertext digest (hex) in `ciphertext_algorithm`."""
        digest = self.ciphertext_blake3 or self.ciphertext_sha256
        if digest is None:
            raise ManifestError(f"file entry {self.path!r} lists no ciphertext digest")
        return digest

    @property
    def object_name(self) -> str:
        """Where the ciphertext lives, relative to the checkpoint root (content-addressed)."""
        return f"{OBJECTS_DIR}/{self.ciphertext_digest}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "ciphertext_size": self.ciphertext_size,
            "segment_size": self.segment_size,
        }
        optional = {
            "sha256": self.sha256,
            "ciphertext_sha256": self.ciphertext_sha256,
            "ciphertext_blake3": self.ciphertext_blake3,
            "header_sha256": self.header_sha256,
        }
        d.update({k: v for k, v in optional.items() if v is not None})
        return d

    @staticmethod
    def fields_of(version: int) -> set[str]:
        """The keys an entry has in a manifest of `version`."""
        common = {"path", "size", "ciphertext_size", "segment_size"}
        common.add(f"ciphertext_{CIPHERTEXT_ALGORITHM_OF_MANIFEST[version]}")
        extra = {1: {"sha256"}, 2: set()}.get(version, {"header_sha256"})
        return common | extra

    @classmethod
    def from_dict(cls, d: Any, version: int = MANIFEST_VERSION) -> FileEntry:
        fields = cls.fields_of(version)
        algorithm = CIPHERTEXT_ALGORITHM_OF_MANIFEST[version]
        if isinstance(d, dict):
            other = sorted(k for k in d if k.startswith("ciphertext_") and k != "ciphertext_size")
            if other != [f"ciphertext_{algorithm}"]:
                raise ManifestError(
                    f"manifest version {version} names each ciphertext by "
                    f"ciphertext_{algorithm} alone; file entry has {other}"
                )
        if not isinstance(d, dict) or set(d) != fields:
            raise ManifestError(
                f"file entry has wrong fields for manifest version {version}: "
                f"{sorted(d) if isinstance(d, dict) else d!r}"
            )
        for k in ("size", "ciphertext_size", "segment_size"):
            if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0:
                raise ManifestError(f"file entry {k} must be a non-negative integer")
        for k in fields & {"sha256", "ciphertext_sha256", "ciphertext_blake3", "header_sha256"}:
            if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
                raise ManifestError(f"file entry {k} must be 64 lowercase hex digits")
        return cls(
            path=validate_relpath(d["path"]),
            size=d["size"],
            sha256=d.get("sha256"),
            ciphertext_size=d["ciphertext_size"],
            ciphertext_sha256=d.get("ciphertext_sha256"),
            segment_size=d["segment_size"],
            header_sha256=d.get("header_sha256"),
            ciphertext_blake3=d.get("ciphertext_blake3"),
        )


def _check_metrics(metrics: Any) -> dict[str, float | int]:
    if not isinstance(metrics, dict):
        raise ManifestError("metrics must be an object of name -> number")
    for k, v in metrics.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float):
            raise ManifestError(f"metric {k!r} must be a number")
        if isinstance(v, float) and not math.isfinite(v):
            raise ManifestError(f"metric {k!r} is not finite")
    return dict(metrics)


@dataclass(frozen=True)
class DocumentDigests:
    """A signed list of per-document digests (manifest version 4): ``scheme`` names how each
    digest was made (its owner checks it; here only the shape is), ``digests`` are 64 lowercase
    hex digits, sorted, unique (the order says nothing about the documents)."""

    scheme: str
    digests: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or not _SCHEME.fullmatch(self.scheme):
            raise ManifestError(f"documents scheme {self.scheme!r} is not a scheme name")
        digests = self.digests
        if not isinstance(digests, tuple) or not all(
            isinstance(d, str) and _HEX64.fullmatch(d) for d in digests
        ):
            raise ManifestError("documents digests must be 64 lowercase hex digits each")
        if list(digests) != sorted(set(digests)):
            raise ManifestError("documents digests must be sorted and unique")

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "digests": list(self.digests)}

    @classmethod
    def from_dict(cls, d: Any) -> DocumentDigests:
        if not isinstance(d, dict) or set(d) != {"scheme", "digests"}:
            raise ManifestError("documents must be exactly {scheme, digests}")
        if not isinstance(d["digests"], list):
            raise ManifestError("documents digests must be a list")
        return cls(d["scheme"], tuple(d["digests"]))


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and (not isinstance(v, str) or not v):
        raise ManifestError(f"{key} must be a non-empty string or null")
    return v


@dataclass(frozen=True)
class Manifest:
    checkpoint_id: str
    run_id: str
    key_uri: str
    created_at: int
    files: tuple[FileEntry, ...]
    base_model_digest: str | None = None
    dataset_digest: str | None = None
    training_config_digest: str | None = None
    metrics: dict[str, float | int] = field(default_factory=dict)
    version: int = MANIFEST_VERSION  # its files' format version: FILE_FORMAT_OF_MANIFEST
    documents: DocumentDigests | None = None  # version 4 exactly

    def __post_init__(self) -> None:
        if self.version not in READABLE_MANIFEST_VERSIONS:
            raise ManifestError(f"unsupported manifest version {self.version!r}")
        want = FileEntry.fields_of(self.version)
        for f in self.files:
            if set(f.to_dict()) != want:
                raise ManifestError(
                    f"manifest version {self.version} entries have exactly {sorted(want)} "
                    f"({f.path!r} has {sorted(f.to_dict())})"
                )
        validate_id(self.run_id, "run id")
        validate_id(self.checkpoint_id, "checkpoint id")
        try:
            parse_resource_uri(self.key_uri)
        except ValueError as exc:
            raise ManifestError(f"key URI {self.key_uri!r}: {exc}") from None
        if not isinstance(self.created_at, int) or isinstance(self.created_at, bool):
            raise ManifestError("created_at must be integer Unix seconds")
        paths = [f.path for f in self.files]
        if not paths:
            raise ManifestError("a checkpoint lists at least one file")
        if len(set(paths)) != len(paths):
            raise ManifestError("duplicate file path in manifest")
        if len({f.ciphertext_digest for f in self.files}) != len(self.files):
            raise ManifestError("two entries share one ciphertext")
        _check_metrics(self.metrics)
        if self.documents is None and self.version == DOCUMENTS_MANIFEST_VERSION:
            raise ManifestError(f"manifest version {self.version} lists no documents")
        if self.documents is not None and self.version not in _DOCUMENT_VERSIONS:
            raise ManifestError(f"manifest version {self.version} cannot list documents")

    @classmethod
    def build(
        cls,
        *,
        run_id: str,
        key_uri: str,
        files: list[FileEntry],
        meta: Mapping[str, Any],
        created_at: int,
    ) -> Manifest:
        unknown = set(meta) - _META_KEYS
        if unknown:
            raise ManifestError(f"unknown manifest meta keys: {sorted(unknown)}")
        documents = meta.get("documents")
        if documents is not None and not isinstance(documents, DocumentDigests):
            documents = DocumentDigests.from_dict(documents)
        return cls(
            checkpoint_id=meta.get("checkpoint_id") or uuid.uuid4().hex,
            run_id=run_id,
            key_uri=key_uri,
            created_at=int(meta.get("created_at", created_at)),
            files=tuple(sorted(files, key=lambda f: f.path)),
            base_model_digest=_opt_str(meta, "base_model_digest"),
            dataset_digest=_opt_str(meta, "dataset_digest"),
            training_config_digest=_opt_str(meta, "training_config_digest"),
            metrics=_check_metrics(meta.get("metrics", {})),
            version=MANIFEST_VERSION,
            documents=documents,
        )

    @property
    def file_format_version(self) -> int:
        """The format version every encrypted file of this manifest has."""
        return FILE_FORMAT_OF_MANIFEST[self.version]

    def file_context(self, path: str) -> dict[str, Any]:
        """The context bound into the header of the encrypted file at `path`."""
        return file_context(self.run_id, self.checkpoint_id, path)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": MANIFEST_FORMAT,
            "format_version": self.version,
            "encryption": {
                "format_version": self.file_format_version,
                "suite": "AES-256-GCM-STREAM+A256KW",
            },
            "checkpoint_id": self.checkpoint_id,
            "run_id": self.run_id,
            "key_uri": self.key_uri,
            "created_at": self.created_at,
            "base_model_digest": self.base_model_digest,
            "dataset_digest": self.dataset_digest,
            "training_config_digest": self.training_config_digest,
            "metrics": self.metrics,
            "files": [f.to_dict() for f in self.files],
        }
        if self.documents is not None:
            d["documents"] = self.documents.to_dict()
        return d

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes; they must be exactly the canonical form."""
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ManifestError("manifest is not a JSON object")
        if d.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a checkpoint manifest (format {d.get('format')!r})")
        version = d.get("format_version")
        if version not in READABLE_MANIFEST_VERSIONS or isinstance(version, bool):
            raise ManifestError(f"unsupported manifest version {version!r}")
        enc = d.get("encryption")
        if (
            not isinstance(enc, dict)
            or enc.get("format_version") != FILE_FORMAT_OF_MANIFEST[version]
        ):
            raise ManifestError(f"unsupported encryption format {enc!r} for manifest {version}")
        files = d.get("files")
        if not isinstance(files, list):
            raise ManifestError("manifest files must be a list")
        try:
            m = cls(
                checkpoint_id=d.get("checkpoint_id"),
                run_id=d.get("run_id"),
                key_uri=d.get("key_uri"),
                created_at=d.get("created_at"),
                files=tuple(FileEntry.from_dict(f, version) for f in files),
                base_model_digest=_opt_str(d, "base_model_digest"),
                dataset_digest=_opt_str(d, "dataset_digest"),
                training_config_digest=_opt_str(d, "training_config_digest"),
                metrics=d.get("metrics"),
                version=version,
                documents=(DocumentDigests.from_dict(d["documents"]) if "documents" in d else None),
            )
        except TypeError as exc:
            raise ManifestError(f"manifest field has the wrong type: {exc}") from None
        if m.canonical_bytes() != data:
            raise ManifestError(
                "manifest bytes are not the canonical form (edited or extra fields)"
            )
        return m


def public_jwk_of(private_key_pem: bytes) -> dict[str, str]:
    """The P-256 public JWK (kty, crv, x, y) of a PEM private key; refuses other key types."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwcrypto import jwk

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise SignatureError("TEE private key is not a readable unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SignatureError("TEE key must be an EC P-256 key to sign ES256")
    pub = jwk.JWK.from_pyca(key.public_key()).export_public(as_dict=True)
    return {k: pub[k] for k in ("kty", "crv", "x", "y")}


def same_ec_key(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("kty", "crv", "x", "y"))


@dataclass(frozen=True)
class SignedManifest:
    manifest: Manifest
    manifest_bytes: bytes
    jws: str
    token: str

    def write(self, dst_dir: str) -> None:
        """Write token, signature, then the manifest itself last (each atomically)."""
        store = open_store(str(dst_dir))
        store.put_bytes(TOKEN_FILE, self.token.encode())
        store.put_bytes(SIGNATURE_FILE, self.jws.encode())
        store.put_bytes(MANIFEST_FILE, self.manifest_bytes)


def sign_manifest(
    manifest: Manifest,
    private_key_pem: bytes,
    token: str,
    *,
    dst_dir: str | None = None,
) -> SignedManifest:
    """Sign the canonical manifest with the TEE key (ES256) and attach the EAR token.

    The key must be the one attested in the token (cpu0 runtime_data_claims tee-pubkey); a
    mismatch is refused here, before anything is written. Verification also requires the token
    to have been valid at `manifest.created_at`, so a workload fetches its token (`/aa/token`)
    *before* `encrypt_checkpoint` and signs within the token's lifetime. With `dst_dir` (the
    checkpoint root) the token, the signature and the manifest are written there, manifest last.
    """
    from jwcrypto import jwk, jws

    pub = public_jwk_of(private_key_pem)
    claims = _unverified_claims(token)
    if not same_ec_key(pub, claims.tee_pubkey()):
        raise SignatureError("signing key is not the TEE key attested in the token")
    payload = manifest.canonical_bytes()
    key = jwk.JWK.from_pem(private_key_pem)
    sig = jws.JWS(payload)
    sig.add_signature(
        key,
        alg="ES256",
        protected={"alg": "ES256", "typ": JWS_TYPE, "kid": key.thumbprint()},
    )
    signed = SignedManifest(
        manifest=manifest, manifest_bytes=payload, jws=sig.serialize(compact=True), token=token
    )
    if dst_dir is not None:
        signed.write(dst_dir)
    return signed


def _unverified_claims(token: str) -> Any:
    """The token's claims read without verification: only to refuse, before anything is written,
    a signature that verification would reject anyway (verification re-reads them verified)."""
    from coco_ai.kbs.ear import unverified_claims
    from coco_ai.kbs.errors import KbsError

    try:
        claims = unverified_claims(token)
        claims.tee_pubkey()
    except (AttributeError, IndexError, ValueError, KbsError) as exc:
        raise SignatureError(f"token is not a usable EAR token: {exc}") from None
    return claims
