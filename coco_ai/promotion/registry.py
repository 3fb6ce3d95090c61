"""MLflow model registry: one model version per promoted checkpoint, provenance as tags.

The registry records references only (checkpoint URI, digests, token digest, signature URI,
metrics); it never sees a key or plaintext. A version is keyed by its manifest digest: registering
the same manifest again returns the existing version instead of creating a duplicate, so a retried
promotion is harmless. Callers register only after verification and signing succeeded
(`coco_ai.promotion.promote` enforces that order).

Creating a version and moving the alias to it are two registry calls; a version is created with
the tag ``coco-ai.alias_pending`` (the alias it is to get), removed once the alias points at it.
A promotion killed between the two leaves the tag, so its retry can tell an interrupted
registration (finish it) from a replay of a version that was served and replaced (a rollback).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.digest import is_sha256
from coco_ai.promotion.errors import RegistryError

TAG_PREFIX = "coco-ai."
METRIC_TAG_PREFIX = TAG_PREFIX + "metric."
MANIFEST_DIGEST_TAG = TAG_PREFIX + "manifest_digest"
#: on a version whose registration has not yet moved the alias to it (see the module docstring)
ALIAS_PENDING_TAG = TAG_PREFIX + "alias_pending"
DEFAULT_ALIAS = "serving"
REGISTRY_URI_ENV = "COCO_AI_REGISTRY_URI"
HOME_ENV = "COCO_AI_HOME"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_KEY = re.compile(r"^[A-Za-z0-9_]{1,100}$")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def alias_pending(self) -> bool:
        """Registered by a promotion that stopped before moving the alias to it."""
        return ALIAS_PENDING_TAG in self.tags


def default_registry_uri() -> str:
    """`$COCO_AI_REGISTRY_URI`, else `sqlite:///$COCO_AI_HOME/mlflow.db` (`~/.coco-ai` default)."""
    if uri := os.environ.get(REGISTRY_URI_ENV):
        return uri
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".coco-ai")
    return sqlite_registry_uri(home / "mlflow.db")


def sqlite_registry_uri(db_path: str | Path) -> str:
    """The MLflow URI of a SQLite registry file (its directory is created)."""
    path = Path(db_path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@contextmanager
def registry_lock(registry_uri: str | None = None) -> Iterator[None]:
    """Hold the promotion lock of `registry_uri`: the champion check, the registration and the
    alias move of one promotion happen as one step, so concurrent runs move the serving alias
    monotonically and never both replace the same champion.

    An exclusive ``flock`` on ``<db>.lock`` beside a SQLite registry, which every process
    sharing that file sees; for any other registry (an MLflow server) on a lock file named after
    the URI under ``$COCO_AI_HOME/locks``, which serialises the promotions of one host. Workers
    on several hosts sharing a remote registry must serialise promotion themselves (an Airflow
    pool of one slot: docs/OPERATIONS.md).
    """
    uri = registry_uri or default_registry_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///") + ".lock")
    else:
        home = Path(os.environ.get(HOME_ENV) or Path.home() / ".coco-ai")
        path = home / "locks" / f"registry-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def provenance_tags(provenance: Mapping[str, Any]) -> dict[str, str]:
    """Flatten provenance into registry tags: `coco-ai.<key>`, metrics as `coco-ai.metric.<k>`."""
    tags: dict[str, str] = {}
    for key, value in provenance.items():
        if not _KEY.match(key):
            raise RegistryError(f"provenance key {key!r} is not a plain identifier")
        if value is None:
            continue
        if key == "metrics":
            if not isinstance(value, Mapping):
                raise RegistryError("provenance 'metrics' must be a mapping of name to number")
            for metric, number in value.items():
                if not _KEY.match(str(metric)):
                    raise RegistryError(f"metric name {metric!r} is not a plain identifier")
                tags[METRIC_TAG_PREFIX + str(metric)] = repr(number)
        elif isinstance(value, str | int | float | bool):
            tags[TAG_PREFIX + key] = str(value)
        else:
            raise RegistryError(f"provenance {key!r} must be a string or number, not a structure")
    digest = tags.get(MANIFEST_DIGEST_TAG, "")
    if not is_sha256(digest):
        raise RegistryError("provenance needs manifest_digest as 'sha256:<64 hex>'")
    return tags


def find_model_version(
    name: str, manifest_digest: str, *, registry_uri: str | None = None
) -> RegisteredVersion | None:
    """The version of `name` registered for `manifest_digest`, or None."""
    _check_name(name)
    if not is_sha256(manifest_digest):
        raise RegistryError("manifest_digest must be 'sha256:<64 hex>'")
    return _find(_client(registry_uri), name, manifest_digest)


def register_model_version(
    name: str,
    checkpoint_uri: str,
    provenance: Mapping[str, Any],
    alias: str = DEFAULT_ALIAS,
    *,
    registry_uri: str | None = None,
) -> tuple[str, int]:
    """Register `checkpoint_uri` as a version of `name` with provenance tags; move `alias` to it.

    Idempotent on the manifest digest: the same manifest returns the version already registered
    (its tags refreshed to `provenance`, e.g. a new signature digest) and moves `alias` to it.
    A new version carries ``ALIAS_PENDING_TAG`` until the alias points at it.
    """
    from mlflow.exceptions import MlflowException

    _check_name(name)
    if not checkpoint_uri:
        raise RegistryError("checkpoint_uri must not be empty")
    tags = provenance_tags(provenance)
    client = _client(registry_uri)
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = _find(client, name, tags[MANIFEST_DIGEST_TAG])
        if existing is not None:
            version = existing.version
            # Same manifest, same version; a re-run re-signed it, so refresh what changed.
            for key, value in tags.items():
                if existing.tags.get(key) != value:
                    client.set_model_version_tag(name, str(version), key, value)
        else:
            created = client.create_model_version(
                name,
                source=checkpoint_uri,
                tags={**tags, ALIAS_PENDING_TAG: alias},
                description="Attested, verified and signed by coco_ai.promotion",
            )
            version = int(created.version)
        if alias:
            client.set_registered_model_alias(name, alias, str(version))
        if existing is None or existing.alias_pending:
            client.delete_model_version_tag(name, str(version), ALIAS_PENDING_TAG)
    except MlflowException as exc:
        raise RegistryError(f"model registry refused {name!r}: {exc.message}") from None
    return name, version


def model_versions(name: str, *, registry_uri: str | None = None) -> list[RegisteredVersion]:
    """Every version of `name` (empty when the model is not registered)."""
    _check_name(name)
    client = _client(registry_uri)
    return [_record(v) for v in client.search_model_versions(f"name = '{name}'")]


def version_by_alias(
    name: str, alias: str = DEFAULT_ALIAS, *, registry_uri: str | None = None
) -> RegisteredVersion | None:
    """The version `alias` points at, or None when the alias (or model) does not exist."""
    from mlflow.exceptions import MlflowException

    _check_name(name)
    try:
        return _record(_client(registry_uri).get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"model registry lookup failed: {exc.message}") from None


def resolve_entry(target: str, *, registry_uri: str | None = None) -> tuple[str, dict | None]:
    """The checkpoint URI of `target` — a checkpoint URI, ``models:/<name>/<version>`` or
    ``models:/<name>@<alias>`` — and, for a registry entry, that entry (references only)."""
    if not target.startswith("models:/"):
        return target, None
    spec = target.removeprefix("models:/")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        found = version_by_alias(name, alias, registry_uri=registry_uri)
    else:
        name, _, number = spec.partition("/")
        if not number.isdigit():
            raise RegistryError(
                f"registry entry {target!r} must be models:/<name>/<version> or "
                "models:/<name>@<alias>"
            )
        versions = model_versions(name, registry_uri=registry_uri)
        found = next((v for v in versions if v.version == int(number)), None)
    if found is None:
        raise RegistryError(f"registry entry {target!r} does not exist")
    entry = {
        "model_name": found.name,
        "version": found.version,
        "aliases": list(found.aliases),
        "tags": dict(found.tags),
    }
    return found.source, entry


# ---- internals ---------------------------------------------------------------------------------


def _client(registry_uri: str | None):
    from mlflow import MlflowClient

    uri = registry_uri or default_registry_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_name(name: str) -> None:
    # Also keeps the name safe to quote inside an MLflow search filter.
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"model name {name!r} must match {_NAME.pattern}")


def _find(client, name: str, manifest_digest: str) -> RegisteredVersion | None:
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{MANIFEST_DIGEST_TAG}` = '{manifest_digest}'"
    )
    if not found:
        return None
    # Registration creates at most one version per digest; should several exist (a concurrent
    # promotion), the oldest is the canonical one.
    return _record(min(found, key=lambda v: int(v.version)))


def _record(v) -> RegisteredVersion:
    return RegisteredVersion(
        name=v.name,
        version=int(v.version),
        source=v.source,
        tags=dict(v.tags or {}),
        aliases=tuple(v.aliases or ()),
    )
