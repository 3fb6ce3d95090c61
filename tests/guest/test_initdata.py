from __future__ import annotations

import base64
import gzip
import hashlib
import tomllib

import pytest

from coco_ai.guest.initdata import (
    INITDATA_ANNOTATION,
    RUN_ID_KEY,
    Initdata,
    InitdataError,
    build_initdata,
)

KBS = "https://127.0.0.1:8080"


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_digest_is_hash_of_exact_toml_bytes(ca_pem: bytes, algorithm: str) -> None:
    init = build_initdata(KBS, ca_pem, {RUN_ID_KEY: "run-1"}, algorithm=algorithm)
    assert init.digest() == hashlib.new(algorithm, init.toml.encode()).digest()
    # One changed byte (a trailing space) is another digest: nothing is canonicalised.
    assert Initdata.parse(init.toml + " ").digest() != init.digest()


def test_annotation_round_trip_gunzip_base64(ca_pem: bytes) -> None:
    init = build_initdata(KBS, ca_pem, {RUN_ID_KEY: "run-1"})
    raw = gzip.decompress(base64.b64decode(init.annotation(), validate=True))
    assert raw == init.toml.encode()
    assert Initdata.from_annotation(init.annotation()).toml == init.toml
    # Deterministic (gzip mtime 0): the same initdata always renders the same pod spec.
    assert init.annotation() == build_initdata(KBS, ca_pem, {RUN_ID_KEY: "run-1"}).annotation()
    assert INITDATA_ANNOTATION == "io.katacontainers.config.hypervisor.cc_init_data"


def test_document_shape_and_pem_round_trip(ca_pem: bytes) -> None:
    init = build_initdata(
        KBS, ca_pem, {RUN_ID_KEY: "run-1", "io.coco-ai.image-digest": "sha256:ab"}
    )
    doc = tomllib.loads(init.toml)
    assert doc["version"] == "0.1.0" and doc["algorithm"] == "sha384"
    aa = tomllib.loads(doc["data"]["aa.toml"])
    cdh = tomllib.loads(doc["data"]["cdh.toml"])
    assert aa["token_configs"]["kbs"] == {"url": KBS, "cert": ca_pem.decode()}
    assert cdh["kbc"] == {"name": "cc_kbc", "url": KBS, "kbs_cert": ca_pem.decode()}
    assert init.kbs_url == KBS and init.kbs_cert == ca_pem.decode()
    claims = init.claims()
    assert claims[RUN_ID_KEY] == "run-1"
    assert claims["cdh.toml"]["kbc"]["url"] == KBS  # as Trustee's init_data_claims


def test_custom_values_with_toml_special_characters_round_trip() -> None:
    tricky = 'a"b\\c\'\'\'d"""e\n\t\x01\x7fé😀'
    init = build_initdata(KBS, None, {RUN_ID_KEY: tricky})
    assert init.claim(RUN_ID_KEY) == tricky
    assert tomllib.loads(init.toml)["data"][RUN_ID_KEY] == tricky
    assert init.kbs_cert is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('version = "0.2.0"\nalgorithm = "sha384"\n[data]\n', "version"),
        ('algorithm = "sha384"\n[data]\n', "version"),
        ('version = "0.1.0"\nalgorithm = "sha-384"\n[data]\n', "algorithm"),
        ('version = "0.1.0"\nalgorithm = "SHA384"\n[data]\n', "algorithm"),
        ('version = "0.1.0"\nalgorithm = "md5"\n[data]\n', "algorithm"),
        ('version = "0.1.0"\nalgorithm = "sha384"\n[data]\nx = 1\n', "must be a string"),
        ('version = "0.1.0"\nalgorithm = "sha384"\ndata = "x"\n', "table"),
        ('version = "0.1.0"\nalgorithm = "sha384"\nextra = 1\n', "unknown"),
        ('version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"cdh.toml" = "[kbc"\n', "cdh.toml"),
        ("version = ", "not valid TOML"),
    ],
)
def test_parse_rejects_bad_initdata(text: str, message: str) -> None:
    with pytest.raises(InitdataError, match=message):
        Initdata.parse(text)


def test_build_rejects_bad_input(ca_pem: bytes) -> None:
    with pytest.raises(InitdataError, match="algorithm"):
        build_initdata(KBS, ca_pem, algorithm="sha-384")
    with pytest.raises(InitdataError, match=r"io\.coco-ai\."):
        build_initdata(KBS, ca_pem, {"cdh.toml": "x"})
    with pytest.raises(InitdataError, match=r"io\.coco-ai\."):
        build_initdata(KBS, ca_pem, {"run-id": "x"})
    with pytest.raises(InitdataError, match="PEM"):
        build_initdata(KBS, b"not a cert", {})
    with pytest.raises(InitdataError, match="PEM"):
        build_initdata(KBS, ca_pem.replace(b"MII", b"MI'''I"), {})
    with pytest.raises(InitdataError, match="URL"):
        build_initdata("ftp://kbs", ca_pem, {})
    with pytest.raises(InitdataError, match="quotes"):
        build_initdata('https://kbs"\n[x]', ca_pem, {})


def test_from_annotation_rejects_garbage() -> None:
    with pytest.raises(InitdataError, match="base64"):
        Initdata.from_annotation("not base64!")
    with pytest.raises(InitdataError, match="gzip"):
        Initdata.from_annotation(base64.b64encode(b"plain text").decode())
    bomb = base64.b64encode(gzip.compress(b"#" * (2 << 20))).decode()
    with pytest.raises(InitdataError, match="larger"):
        Initdata.from_annotation(bomb)
