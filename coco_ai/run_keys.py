"""Per-run keys that work on every Trustee we claim (v0.20.0, v0.21.0): derived inside the TEE.

Trustee v0.20.0 and v0.21.0 have no plugin that creates a key inside Trustee and binds it to one
pod's initdata (main's ``provisioner`` takes ``{vm_name, namespace}`` and is unreleased), and
Airflow must never hold key bytes, so Airflow cannot upload a per-run key either. Instead:

- **Root** — the data owner stores one random 32-byte *run-key root* in Trustee, once, at
  ``kbs:///coco-ai/run-key-root/<version>``, with the data owner's own credential. The resource
  policy releases it only to an attested TEE whose initdata names it (claim
  ``io.coco-ai.run-key-root``) and a run.
- **Grant** — key release (Airflow) writes the run's *grant* at
  ``kbs:///coco-ai-run/grant/<run id>``: public JSON naming the run and its initdata digest, no
  key. The resource policy releases a grant only to a TEE whose initdata names it (claim
  ``io.coco-ai.run-grant``), hence only to that run's TEEs.
- **Derivation** — inside the TEE the workload fetches its grant, checks that it names its own
  run and its own initdata (as its attestation token reports it), fetches the root and derives
  ``HKDF-SHA256(ikm=root, salt="coco-ai run key v1", info=<run id>)``. The run key's reference
  stays ``kbs:///coco-ai-run/checkpoint-key/<run id>``: a name for the derived key (in the
  checkpoint header and manifest), not a stored resource. The data owner, who holds the root,
  derives the same key to read a checkpoint.
- **Revocation** — the grant is overwritten with a tombstone, then deleted. A TEE of a revoked run
  started afterwards gets no grant (or a tombstone) and derives nothing. Writing first makes the
  delete succeed on every version (v0.20/v0.21's LocalFs backend answers a DELETE of an absent
  resource with 401 ``PluginInternalError``), so a retry after a lost answer neither fails nor
  hides a real error.

Trade-off (docs/THREAT_MODEL.md): the root reaches every approved TEE that runs a granted run, so
a broken TEE exposes the checkpoint keys of all runs under that root version, where a key created
per run inside Trustee would expose one. Rotating the root version bounds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from coco_ai.digest import Digest
from coco_ai.kbs.resource_path import ResourcePath, validate_segment

RUN_REPOSITORY = "coco-ai-run"
GRANT_TYPE = "grant"
CHECKPOINT_KEY_TYPE = "checkpoint-key"
#: The data owner's default run-key root (the version is the tag; rotate by adding v2, …).
DEFAULT_ROOT = ResourcePath("coco-ai", "run-key-root", "v1")
KEY_SIZE = 32
_SALT = b"coco-ai run key v1"
_GRANT_FORMAT = "coco-ai/run-grant/v1"


class RunKeyError(ValueError):
    """A grant or root that must not be used (the message says what is wrong)."""


def grant_path(run_id: str) -> ResourcePath:
    return ResourcePath(RUN_REPOSITORY, GRANT_TYPE, validate_segment(run_id))


def checkpoint_key_path(run_id: str) -> ResourcePath:
    """The name of a run's (derived) checkpoint key."""
    return ResourcePath(RUN_REPOSITORY, CHECKPOINT_KEY_TYPE, validate_segment(run_id))


@dataclass(frozen=True)
class Grant:
    """What key release publishes for a run (public: a run id and a digest)."""

    run_id: str
    initdata_digest: Digest

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": _GRANT_FORMAT,
                "run_id": self.run_id,
                "initdata_digest": str(self.initdata_digest),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise RunKeyError("run grant is not JSON") from None
        if not isinstance(doc, dict):
            raise RunKeyError("run grant is not a JSON object")
        if doc.get("revoked") is True:
            raise RunKeyError(f"run {doc.get('run_id')!r} was revoked")
        if doc.get("format") != _GRANT_FORMAT:
            raise RunKeyError(f"run grant format {doc.get('format')!r} is not {_GRANT_FORMAT}")
        try:
            digest = Digest.parse(doc.get("initdata_digest"), algorithms=("sha256", "sha384"))
        except ValueError as exc:
            raise RunKeyError(f"run grant: {exc}") from None
        run_id = doc.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise RunKeyError("run grant names no run")
        return cls(run_id, digest)


def tombstone(run_id: str) -> bytes:
    """What revocation writes over a grant before deleting it."""
    return json.dumps({"revoked": True, "run_id": run_id}, sort_keys=True).encode()


def revoke_grant(client, run_id: str, *, attempts: int = 3) -> ResourcePath:
    """Tombstone, then delete, the run's grant with the data owner's or Airflow's admin
    ``client`` (coco_ai.kbs.client.KbsAdminClient); the grant's path.

    Writing first means the delete always finds a resource, so the pair is safe to repeat
    (Trustee v0.20/v0.21 answer a DELETE of an absent resource with PluginInternalError): it is
    repeated, up to ``attempts`` times, when Trustee is unreachable or answers 5xx, including
    when the delete's answer was lost after Trustee acted. Any other failure is raised.
    """
    from coco_ai.kbs.errors import KbsUnavailable

    path = grant_path(run_id)
    for attempt in range(1, attempts + 1):
        try:
            client.set_resource(path, tombstone(run_id))
            client.delete_resource(path)
            return path
        except KbsUnavailable:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def derive_run_key(root: bytes, run_id: str) -> bytes:
    """The run's 32-byte key from the data owner's root (inside the TEE, or by the data owner)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(root) != KEY_SIZE:
        raise RunKeyError(f"run-key root must be {KEY_SIZE} bytes, got {len(root)}")
    validate_segment(run_id)
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=_SALT, info=run_id.encode()
    ).derive(root)


def read_key_file(path: str) -> bytes:
    """Exactly 32 raw bytes from ``path`` (a checkpoint key or a run-key root, the data owner's)."""
    try:
        with open(path, "rb") as f:
            key = f.read(KEY_SIZE + 1)
    except OSError as exc:
        raise RunKeyError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(key) != KEY_SIZE:
        raise RunKeyError(f"key file {path} must hold exactly {KEY_SIZE} raw bytes")
    return key


def add_key_file_arguments(parser) -> None:
    """The data owner's two ways to name a checkpoint's key on a command line (exactly one)."""
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", help="the checkpoint key: a file of exactly 32 raw bytes")
    key.add_argument(
        "--run-key-root-file",
        help="the data owner's 32-byte run-key root: a pipeline run's checkpoint key is derived "
        "from it and the run id in the manifest (coco_ai.run_keys)",
    )


def check_grant(grant: Grant, *, run_id: str, initdata_matches) -> None:
    """Refuse a grant for another run, or for other initdata than the TEE's own.

    ``initdata_matches(digest_bytes) -> bool`` answers from the TEE's own attestation token
    (``EarClaims.carries_init_data``), whatever encoding its verifier uses.
    """
    if grant.run_id != run_id:
        raise RunKeyError(f"run grant is for run {grant.run_id!r}, not {run_id!r}")
    if not initdata_matches(grant.initdata_digest.value):
        raise RunKeyError(
            f"run grant names initdata {grant.initdata_digest}, not this TEE's initdata"
        )
