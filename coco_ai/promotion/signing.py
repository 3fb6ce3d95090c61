"""OpenSSF model signing of a promoted checkpoint, offline, with an EC P-256 promotion key.

What is signed is the checkpoint exactly as stored: the ciphertext files and the signed manifest.
Airflow, which runs the promotion, never holds a checkpoint key, so it cannot sign plaintext; and
signing the ciphertext is what a consumer can check without any key. The plaintext is bound in
turn by the manifest's ciphertext digests (signed by the attested TEE key; the manifest is one of
the signed files) together with each file's key-committing header, which only one data key
opens (version-1 manifests also list plaintext digests), so a valid model signature vouches for
the whole chain down to the plaintext.

The signature is a Sigstore bundle (v0.3 JSON, DSSE envelope, in-toto statement with predicate
`https://model_signing/signature/v1.0`) written by model-signing's key-based signer: no Fulcio,
no Rekor, no network. It lives beside the checkpoint (`<checkpoint>.sig`), never inside it, so the
checkpoint's file set, which verification requires to match its manifest exactly, is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.crypto.errors import CheckpointError
from coco_ai.crypto.manifest import MANIFEST_FILE, PUBLIC_FILES, Manifest
from coco_ai.crypto.transfer import read_manifest
from coco_ai.promotion.errors import SignatureInvalid
from coco_ai.storage.store import Store, open_store, split_object_uri

_COPY_CHUNK = 8 * 1024 * 1024

SIGNATURE_SUFFIX = ".sig"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"


@dataclass(frozen=True)
class ModelSignature:
    """A model signature by reference: where it is, its digest, and what it covers."""

    signature_uri: str
    signature_digest: str  # "sha256:<hex>" of the bundle bytes
    files: dict[str, str]  # relative path -> "sha256:<hex>" of the file as signed


def default_signature_uri(checkpoint_uri: str) -> str:
    """`<checkpoint>.sig`: beside the checkpoint directory, not inside it."""
    return checkpoint_uri.rstrip("/") + SIGNATURE_SUFFIX


def sign_model(
    checkpoint_uri: str,
    *,
    private_key_path: str | Path,
    signature_uri: str | None = None,
    expected_files: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ModelSignature:
    """Sign the stored checkpoint with the EC P-256 key in `private_key_path`; write the bundle.

    The signature covers exactly the checkpoint's files (its manifest's objects, the token, the
    manifest signature and the manifest), nothing else that may lie in the same prefix. With
    `expected_files` (path -> "sha256:<hex>", e.g. from the promotion evidence) the bundle is
    written only if what was hashed for signing is exactly that: the bytes signed are the bytes
    verified. Works fully offline. Raises SignatureInvalid naming the problem.
    """
    import model_signing

    key_path = Path(private_key_path)
    _check_private_key(key_path)
    signature_uri = signature_uri or default_signature_uri(checkpoint_uri)
    options = dict(storage_options or {})
    with (
        _local_checkpoint(checkpoint_uri, options) as (model_dir, extras, files),
        tempfile.TemporaryDirectory() as tmp,
    ):
        bundle_path = Path(tmp) / "model.sig"
        try:
            (
                model_signing.signing.Config()
                .set_hashing_config(_hashing_config(extras))
                .use_elliptic_key_signer(private_key=key_path)
                .sign(model_dir, bundle_path)
            )
        except (ValueError, OSError) as exc:  # e.g. a symlink or unreadable file in the checkpoint
            raise SignatureInvalid(f"cannot sign {checkpoint_uri}: {_short(exc)}") from None
        bundle = bundle_path.read_bytes()
    signed = _signed_files(bundle)
    if set(signed) != set(files):
        missing = sorted(set(files) - set(signed))
        raise SignatureInvalid(f"checkpoint {checkpoint_uri} is missing file(s) {missing}")
    if expected_files is not None and signed != dict(expected_files):
        changed = sorted(
            k for k in set(signed) | set(expected_files) if signed.get(k) != expected_files.get(k)
        )
        raise SignatureInvalid(
            f"checkpoint {checkpoint_uri} changed after verification: {changed}; nothing signed"
        )
    parent, name = _signature_location(signature_uri)
    open_store(parent, **options).put_bytes(name, bundle)
    return ModelSignature(signature_uri, _sha256(bundle), signed)


def verify_model_signature(
    checkpoint_uri: str,
    *,
    public_key_path: str | Path,
    signature_uri: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ModelSignature:
    """Check the bundle at `signature_uri` against the stored checkpoint and the public key.

    Every checkpoint file must be signed and unchanged. Raises SignatureInvalid naming the
    mismatch (changed or missing file, unsigned checkpoint file, other key, malformed bundle).
    """
    import model_signing

    signature_uri = signature_uri or default_signature_uri(checkpoint_uri)
    options = dict(storage_options or {})
    parent, name = _signature_location(signature_uri)
    try:
        bundle = open_store(parent, **options).read_bytes(name)
    except FileNotFoundError:
        raise SignatureInvalid(f"no model signature at {signature_uri}") from None
    signed = _signed_files(bundle)
    with _local_checkpoint(checkpoint_uri, options) as (model_dir, _extras, files):
        unsigned = sorted(set(files) - set(signed))
        if unsigned:
            raise SignatureInvalid(
                f"model signature {signature_uri} does not cover checkpoint file(s) {unsigned}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            bundle_path = Path(tmp) / "model.sig"
            bundle_path.write_bytes(bundle)
            try:
                (
                    model_signing.verifying.Config()
                    .set_hashing_config(_hashing_config(()))
                    .set_ignore_unsigned_files(True)
                    .use_elliptic_key_verifier(public_key=Path(public_key_path))
                    .verify(model_dir, bundle_path)
                )
            except Exception as exc:  # model-signing raises ValueError and library errors
                why = _describe_mismatch(model_dir, signed) or _short(exc)
                raise SignatureInvalid(
                    f"model signature {signature_uri} does not verify for {checkpoint_uri}: {why}"
                ) from None
    return ModelSignature(signature_uri, _sha256(bundle), signed)


# ---- internals ---------------------------------------------------------------------------------


def _hashing_config(ignored: Iterable[str]):
    from model_signing import hashing

    # Every checkpoint file counts: a `.git*` name must not escape the signature, so the
    # library's default of skipping VCS paths is off; only non-checkpoint files are ignored.
    return hashing.Config().set_ignored_paths(paths=list(ignored), ignore_git_paths=False)


def _checkpoint_files(manifest: Manifest) -> list[str]:
    """The checkpoint's files as its manifest defines them (objects, the public files beside the
    manifest: token, JWS, training config; and the manifest)."""
    return [MANIFEST_FILE, *PUBLIC_FILES, *(f.object_name for f in manifest.files)]


def _read_manifest(store: Store) -> tuple[Manifest, bytes]:
    try:
        return read_manifest(store)
    except CheckpointError as exc:
        raise SignatureInvalid(f"checkpoint at {store.uri} is unusable: {exc}") from None


@contextmanager
def _local_checkpoint(
    checkpoint_uri: str, options: dict[str, Any]
) -> Iterator[tuple[Path, list[str], list[str]]]:
    """A local directory holding the checkpoint, the non-checkpoint files in it, and the
    checkpoint's files (per its manifest).

    Local stores are used in place (nothing copied); any other store is downloaded, manifest
    first, into a temporary directory holding exactly the checkpoint's files.
    """
    store = open_store(checkpoint_uri, **options)
    manifest, manifest_bytes = _read_manifest(store)
    files = _checkpoint_files(manifest)
    if store.uri.startswith("file://"):
        root = Path(store.uri.removeprefix("file://"))
        wanted = set(files)
        extras = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if not p.is_dir() and p.relative_to(root).as_posix() not in wanted
        )
        yield root, extras, files
        return
    with tempfile.TemporaryDirectory(prefix="coco-ai-sign-") as tmp:
        root = Path(tmp) / "checkpoint"
        root.mkdir()
        (root / MANIFEST_FILE).write_bytes(manifest_bytes)
        try:
            for name in files[1:]:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                with store.open(name) as src, open(root / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
        except FileNotFoundError as exc:
            raise SignatureInvalid(f"checkpoint {checkpoint_uri} is incomplete: {exc}") from None
        yield root, [], files


def _signature_location(uri: str) -> tuple[str, str]:
    try:
        return split_object_uri(uri)
    except ValueError as exc:
        raise SignatureInvalid(f"signature location: {exc}") from None


def _check_private_key(path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SignatureInvalid(f"promotion signing key {path} does not exist") from None
    except (ValueError, TypeError):
        raise SignatureInvalid(
            f"promotion signing key {path} is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignatureInvalid(
            f"promotion signing key {path} must be an EC P-256 key (model-signing key signer)"
        )


def _signed_files(bundle: bytes) -> dict[str, str]:
    """The per-file digests the bundle's statement lists (what the signature covers)."""
    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        if statement["predicateType"] != _PREDICATE_TYPE:
            raise ValueError(f"predicate type {statement['predicateType']!r}")
        resources = statement["predicate"]["resources"]
        return {r["name"]: f"{r['algorithm']}:{r['digest']}" for r in resources}
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid(f"model signature bundle is malformed: {exc}") from None


def _describe_mismatch(model_dir: Path, signed: dict[str, str]) -> str:
    """Name the signed files that are now missing or changed ("" when all still match, i.e. the
    signature itself or the key is what failed)."""
    problems = []
    for name, digest in sorted(signed.items()):
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        with open(path, "rb") as f:
            actual = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        if actual != digest:
            problems.append(f"{name} changed since signing")
    return "; ".join(problems)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:400] + "…"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
