"""Wire primitives: the upstream JCS/SHA-384 vector, the derived runtime-data example, and
resource-URI validation."""

from __future__ import annotations

import hashlib
import re

import pytest

from coco_ai.kbs.resource_path import RESOURCE_URI_PATTERN
from coco_ai.kbs.wire import (
    PROTOCOL_VERSION,
    ResourcePath,
    canonical_json,
    cpu_runtime_data_digest,
    device_runtime_data_digest,
    parse_resource_path,
    parse_resource_uri,
    to_resource_path,
    validate_segment,
)

JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "BBBB"}


def test_protocol_version_is_trustee_exact_match():
    assert PROTOCOL_VERSION == "0.4.0"


def test_upstream_attestation_service_vector():
    # confidential-containers/trustee attestation-service/src/lib.rs test vector.
    canon = canonical_json({"b": 1, "a": "test", "c": {"d": "e"}})
    assert canon == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(canon).hexdigest() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )


def test_derived_cpu_runtime_data_example():
    canon = canonical_json({"additional-evidence": "", "nonce": "bm9uY2U=", "tee-pubkey": JWK})
    assert canon == (
        b'{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW",'
        b'"crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}'
    )
    digest = cpu_runtime_data_digest("bm9uY2U=", JWK, "")
    assert len(digest) == 48
    assert digest.hex() == (
        "d20490d30e5f16cba693abc1ca3c31ed977d2722d0adf01a980972d16913dc38"
        "f103c1f12abf477df0523af2b12e4b43"
    )


def test_cpu_digest_binds_additional_evidence_and_key():
    base = cpu_runtime_data_digest("n", JWK, "")
    assert cpu_runtime_data_digest("n", JWK, '{"sampledevice":{}}') != base
    assert cpu_runtime_data_digest("n", {**JWK, "x": "AAAB"}, "") != base
    assert cpu_runtime_data_digest("m", JWK, "") != base
    with pytest.raises(TypeError):
        cpu_runtime_data_digest("n", JWK, None)  # type: ignore[arg-type]


def test_device_digest_has_no_additional_evidence_member():
    expected = hashlib.sha384(
        b'{"nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC",'
        b'"x":"AAAA","y":"BBBB"}}'
    ).digest()
    assert device_runtime_data_digest("bm9uY2U=", JWK) == expected


ACCEPTED_URIS = [
    "kbs:///default/key/one",
    "kbs+resource:///default/key/one",
    "kbs://kbs.example:8080/default/key/one",
]


@pytest.mark.parametrize("uri", ACCEPTED_URIS)
def test_parse_resource_uri_accepts_resource_schemes(uri):
    path = parse_resource_uri(uri)
    assert path == ResourcePath("default", "key", "one")
    assert path.uri() == "kbs:///default/key/one"
    assert path.url_path() == "default/key/one"


REJECTED_URIS = [
    "kbs:///default/../one",
    "kbs:///../key/one",
    "kbs:///default/key/..",
    "kbs:///default/./one",
    "kbs:///./key/one",
    "kbs:///default/%2e%2e/one",
    "kbs:///default/%2E%2E/one",
    "kbs:///default/key/%2e",
    "kbs:///default/key%2fone/x",
    "kbs:///default/%252e%252e/one",
    "kbs:///default/key/one%00",
    "kbs:///default\\key\\one",
    "kbs:///default/..\\key/one",
    "kbs:///default//one",
    "kbs:///default/key/",
    "kbs:////key/one",
    "kbs:///default/key/one/extra",
    "kbs:///default/key",
    "kbs:///default/key/one?x=1",
    "kbs:///default/key/one#frag",
    "kbs+pkcs11:///default/key/one",
    "http:///default/key/one",
    "default/key/one",
    "kbs://",
    "kbs:///default/k ey/one",
    "kbs:///default/kéy/one",
]


@pytest.mark.parametrize("uri", REJECTED_URIS)
def test_parse_resource_uri_rejects_traversal_and_malformed(uri):
    with pytest.raises(ValueError):
        parse_resource_uri(uri)


@pytest.mark.parametrize(
    ("uri", "valid"), [(u, True) for u in ACCEPTED_URIS] + [(u, False) for u in REJECTED_URIS]
)
def test_declarative_pattern_is_the_parser_rule(uri, valid):
    # The trigger form validates with the pattern (as jsonschema does: re.search).
    assert bool(re.search(RESOURCE_URI_PATTERN, uri)) is valid


@pytest.mark.parametrize(
    "path", ["a/../b", "./b/c", "a/b", "a/b/c/d", "", "a//c", "/a/b/c", "a/b/c/"]
)
def test_parse_resource_path_rejects(path):
    with pytest.raises(ValueError):
        parse_resource_path(path)


def test_resource_path_constructor_validates():
    with pytest.raises(ValueError):
        ResourcePath("default", "..", "x")
    assert validate_segment("a.b-c_D9") == "a.b-c_D9"
    for bad in ("", ".", "..", "a/b", "a%2fb", "a\\b"):
        with pytest.raises(ValueError):
            validate_segment(bad)


def test_to_resource_path_accepts_uri_path_and_object():
    rp = ResourcePath("r", "t", "g")
    assert to_resource_path(rp) is rp
    assert to_resource_path("kbs:///r/t/g") == rp
    assert to_resource_path("r/t/g") == rp
    with pytest.raises(ValueError):
        to_resource_path("r/t/../g")
