"""Composite evidence assembly (what the client sends as `tee-evidence`)."""

from __future__ import annotations

import base64
import json

import pytest

from coco_ai.guest.attesters.sample import SampleAttester
from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
from coco_ai.kbs.evidence import Attester, additional_evidence_string, tee_evidence
from coco_ai.kbs.wire import (
    b64url_decode,
    b64url_encode,
    cpu_runtime_data_digest,
    device_runtime_data_digest,
)

JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "BBBB"}


def test_guest_attesters_satisfy_the_protocol():
    assert isinstance(SampleAttester(), Attester)
    assert isinstance(SampleDeviceAttester(), Attester)


def test_cpu_only_evidence():
    ev = tee_evidence(SampleAttester(), [], "bm9uY2U=", JWK)
    assert ev["additional_evidence"] == ""
    expected = cpu_runtime_data_digest("bm9uY2U=", JWK, "")
    assert base64.b64decode(ev["primary_evidence"]["report_data"]) == expected


def test_composite_evidence_binds_the_exact_string():
    ev = tee_evidence(SampleAttester(), [SampleDeviceAttester(count=2)], "n", JWK)
    additional = ev["additional_evidence"]
    assert isinstance(additional, str) and additional.startswith('{"sampledevice":')
    cpu = base64.b64decode(ev["primary_evidence"]["report_data"])
    assert cpu == cpu_runtime_data_digest("n", JWK, additional)
    dev = base64.b64encode(device_runtime_data_digest("n", JWK)).decode()
    entry = json.loads(additional)["sampledevice"]
    assert entry["report_data"] == dev
    assert [d["report_data"] for d in entry["device_evidence_list"]] == [dev, dev]


def test_additional_evidence_is_empty_without_devices():
    assert additional_evidence_string([], "n", JWK) == ""


def test_device_tee_cannot_be_primary():
    with pytest.raises(ValueError, match="primary"):
        tee_evidence(SampleDeviceAttester(), [], "n", JWK)


def test_unknown_device_tee_is_refused():
    class Odd:
        tee = "quantum"

        def evidence(self, report_data):
            return {}

    with pytest.raises(ValueError, match="unknown"):
        additional_evidence_string([Odd()], "n", JWK)


def test_b64url_helpers_are_strict():
    assert b64url_encode(b"\xfb\xff") == "-_8"
    assert b64url_decode("-_8") == b"\xfb\xff"
    for bad in ("-_8=", "+/8", "a b", "%%%", "A"):
        with pytest.raises(ValueError):
            b64url_decode(bad)
