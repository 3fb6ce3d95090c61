"""The attester interface the KBS client drives, and composite-evidence assembly.

One primary (CPU) attester plus any number of additional (device) attesters, combined exactly as
the guest attestation agent does (`rcar_client.rs` `get_composite_evidence`): every device
attests over the device runtime-data digest; `additional_evidence` is the JSON string of the
map {tee: evidence} ("" when there are no devices); the CPU attests over a digest that binds
that exact string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from coco_ai.kbs.wire import cpu_runtime_data_digest, device_runtime_data_digest

# kbs-types `Tee` serde names (protocol reference §1.10).
KNOWN_TEES = frozenset(
    {
        "az-snp-vtpm",
        "az-tdx-vtpm",
        "nvidia",
        "sgx",
        "snp",
        "tdx",
        "cca",
        "csv",
        "se",
        "hygondcu",
        "tpm",
        "sample",
        "sampledevice",
    }
)
DEVICE_ONLY_TEES = frozenset({"nvidia", "sampledevice", "hygondcu"})


@runtime_checkable
class Attester(Protocol):
    """Produces TEE evidence bound to `report_data`.

    `tee` is the kbs-types Tee name ("sample", "tdx", "snp", "sampledevice", "nvidia"…).
    `evidence` returns JSON-serialisable evidence whose report data is `report_data` (48-byte
    SHA-384 digest; hardware attesters pad/truncate it as their report format requires).
    """

    tee: str

    def evidence(self, report_data: bytes) -> Any: ...


def additional_evidence_string(devices: Sequence[Attester], nonce: str, tee_pubkey: dict) -> str:
    """The `additional_evidence` string: compact JSON {tee: evidence}, or "" with no devices.

    Trustee parses it as a map keyed by Tee, so two attesters of the same kind cannot both be
    sent; an attester covering several devices (e.g. sampledevice with a device list, or
    nvidia's device_evidence_list) must report them in its one entry.
    """
    if not devices:
        return ""
    dev_digest = device_runtime_data_digest(nonce, tee_pubkey)
    entries: dict[str, Any] = {}
    for attester in devices:
        tee = attester.tee
        if tee not in KNOWN_TEES:
            raise ValueError(f"device attester has unknown TEE name {tee!r}")
        if tee in entries:
            raise ValueError(
                f"two device attesters for TEE {tee!r}; additional evidence is a map keyed by "
                "TEE, so one attester must cover all devices of a kind"
            )
        entries[tee] = attester.evidence(dev_digest)
    return json.dumps(entries, separators=(",", ":"))


def tee_evidence(
    cpu: Attester, devices: Sequence[Attester], nonce: str, tee_pubkey: dict
) -> dict[str, Any]:
    """The `tee-evidence` member of the Attestation message."""
    if cpu.tee not in KNOWN_TEES or cpu.tee in DEVICE_ONLY_TEES:
        raise ValueError(f"{cpu.tee!r} is not a primary (CPU) TEE")
    additional = additional_evidence_string(devices, nonce, tee_pubkey)
    prim_digest = cpu_runtime_data_digest(nonce, tee_pubkey, additional)
    return {"primary_evidence": cpu.evidence(prim_digest), "additional_evidence": additional}
