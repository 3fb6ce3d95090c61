from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from coco_ai.guest.attesters import (
    AttesterUnavailable,
    EvidenceError,
    NvidiaAttester,
    SampleAttester,
    SampleDeviceAttester,
    SnpAttester,
    TdxAttester,
    detect_attesters,
)
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.evidence import Attester, tee_evidence
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.kbs.wire import cpu_runtime_data_digest, device_runtime_data_digest

NONCE = base64.b64encode(b"n" * 32).decode()


def _b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def test_sample_attesters_satisfy_the_kbs_interface() -> None:
    assert isinstance(SampleAttester(), Attester)
    assert isinstance(SampleDeviceAttester(), Attester)
    assert (SampleAttester().tee, SampleDeviceAttester().tee) == ("sample", "sampledevice")


def test_composite_evidence_binds_report_data_to_wire_digests() -> None:
    pub = TeeKeyPair.generate().public_jwk()
    init = build_initdata("http://127.0.0.1:8080", None, {"io.coco-ai.run-id": "r1"})
    cpu = SampleAttester(init_data_digest=init.digest())
    ev = tee_evidence(cpu, [SampleDeviceAttester(count=1)], NONCE, pub)

    additional = ev["additional_evidence"]
    device = json.loads(additional)["sampledevice"]
    # Single device: exactly upstream's shape.
    assert set(device) == {"svn", "report_data"} and device["svn"] == "2"
    assert _b64(device["report_data"]) == device_runtime_data_digest(NONCE, pub)

    prim = ev["primary_evidence"]
    assert prim["svn"] == "1"
    assert _b64(prim["report_data"]) == cpu_runtime_data_digest(NONCE, pub, additional)
    assert _b64(prim["init_data"]) == init.digest()


def test_sample_without_initdata_is_upstream_shape() -> None:
    ev = SampleAttester().evidence(b"\x01" * 48)
    assert ev == {"svn": "1", "report_data": base64.b64encode(b"\x01" * 48).decode()}


def test_multi_device_extension() -> None:
    pub = TeeKeyPair.generate().public_jwk()
    att = SampleDeviceAttester(count=3)
    dev = device_runtime_data_digest(NONCE, pub)
    ev = att.evidence(dev)
    assert _b64(ev["report_data"]) == dev
    listed = ev["device_evidence_list"]
    assert len(listed) == 3 and len({d["uuid"] for d in listed}) == 3
    assert all(_b64(d["report_data"]) == dev and d["svn"] == "2" for d in listed)
    # The uuids are the devices' identity: stable across attestations of one instance.
    assert [d["uuid"] for d in att.evidence(dev)["device_evidence_list"]] == att.uuids


def test_bad_input_is_refused() -> None:
    with pytest.raises(EvidenceError, match="64 bytes"):
        SampleAttester().evidence(b"x" * 65)
    with pytest.raises(EvidenceError, match="positive"):
        SampleDeviceAttester(count=0)
    with pytest.raises(EvidenceError, match="digest"):
        SampleAttester(init_data_digest=b"short")


def test_hardware_attesters_refuse_on_a_host_without_them(tmp_path: Path) -> None:
    missing = tmp_path / "no-tsm"
    assert not TdxAttester.available(missing) and not SnpAttester.available(missing)
    with pytest.raises(AttesterUnavailable, match="not available"):
        TdxAttester(tsm_root=missing).evidence(b"\0" * 48)
    with pytest.raises(AttesterUnavailable, match="not available"):
        SnpAttester(tsm_root=missing).evidence(b"\0" * 48)


@pytest.mark.skipif(NvidiaAttester.available(), reason="host has NVIDIA attestation tooling")
def test_nvidia_refuses_without_tooling() -> None:
    with pytest.raises(AttesterUnavailable, match="not available"):
        NvidiaAttester().evidence(b"\0" * 48)


@pytest.mark.skipif(
    TdxAttester.available() or SnpAttester.available(), reason="host is a confidential VM"
)
def test_detect_refuses_on_a_non_tee_host() -> None:
    with pytest.raises(AttesterUnavailable, match="SampleAttester"):
        detect_attesters(gpus=1)
