"""KServe serving export: compact JWE (A256KW + A256GCM, kid = kbs:/// URI)."""

from __future__ import annotations

import base64
import json
import os

import pytest
from joserfc import jwe as rfc_jwe
from joserfc.jwk import OctKey

from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.errors import CheckpointError, IntegrityError, KeyUnwrapError
from coco_ai.crypto.kserve import decrypt_kserve_jwe, export_checkpoint_file, export_kserve_jwe

from .helpers import KEY_URI

SERVING_URI = "kbs:///coco-ai/serving/adapter-v1"


def header(token: str) -> dict:
    h = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))


def test_export_is_a256kw_a256gcm_with_kbs_kid(kek):
    token = export_kserve_jwe(b"adapter bytes", kek=kek, key_uri=SERVING_URI)
    assert token.count(".") == 4  # compact: header.key.iv.ciphertext.tag
    assert header(token) == {"alg": "A256KW", "enc": "A256GCM", "kid": SERVING_URI}
    assert decrypt_kserve_jwe(token, kek=kek) == b"adapter bytes"


def test_export_interoperates_with_an_independent_jose_library(kek):
    token = export_kserve_jwe(b"\x00weights\xff", kek=kek, key_uri=SERVING_URI)
    out = rfc_jwe.decrypt_compact(token, OctKey.import_key(kek), algorithms=["A256KW", "A256GCM"])
    assert out.plaintext == b"\x00weights\xff"


def test_export_wrong_key(kek):
    token = export_kserve_jwe(b"x", kek=kek, key_uri=SERVING_URI)
    with pytest.raises(CheckpointError, match="did not decrypt"):
        decrypt_kserve_jwe(token, kek=os.urandom(32))


def test_export_refuses_non_kbs_uri(kek):
    with pytest.raises(ValueError):
        export_kserve_jwe(b"x", kek=kek, key_uri="file:///tmp/key")


def test_export_from_checkpoint(plain_dir, tmp_path, kek):
    encrypt_checkpoint(plain_dir, tmp_path / "c", kek=kek, key_uri=KEY_URI, run_id="r", meta={})
    serving = os.urandom(32)
    token = export_checkpoint_file(
        tmp_path / "c",
        "adapter_model.safetensors",
        kek=kek,
        serving_kek=serving,
        serving_key_uri=SERVING_URI,
    )
    assert (
        decrypt_kserve_jwe(token, kek=serving)
        == (plain_dir / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(KeyUnwrapError):
        export_checkpoint_file(
            tmp_path / "c",
            "adapter_model.safetensors",
            kek=serving,
            serving_kek=serving,
            serving_key_uri=SERVING_URI,
        )
    with pytest.raises(IntegrityError, match="not in the checkpoint"):
        export_checkpoint_file(
            tmp_path / "c", "nope", kek=kek, serving_kek=serving, serving_key_uri=SERVING_URI
        )
