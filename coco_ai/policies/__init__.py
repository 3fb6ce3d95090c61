"""Rego policies shipped to Trustee; the stand-in evaluates the very same files.

`load(name)` returns a policy's text and `digest(name)` the SHA-256 of its bytes, which is what
the attestation gate compares. Names are file stems (``resource_prod``, ``attestation_cpu_tdx``…);
``POLICY_SETS`` says which files make up a deployment, keyed by Trustee policy id
(``resource-policy`` for the KBS resource policy, ``default_cpu``/``default_gpu`` for the
attestation service).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import Any

RESOURCE_POLICY_ID = "resource-policy"

POLICY_SETS: dict[str, dict[str, str]] = {
    # Local development: Trustee's sample CPU TEE and sample GPU.
    "dev": {
        RESOURCE_POLICY_ID: "resource_dev",
        "default_cpu": "attestation_cpu_sample",
        "default_gpu": "attestation_gpu_sampledevice",
    },
    # The stand-in with the production resource policy: sample evidence is refused.
    "prod": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_sample",
        "default_gpu": "attestation_gpu_sampledevice",
    },
    "prod-tdx": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_tdx",
        "default_gpu": "attestation_gpu_nvidia",
    },
    "prod-snp": {
        RESOURCE_POLICY_ID: "resource_prod",
        "default_cpu": "attestation_cpu_snp",
        "default_gpu": "attestation_gpu_nvidia",
    },
}

# Reference values under which the sample policies affirm Trustee's sample verifier claims
# (RVPS `sample` extractor payload shape: {id: value or [values]}).
DEV_SAMPLE_REFERENCE_VALUES: dict[str, object] = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 4,
    "device_svn": ["2"],
}


def names() -> list[str]:
    """Every shipped policy name (file stem)."""
    return sorted(
        entry.name[: -len(".rego")]
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".rego")
    )


def _bytes(name: str) -> bytes:
    if name not in names():
        raise KeyError(f"no shipped policy named {name!r}; known: {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{name}.rego").read_bytes()


def load(name: str) -> str:
    """The Rego text of policy `name`, exactly as shipped."""
    return _bytes(name).decode("utf-8")


def digest(name: str) -> str:
    """Hex SHA-256 of the policy file's bytes."""
    return hashlib.sha256(_bytes(name)).hexdigest()


@functools.cache
def load_regopy() -> Any:
    """The `regopy` module, loaded so that torch can still be imported afterwards.

    regopy's librego_shared.so and torch's libtorch_cpu.so clash when rego is loaded first: a
    later `import torch` aborts the process ("double free or corruption") in libtorch_cpu's
    static initialisers. Loading libtorch_cpu.so first (about 0.2 s, only when torch is
    installed and not yet imported) avoids it. Every in-process Rego user should import
    regopy through this function.
    """
    if "torch" not in sys.modules:
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.origin is not None:
            lib = Path(spec.origin).parent / "lib" / "libtorch_cpu.so"
            if lib.exists():
                ctypes.CDLL(str(lib))
    import regopy

    return regopy
