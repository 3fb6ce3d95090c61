"""Deployment settings of the provider: the ``[coco_ai]`` Airflow config section.

Defaults are declared in ``coco_ai_airflow.provider_info`` (``config``); override them in
airflow.cfg or with ``AIRFLOW__COCO_AI__<OPTION>`` environment variables.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from airflow.sdk import conf

if TYPE_CHECKING:
    from coco_ai.owner_policy import SignedOwnerPolicy

SECTION = "coco_ai"


def setting(option: str) -> str:
    return conf.get(SECTION, option)


def required_setting(option: str) -> str:
    value = setting(option).strip()
    if not value:
        raise ValueError(
            f"[{SECTION}] {option} is not configured (set AIRFLOW__COCO_AI__{option.upper()})"
        )
    return value


def as_int(name: str, value: object) -> int:
    """An int from a rendered template field (native rendering gives int; text gives "3")."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def coco_run_id(dag_id: str, airflow_run_id: str) -> str:
    """A run id safe as a KBS path segment, an initdata claim and an object-store name.

    Airflow run ids hold ``:`` and ``+``; those become ``-``, and a digest of the original keeps
    two runs whose readable parts collide apart.
    """
    readable = _UNSAFE.sub("-", f"{dag_id}-{airflow_run_id}").strip("-._")[:100]
    suffix = hashlib.sha256(f"{dag_id}\0{airflow_run_id}".encode()).hexdigest()[:12]
    return f"{readable}-{suffix}"


def owner_policy() -> SignedOwnerPolicy:
    """The data owner's policy, verified with the owner's public key on every call.

    Both come from the deployment's ``[coco_ai]`` configuration (owner_public_key,
    owner_policy), never from Connections, Variables, Params or XCom, which Airflow users and
    tasks can write.
    """
    from pathlib import Path

    from coco_ai.owner_policy import verify_owner_policy
    from coco_ai.storage.store import open_store, split_object_uri

    key_path = required_setting("owner_public_key")
    try:
        key = Path(key_path).read_bytes()
    except OSError as exc:
        raise ValueError(f"[{SECTION}] owner_public_key {key_path}: {exc.strerror}") from None
    location = required_setting("owner_policy")
    parent, name = split_object_uri(location)
    try:
        signed = open_store(parent).read_bytes(name)
    except OSError as exc:
        raise ValueError(f"[{SECTION}] owner_policy {location}: cannot read it ({exc})") from None
    return verify_owner_policy(signed, key)
