"""`coco-ai checkpoint encrypt|decrypt|verify`: outputs and the documented exit codes."""

from __future__ import annotations

import json
import os
import time

import pytest

from coco_ai.cli import main
from coco_ai.crypto.cli import (
    EXIT_ATTESTATION,
    EXIT_INTEGRITY,
    EXIT_KEY,
    EXIT_OK,
    EXIT_USAGE,
)
from coco_ai.crypto.manifest import Manifest, sign_manifest


@pytest.fixture
def key_file(tmp_path, kek):
    p = tmp_path / "kek.bin"
    p.write_bytes(kek)
    return p


def encrypt(plain_dir, dst, key_file, *extra) -> int:
    return main(
        [
            "checkpoint",
            "encrypt",
            "--key-file",
            str(key_file),
            "--key-uri",
            "kbs:///r/t/tag",
            "--run-id",
            "run-a",
            *extra,
            str(plain_dir),
            str(dst),
        ]
    )


def test_encrypt_verify_decrypt(plain_dir, tmp_path, key_file, capsys):
    assert encrypt(plain_dir, tmp_path / "c", key_file, "--segment-size", "4096") == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 3 and report["run_id"] == "run-a"
    assert main(["checkpoint", "verify", str(tmp_path / "c")]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["signed"] is False
    assert (
        main(
            [
                "checkpoint",
                "decrypt",
                "--key-file",
                str(key_file),
                str(tmp_path / "c"),
                str(tmp_path / "d"),
            ]
        )
        == EXIT_OK
    )
    assert (tmp_path / "d" / "adapter_model.safetensors").read_bytes() == (
        plain_dir / "adapter_model.safetensors"
    ).read_bytes()


def test_data_owner_decrypts_a_run_checkpoint_with_the_run_key_root(plain_dir, tmp_path):
    from coco_ai.run_keys import derive_run_key

    root = tmp_path / "root.bin"
    root.write_bytes(os.urandom(32))
    run_key = tmp_path / "run.key"
    run_key.write_bytes(derive_run_key(root.read_bytes(), "run-a"))  # what the TEE derived
    assert encrypt(plain_dir, tmp_path / "c", run_key) == EXIT_OK
    args = ["checkpoint", "decrypt", "--run-key-root-file"]
    assert main([*args, str(root), str(tmp_path / "c"), str(tmp_path / "d")]) == EXIT_OK
    assert (tmp_path / "d" / "adapter_model.safetensors").read_bytes() == (
        plain_dir / "adapter_model.safetensors"
    ).read_bytes()
    other = tmp_path / "other-root.bin"
    other.write_bytes(os.urandom(32))
    assert main([*args, str(other), str(tmp_path / "c"), str(tmp_path / "e")]) == EXIT_KEY


def test_meta_file(plain_dir, tmp_path, key_file):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"metrics": {"loss": 1.5}, "dataset_digest": "sha256:ab"}))
    assert encrypt(plain_dir, tmp_path / "c", key_file, "--meta-file", str(meta)) == EXIT_OK
    m = Manifest.from_bytes((tmp_path / "c" / "manifest.json").read_bytes())
    assert m.metrics == {"loss": 1.5} and m.dataset_digest == "sha256:ab"


@pytest.mark.parametrize(
    "key_bytes", [b"", b"short", bytes(range(33))], ids=["empty", "short", "33-bytes"]
)
def test_bad_key_file_is_usage_error(plain_dir, tmp_path, key_bytes, capsys):
    bad = tmp_path / "bad.key"
    bad.write_bytes(key_bytes)
    assert encrypt(plain_dir, tmp_path / "c", bad) == EXIT_USAGE
    assert "32 raw bytes" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_bad_key_uri_is_usage_error(plain_dir, tmp_path, key_file):
    rc = main(
        [
            "checkpoint",
            "encrypt",
            "--key-file",
            str(key_file),
            "--key-uri",
            "kbs:///../etc/x",
            str(plain_dir),
            str(tmp_path / "c"),
        ]
    )
    assert rc == EXIT_USAGE


def test_missing_key_file_is_usage_error(plain_dir, tmp_path):
    assert encrypt(plain_dir, tmp_path / "c", tmp_path / "absent") == EXIT_USAGE


def test_tampered_is_integrity_failure(plain_dir, tmp_path, key_file, capsys):
    encrypt(plain_dir, tmp_path / "c", key_file)
    obj = sorted((tmp_path / "c" / "objects").iterdir())[0]
    obj.write_bytes(obj.read_bytes()[:-1])
    assert main(["checkpoint", "verify", str(tmp_path / "c")]) == EXIT_INTEGRITY
    assert "integrity failure" in capsys.readouterr().err
    rc = main(
        [
            "checkpoint",
            "decrypt",
            "--key-file",
            str(key_file),
            str(tmp_path / "c"),
            str(tmp_path / "d"),
        ]
    )
    assert rc == EXIT_INTEGRITY and not (tmp_path / "d").exists()


def test_incomplete_is_integrity_failure(tmp_path):
    (tmp_path / "c").mkdir()
    assert main(["checkpoint", "verify", str(tmp_path / "c")]) == EXIT_INTEGRITY


def test_wrong_key_exit_code(plain_dir, tmp_path, key_file):
    encrypt(plain_dir, tmp_path / "c", key_file)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    rc = main(
        [
            "checkpoint",
            "decrypt",
            "--key-file",
            str(other),
            str(tmp_path / "c"),
            str(tmp_path / "d"),
        ]
    )
    assert rc == EXIT_KEY and not (tmp_path / "d").exists()


def test_verify_with_trust_anchor(plain_dir, tmp_path, key_file, tee_key, attestation):
    encrypt(plain_dir, tmp_path / "c", key_file)
    m = Manifest.from_bytes((tmp_path / "c" / "manifest.json").read_bytes())
    token = attestation.issue(tee_key.public_jwk(), run_id="run-a", iat=int(time.time()) - 30)
    sign_manifest(m, tee_key.private_pem(), token, dst_dir=str(tmp_path / "c"))
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(attestation.ca_pem)
    base = ["checkpoint", "verify", "--trust-anchor", str(anchor)]
    assert main([*base, "--run-id", "run-a", str(tmp_path / "c")]) == EXIT_OK
    assert main([*base, "--run-id", "run-b", str(tmp_path / "c")]) == EXIT_ATTESTATION
    assert main([*base, "--run-id", "run-a", "--min-gpus", "2", str(tmp_path / "c")]) == (
        EXIT_ATTESTATION
    )
    assert main([*base, str(tmp_path / "c")]) == EXIT_USAGE  # no --run-id


def test_unsigned_checkpoint_fails_attested_verify(plain_dir, tmp_path, key_file, attestation):
    encrypt(plain_dir, tmp_path / "c", key_file)
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(attestation.ca_pem)
    rc = main(
        [
            "checkpoint",
            "verify",
            "--trust-anchor",
            str(anchor),
            "--run-id",
            "run-a",
            str(tmp_path / "c"),
        ]
    )
    assert rc == EXIT_ATTESTATION


def test_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["checkpoint", "decrypt", "only-one-arg"])
    assert e.value.code == EXIT_USAGE
