"""OpenSSF model signing of stored (encrypted) checkpoints with a P-256 promotion key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coco_ai.crypto.manifest import Manifest
from coco_ai.promotion import SignatureInvalid, sign_model, verify_model_signature
from coco_ai.promotion.signing import default_signature_uri


def _files_of(ckpt: Path) -> set[str]:
    return {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}


def test_signature_covers_exactly_the_stored_checkpoint(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    before = _files_of(ckpt)
    private, public = promotion_keys

    sig = sign_model(str(ckpt), private_key_path=private)

    assert sig.signature_uri == str(ckpt) + ".sig" == default_signature_uri(str(ckpt))
    assert Path(sig.signature_uri).is_file()
    assert _files_of(ckpt) == before  # nothing added inside the checkpoint
    assert set(sig.files) == before
    manifest = Manifest.from_bytes((ckpt / "manifest.json").read_bytes())
    for entry in manifest.files:  # the signed ciphertext is the manifest's ciphertext
        obj = (ckpt / entry.object_name).read_bytes()
        assert entry.ciphertext_blake3 == blake3.blake3(obj).hexdigest()
        assert sig.files[entry.object_name] == "sha256:" + hashlib.sha256(obj).hexdigest()
    bundle = json.loads(Path(sig.signature_uri).read_bytes())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"]["tlogEntries"] == []

    again = verify_model_signature(f"file://{ckpt}", public_key_path=public)
    assert again.signature_digest == sig.signature_digest


def test_tampered_ciphertext_fails_verification(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    private, public = promotion_keys
    sign_model(str(ckpt), private_key_path=private)
    victim = sorted((ckpt / "objects").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(SignatureInvalid, match=f"objects/{victim.name} changed since signing"):
        verify_model_signature(str(ckpt), public_key_path=public)


def test_replaced_manifest_fails_verification(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    other = checkpoints.make("other")
    private, public = promotion_keys
    sign_model(str(ckpt), private_key_path=private)
    (ckpt / "manifest.jws").write_bytes((other / "manifest.jws").read_bytes())
    with pytest.raises(SignatureInvalid, match=r"manifest\.jws changed since signing"):
        verify_model_signature(str(ckpt), public_key_path=public)


def test_another_public_key_fails_verification(checkpoints, promotion_keys, tmp_path):
    ckpt = checkpoints.make()
    sign_model(str(ckpt), private_key_path=promotion_keys[0])
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pub = tmp_path / "other.pub"
    pub.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SignatureInvalid, match=r"does not verify.*[Kk]ey"):
        verify_model_signature(str(ckpt), public_key_path=pub)


def test_stray_files_beside_the_checkpoint_are_not_signed(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    (ckpt / ".uploads").mkdir()
    (ckpt / ".uploads" / "leftover").write_bytes(b"partial upload")
    sig = sign_model(str(ckpt), private_key_path=promotion_keys[0])
    assert ".uploads/leftover" not in sig.files
    (ckpt / ".uploads" / "leftover").write_bytes(b"changed later")
    verify_model_signature(str(ckpt), public_key_path=promotion_keys[1])


def test_missing_signature_and_unusable_keys_are_named(checkpoints, promotion_keys, tmp_path):
    ckpt = checkpoints.make()
    with pytest.raises(SignatureInvalid, match="no model signature at"):
        verify_model_signature(str(ckpt), public_key_path=promotion_keys[1])
    ed = tmp_path / "ed25519.key"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SignatureInvalid, match="must be an EC P-256 key"):
        sign_model(str(ckpt), private_key_path=ed)
    with pytest.raises(SignatureInvalid, match="does not exist"):
        sign_model(str(ckpt), private_key_path=tmp_path / "absent.key")
    assert not Path(default_signature_uri(str(ckpt))).exists()


def test_an_incomplete_checkpoint_is_not_signed(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    victim = sorted((ckpt / "objects").iterdir())[0]
    victim.unlink()
    with pytest.raises(SignatureInvalid, match=rf"missing file.*objects/{victim.name}"):
        sign_model(str(ckpt), private_key_path=promotion_keys[0])
    assert not Path(default_signature_uri(str(ckpt))).exists()


_OFFLINE_SCRIPT = """
import sys
def deny_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"network use attempted: {event} {args!r}")
sys.addaudithook(deny_network)
from coco_ai.promotion import sign_model, verify_model_signature
ckpt, private, public = sys.argv[1:4]
sign_model(ckpt, private_key_path=private)
verify_model_signature(ckpt, public_key_path=public)
print("offline-ok")
"""


@pytest.mark.timeout(120)
def test_signing_and_verifying_work_offline(checkpoints, promotion_keys):
    ckpt = checkpoints.make()
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "ALL_PROXY": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(ckpt), *map(str, promotion_keys)],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("offline-ok")


def test_nothing_is_signed_when_the_checkpoint_changed_after_verification(
    checkpoints, promotion_keys, tmp_path
):
    ckpt = checkpoints.make()
    verified = sign_model(
        str(ckpt), private_key_path=promotion_keys[0], signature_uri=str(tmp_path / "first.sig")
    ).files
    victim = sorted((ckpt / "objects").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    changed = rf"changed after verification: \['objects/{victim.name}'\]"
    with pytest.raises(SignatureInvalid, match=changed):
        sign_model(str(ckpt), private_key_path=promotion_keys[0], expected_files=verified)
    assert not Path(default_signature_uri(str(ckpt))).exists()
