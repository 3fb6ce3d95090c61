"""Per-run keys derived inside the TEE (coco_ai.run_keys): grant format, checks, derivation."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coco_ai.digest import Digest
from coco_ai.run_keys import (
    Grant,
    RunKeyError,
    check_grant,
    checkpoint_key_path,
    derive_run_key,
    grant_path,
    tombstone,
)

DIGEST = Digest("sha384", hashlib.sha384(b"initdata").hexdigest())


def test_derivation_is_hkdf_sha256_over_the_run_id_and_separates_runs():
    root = os.urandom(32)
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"coco-ai run key v1", info=b"run-a"
    ).derive(root)
    assert derive_run_key(root, "run-a") == expected
    assert derive_run_key(root, "run-b") != expected
    assert derive_run_key(os.urandom(32), "run-a") != expected


@pytest.mark.parametrize(
    ("root", "run_id"),
    [(b"short", "run-a"), (bytes(range(32)), "../x")],
    ids=["short-root", "path-run-id"],
)
def test_derivation_refuses_a_bad_root_or_run_id(root, run_id):
    with pytest.raises(ValueError):
        derive_run_key(root, run_id)


def test_grant_round_trip_and_paths():
    grant = Grant("run-a", DIGEST)
    assert Grant.from_bytes(grant.to_bytes()) == grant
    assert grant_path("run-a").uri() == "kbs:///coco-ai-run/grant/run-a"
    assert checkpoint_key_path("run-a").uri() == "kbs:///coco-ai-run/checkpoint-key/run-a"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (tombstone("run-a"), "revoked"),
        (b'{"format":"other","run_id":"run-a","initdata_digest":"sha384:00"}', "format"),
        (b'{"format":"coco-ai/run-grant/v1","run_id":"run-a","initdata_digest":"md5:00"}', "md5"),
        (
            b'{"format":"coco-ai/run-grant/v1","initdata_digest":"sha384:' + b"0" * 96 + b'"}',
            "names no run",
        ),
    ],
)
def test_malformed_or_revoked_grants_are_refused(data, message):
    with pytest.raises(RunKeyError, match=message):
        Grant.from_bytes(data)


def test_grant_must_name_this_run_and_this_tees_initdata():
    grant = Grant("run-a", DIGEST)
    check_grant(grant, run_id="run-a", initdata_matches=lambda d: d == DIGEST.value)
    with pytest.raises(RunKeyError, match="not 'run-b'"):
        check_grant(grant, run_id="run-b", initdata_matches=lambda d: True)
    with pytest.raises(RunKeyError, match="not this TEE's initdata"):
        check_grant(grant, run_id="run-a", initdata_matches=lambda d: False)
