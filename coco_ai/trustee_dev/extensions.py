"""Behaviour of the stand-in that no Trustee release has: each one off unless named.

docs/architecture/trustee_dev.md lists them in the compatibility table; anything the stand-in
does differently from the emulated Trustee version must be here or in that table.
"""

from __future__ import annotations

from collections.abc import Iterable

RUN_KEY_BIND = "run-key-bind"
MULTI_GPU_SAMPLEDEVICE = "multi-gpu-sampledevice"
SAMPLE_INITDATA_CHECK = "sample-initdata-check"

EXTENSIONS = {
    RUN_KEY_BIND: "NOT TRUSTEE, to be removed: POST /kbs/v0/provisioner/provision with "
    "{resource_path?, bind} creates a per-run key released only to a token whose "
    "init_data_claims[bind.initdata_key] == bind.value",
    MULTI_GPU_SAMPLEDEVICE: "sampledevice evidence with device_evidence_list yields one gpuN "
    "submod per listed device (Trustee yields only gpu0)",
    SAMPLE_INITDATA_CHECK: "the sample verifier checks the evidence's init_data digest against "
    "the init-data body (Trustee ignores it)",
}


def check_extensions(names: Iterable[str] | None) -> frozenset[str]:
    """The extension names as a frozenset, refusing unknown ones."""
    if isinstance(names, str):
        raise TypeError("extensions is a collection of names, not one string")
    chosen = frozenset(names or ())
    unknown = sorted(chosen - set(EXTENSIONS))
    if unknown:
        raise ValueError(
            f"unknown stand-in extension(s) {', '.join(unknown)}; known: {', '.join(EXTENSIONS)}"
        )
    return chosen
