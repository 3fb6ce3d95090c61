"""Deployment settings of the provider: the ``[coco_ai]`` Airflow config section.

Defaults are declared in ``coco_ai_airflow.provider_info`` (``config``); override them in
airflow.cfg or with ``AIRFLOW__COCO_AI__<OPTION>`` environment variables.
"""

from __future__ import annotations

import hashlib
import re

from airflow.sdk import conf

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
