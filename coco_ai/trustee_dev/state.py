"""The stand-in's state directory: resources encrypted at rest, policies, reference values.

Layout and record format are in docs/formats/trustee_dev.md. Every write is atomic (temporary
file + rename) so a crash never leaves a half-written record. Resource records are AES-256-GCM
under `state.key` (created 0600) with the record's metadata (version, path, kind, uuid) as AAD,
so moving a ciphertext to another path or editing its metadata makes it undecryptable.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coco_ai.kbs.wire import canonical_json, parse_resource_path

# 2: no `bind` field (version 1 records, which had one, are refused as such).
RECORD_VERSION = 2
# Storage namespaces, as Trustee's: the resource plugin's, and main's provisioner plugin's own
# (`PROVISIONER_STORAGE_NAMESPACE`), so neither plugin sees the other's records.
NAMESPACES = ("resources", "provisioner")
STATE_KEY_FILE = "state.key"
CA_CERT_FILE = "ca.pem"
#: append-only audit of every resource the stand-in released (docs/formats/trustee_dev.md §1)
RELEASE_LOG_FILE = "releases.jsonl"


class StateError(Exception):
    """The state directory is unusable or a record failed its integrity check."""


@dataclass(frozen=True)
class ResourceRecord:
    path: str
    data: bytes
    kind: str  # "uploaded" (admin POST) or "provisioner" (main's provisioner plugin)
    uuid: str | None

    def __repr__(self) -> str:  # never show the bytes
        return f"ResourceRecord(path={self.path!r}, kind={self.kind!r}, uuid={self.uuid!r})"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateDir:
    """All persistent state of one stand-in instance."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._aead = AESGCM(self._state_key())

    # -- keys -------------------------------------------------------------------------------

    def _state_key(self) -> bytes:
        path = self.root / STATE_KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                raise StateError(
                    f"{path} is readable by group/others; expected mode 0600"
                ) from None
            key = path.read_bytes()
            if len(key) != 32:
                raise StateError(f"{path} does not hold a 32-byte key") from None
            return key
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key

    @property
    def ca_cert_path(self) -> Path:
        return self.root / CA_CERT_FILE

    @property
    def signer_dir(self) -> Path:
        return self.root / "token-signer"

    @property
    def token_signer_cert_path(self) -> Path:
        return self.signer_dir / "signer-cert.pem"

    @property
    def tls_ca_dir(self) -> Path:
        """The TLS CA (never the token CA): `ca.pem` for clients to pin, `ca-key.pem` (0600)."""
        return self.root / "tls-ca"

    @property
    def tls_ca_cert_path(self) -> Path:
        return self.tls_ca_dir / "ca.pem"

    # -- resources --------------------------------------------------------------------------

    def _resource_file(self, path: str, namespace: str) -> Path:
        rp = parse_resource_path(path)  # validated segments only: no traversal possible
        if namespace not in NAMESPACES:
            raise StateError(f"unknown storage namespace {namespace!r}")
        return self.root / namespace / rp.repo / rp.type / f"{rp.tag}.json"

    def put_resource(
        self,
        path: str,
        data: bytes,
        *,
        kind: str = "uploaded",
        uuid: str | None = None,
        namespace: str = "resources",
    ) -> None:
        meta: dict[str, Any] = {
            "version": RECORD_VERSION,
            "path": path,
            "kind": kind,
            "uuid": uuid,
        }
        nonce = secrets.token_bytes(12)
        ciphertext = self._aead.encrypt(nonce, data, canonical_json(meta))
        record = dict(meta, nonce=_b64(nonce), ciphertext=_b64(ciphertext))
        write_atomic(self._resource_file(path, namespace), json.dumps(record).encode())

    def get_resource(self, path: str, namespace: str = "resources") -> ResourceRecord | None:
        file = self._resource_file(path, namespace)
        try:
            record = json.loads(file.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            raise StateError(f"resource record for {path} is corrupt") from None
        meta = {k: record.get(k) for k in ("version", "path", "kind", "uuid")}
        if meta["version"] != RECORD_VERSION:
            raise StateError(
                f"resource record for {path} has format version {meta['version']!r}; this "
                f"stand-in reads version {RECORD_VERSION} only (recreate the state directory)"
            )
        if meta["path"] != path:
            raise StateError(f"resource record for {path} does not belong to that path")
        try:
            data = self._aead.decrypt(
                base64.b64decode(record["nonce"]),
                base64.b64decode(record["ciphertext"]),
                canonical_json(meta),
            )
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise StateError(f"resource record for {path} failed its integrity check") from None
        return ResourceRecord(path, data, meta["kind"], meta["uuid"])

    def delete_resource(self, path: str, namespace: str = "resources") -> bool:
        file = self._resource_file(path, namespace)
        try:
            file.unlink()
        except FileNotFoundError:
            return False
        return True

    # -- release audit ----------------------------------------------------------------------

    def record_release(self, path: str, claims: dict[str, Any], at: float) -> None:
        """Append who received `path`: the token's cpu0 init_data digest and init_data_claims
        (public: run id, image digest, grant and key names), never the resource itself. One
        `O_APPEND` write per line, so concurrent requests never interleave within a line."""
        cpu0 = claims.get("submods", {}).get("cpu0", {}).get("ear.veraison.annotated-evidence", {})
        entry = {
            "at": round(at, 3),
            "path": path,
            "init_data": cpu0.get("init_data"),
            "init_data_claims": cpu0.get("init_data_claims"),
        }
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self.root / RELEASE_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def releases(self) -> list[dict[str, Any]]:
        """The release audit, oldest first."""
        try:
            text = (self.root / RELEASE_LOG_FILE).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]

    # -- policies and reference values ------------------------------------------------------

    def _policy_file(self, policy_id: str) -> Path:
        return self.root / "policies" / f"{policy_id}.rego"

    def put_policy(self, policy_id: str, text: str) -> None:
        write_atomic(self._policy_file(policy_id), text.encode("utf-8"), mode=0o644)

    def get_policy(self, policy_id: str) -> str | None:
        try:
            return self._policy_file(policy_id).read_text("utf-8")
        except FileNotFoundError:
            return None

    def policy_ids(self) -> list[str]:
        folder = self.root / "policies"
        return sorted(p.stem for p in folder.glob("*.rego")) if folder.is_dir() else []

    def get_reference_values(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "reference-values.json").read_bytes())
        except FileNotFoundError:
            return {}

    def put_reference_values(self, values: dict[str, Any]) -> None:
        write_atomic(
            self.root / "reference-values.json",
            json.dumps(values, sort_keys=True).encode(),
            mode=0o644,
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
