"""Format versions: checkpoints and blobs written by older code still verify and decrypt.

The fixtures in fixtures/v1 were written once by the code before version 2, those in
fixtures/v2 by the code before manifest version 3, those in fixtures/v3 by the code before
manifest version 5 (see their READMEs); these tests read them with today's code, and check that
versions are never mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import blake3
import pytest

from coco_ai.cli import main
from coco_ai.crypto.checkpoint import decrypt_checkpoint, encrypt_checkpoint
from coco_ai.crypto.cli import EXIT_INTEGRITY, EXIT_OK
from coco_ai.crypto.errors import HeaderError, IntegrityError, ManifestError
from coco_ai.crypto.kserve import decrypt_kserve_jwe, export_checkpoint_file
from coco_ai.crypto.manifest import MANIFEST_FILE, OBJECTS_DIR, FileEntry, Manifest
from coco_ai.crypto.stream import decrypt_blob, read_header
from coco_ai.crypto.transfer import read_manifest, verify_checkpoint, verify_objects
from coco_ai.crypto.verify import VerificationPolicy
from coco_ai.kbs.wire import canonical_json
from coco_ai.storage import open_store

from .helpers import KEY_URI, SEGMENT

V1 = Path(__file__).parent / "fixtures" / "v1"
V1_KEK = (V1 / "kek.bin").read_bytes()
V2 = Path(__file__).parent / "fixtures" / "v2"
V2_KEK = (V2 / "kek.bin").read_bytes()
V3 = Path(__file__).parent / "fixtures" / "v3"
V3_KEK = (V3 / "kek.bin").read_bytes()


@pytest.fixture
def v1_ckpt(tmp_path) -> Path:
    """A writable copy of the version-1 checkpoint (tests that tamper with it)."""
    return Path(shutil.copytree(V1 / "checkpoint", tmp_path / "v1"))


def plain_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_v1_manifest_reads_and_reserializes_byte_for_byte():
    raw = (V1 / "checkpoint" / MANIFEST_FILE).read_bytes()
    m = Manifest.from_bytes(raw)
    assert m.version == 1 and all(f.sha256 for f in m.files)
    assert m.canonical_bytes() == raw  # the signature over these bytes stays valid


def test_v1_checkpoint_verifies_without_key():
    store = open_store(str(V1 / "checkpoint"))
    verify_objects(store, read_manifest(store)[0])
    v = verify_checkpoint(
        V1 / "checkpoint",
        trust_anchor_pem=(V1 / "ca.pem").read_bytes(),
        policy=VerificationPolicy.for_run("run-v1"),
    )
    assert v.manifest.version == 1 and v.manifest.run_id == "run-v1"


def test_v1_checkpoint_decrypts_to_its_plaintext(tmp_path):
    m = decrypt_checkpoint(V1 / "checkpoint", tmp_path / "out", kek=V1_KEK)
    assert m.version == 1
    assert plain_files(tmp_path / "out") == plain_files(V1 / "plain")


def test_v1_plaintext_digest_still_checked(v1_ckpt, tmp_path):
    """Version 1 lists plaintext SHA-256s; an edited one is still caught on decrypt."""
    d = json.loads((v1_ckpt / MANIFEST_FILE).read_bytes())
    d["files"][0]["sha256"] = "0" * 64
    (v1_ckpt / MANIFEST_FILE).write_bytes(canonical_json(d))
    with pytest.raises(IntegrityError, match="digests differ"):
        decrypt_checkpoint(v1_ckpt, tmp_path / "out", kek=V1_KEK)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def v2_ckpt(tmp_path) -> Path:
    """A writable copy of the version-2 checkpoint."""
    return Path(shutil.copytree(V2 / "checkpoint", tmp_path / "v2"))


def test_v2_manifest_reads_and_reserializes_byte_for_byte():
    raw = (V2 / "checkpoint" / MANIFEST_FILE).read_bytes()
    m = Manifest.from_bytes(raw)
    assert m.version == 2 and m.file_format_version == 2
    assert all(f.sha256 is None and f.header_sha256 is None for f in m.files)
    assert m.canonical_bytes() == raw


def test_v2_checkpoint_verifies_without_key_and_signed():
    store = open_store(str(V2 / "checkpoint"))
    verify_objects(store, read_manifest(store)[0])
    v = verify_checkpoint(
        V2 / "checkpoint",
        trust_anchor_pem=(V2 / "ca.pem").read_bytes(),
        policy=VerificationPolicy.for_run("run-v2"),
    )
    assert v.manifest.version == 2 and v.manifest.checkpoint_id == "ckpt-v2"


def test_v2_checkpoint_decrypts_to_its_plaintext(tmp_path):
    m = decrypt_checkpoint(V2 / "checkpoint", tmp_path / "out", kek=V2_KEK)
    assert m.version == 2
    assert plain_files(tmp_path / "out") == plain_files(V1 / "plain")


def test_v2_ciphertext_digest_still_checked_on_decrypt(v2_ckpt, tmp_path):
    """Version 2 lists no header digest: decryption hashes the ciphertext, as it did. An
    (unsigned) manifest edited to name an object by another digest is refused."""
    m = read_manifest(open_store(str(v2_ckpt)))[0]
    e = next(f for f in m.files if f.path == "adapter_model.safetensors")
    edited = FileEntry(**{**e.__dict__, "ciphertext_sha256": "0" * 64})
    forged = Manifest(**{**m.__dict__, "files": tuple(edited if f is e else f for f in m.files)})
    (v2_ckpt / MANIFEST_FILE).write_bytes(forged.canonical_bytes())
    (v2_ckpt / e.object_name).rename(v2_ckpt / edited.object_name)
    with pytest.raises(IntegrityError, match="digests differ"):
        decrypt_checkpoint(v2_ckpt, tmp_path / "out", kek=V2_KEK)
    assert not (tmp_path / "out").exists()


def test_v2_checkpoint_through_the_cli(tmp_path):
    kek_file = tmp_path / "kek"
    kek_file.write_bytes(V2_KEK)
    out = tmp_path / "out"
    rc = main(
        ["checkpoint", "decrypt", "--key-file", str(kek_file), str(V2 / "checkpoint"), str(out)]
    )
    assert rc == EXIT_OK
    assert plain_files(out) == plain_files(V1 / "plain")
    assert main(["checkpoint", "verify", str(V2 / "checkpoint")]) == EXIT_OK


def test_v1_checkpoint_through_the_cli(tmp_path):
    key = tmp_path / "kek.bin"
    key.write_bytes(V1_KEK)
    assert main(["checkpoint", "verify", str(V1 / "checkpoint")]) == EXIT_OK
    out = tmp_path / "out"
    rc = main(["checkpoint", "decrypt", "--key-file", str(key), str(V1 / "checkpoint"), str(out)])
    assert rc == EXIT_OK and plain_files(out) == plain_files(V1 / "plain")
    bad = Path(shutil.copytree(V1 / "checkpoint", tmp_path / "bad"))
    obj = next((bad / "objects").iterdir())
    obj.write_bytes(obj.read_bytes()[:-1])
    assert main(["checkpoint", "verify", str(bad)]) == EXIT_INTEGRITY


def test_v1_file_exports_for_serving():
    serving = bytes(range(32, 64))
    token = export_checkpoint_file(
        V1 / "checkpoint",
        "adapter_model.safetensors",
        kek=V1_KEK,
        serving_kek=serving,
        serving_key_uri="kbs:///coco-ai/serving/v1",
    )
    plain = (V1 / "plain" / "adapter_model.safetensors").read_bytes()
    assert decrypt_kserve_jwe(token, kek=serving) == plain


def test_v1_blob_decrypts():
    blob = (V1 / "dataset.blob").read_bytes()
    assert read_header(io.BytesIO(blob)).version == 1
    assert read_header(io.BytesIO(blob)).key_commitment == b""
    out = decrypt_blob(blob, kek=V1_KEK, aad_context={"dataset": "v1-fixture"})
    assert out == b"data set rows\n" * 700


def test_v1_file_listed_in_a_v2_manifest_refused(v1_ckpt, tmp_path):
    """A version-2 manifest vouches for key-committing files only: a version-1 file (no
    commitment) under a version-2 manifest is refused, not decrypted."""
    m = read_manifest(open_store(str(v1_ckpt)))[0]
    files = tuple(FileEntry(**{**f.__dict__, "sha256": None}) for f in m.files)
    v2 = Manifest(**{**m.__dict__, "files": files, "version": 2})
    (v1_ckpt / MANIFEST_FILE).write_bytes(v2.canonical_bytes())
    with pytest.raises(HeaderError, match="format version 1, its manifest says 2"):
        decrypt_checkpoint(v1_ckpt, tmp_path / "out", kek=V1_KEK)
    assert not (tmp_path / "out").exists()


def test_format_2_file_listed_in_a_v1_manifest_refused(plain_dir, tmp_path, kek):
    m = encrypt_checkpoint(
        plain_dir, tmp_path / "ckpt", kek=kek, key_uri=KEY_URI, run_id="r", meta={},
        segment_size=SEGMENT,
    )  # fmt: skip
    assert m.version == 5 and m.file_format_version == 2
    files = tuple(
        FileEntry(
            **{
                **f.__dict__,
                "sha256": "0" * 64,
                "header_sha256": None,
                "ciphertext_sha256": f.ciphertext_blake3,  # same object names
                "ciphertext_blake3": None,
            }
        )
        for f in m.files
    )
    v1 = Manifest(**{**m.__dict__, "files": files, "version": 1})
    (tmp_path / "ckpt" / MANIFEST_FILE).write_bytes(v1.canonical_bytes())
    with pytest.raises(HeaderError, match="format version 2, its manifest says 1"):
        decrypt_checkpoint(tmp_path / "ckpt", tmp_path / "out", kek=kek)


@pytest.mark.parametrize(
    ("version", "drop", "why"),
    [
        (1, "sha256", "wrong fields for manifest version 1"),
        (3, "sha256", "wrong fields for manifest version 3"),  # no header digest
        (4, "sha256", "wrong fields for manifest version 4"),  # no header digest
        (5, "sha256", "version 5 names each ciphertext by ciphertext_blake3 alone"),
        (6, None, "unsupported manifest"),
    ],
)
def test_manifest_version_and_fields_must_agree(version, drop, why):
    d = json.loads((V1 / "checkpoint" / MANIFEST_FILE).read_bytes())
    d["format_version"] = version
    d["encryption"]["format_version"] = min(version, 2)
    for f in d["files"]:
        f.pop(drop or "", None)
    with pytest.raises(ManifestError, match=why):
        Manifest.from_bytes(canonical_json(d))


def test_v2_manifest_with_plaintext_digest_refused():
    d = json.loads((V1 / "checkpoint" / MANIFEST_FILE).read_bytes())
    d["format_version"] = d["encryption"]["format_version"] = 2
    with pytest.raises(ManifestError, match="wrong fields for manifest version 2"):
        Manifest.from_bytes(canonical_json(d))


@pytest.mark.parametrize(("manifest", "files"), [(1, 2), (2, 1), (3, 3), (3, 1)])
def test_manifest_and_encryption_versions_must_match(manifest, files):
    d = json.loads((V2 / "checkpoint" / MANIFEST_FILE).read_bytes())
    d["format_version"], d["encryption"]["format_version"] = manifest, files
    with pytest.raises(ManifestError, match="unsupported encryption format"):
        Manifest.from_bytes(canonical_json(d))


def test_v3_manifest_reads_and_reserializes_byte_for_byte():
    raw = (V3 / "checkpoint" / MANIFEST_FILE).read_bytes()
    m = Manifest.from_bytes(raw)
    assert m.version == 3 and m.file_format_version == 2
    assert all(f.ciphertext_algorithm == "sha256" and f.header_sha256 for f in m.files)
    assert all(f.ciphertext_blake3 is None for f in m.files)
    assert m.canonical_bytes() == raw


def test_v3_checkpoint_verifies_without_key_and_signed():
    v = verify_checkpoint(
        V3 / "checkpoint",
        trust_anchor_pem=(V3 / "ca.pem").read_bytes(),
        policy=VerificationPolicy.for_run("run-v3"),
    )
    assert v.manifest.version == 3 and v.manifest.checkpoint_id == "ckpt-v3"


def test_v3_checkpoint_decrypts_and_goes_through_the_cli(tmp_path):
    m = decrypt_checkpoint(V3 / "checkpoint", tmp_path / "out", kek=V3_KEK)
    assert m.version == 3
    assert plain_files(tmp_path / "out") == plain_files(V1 / "plain")
    kek_file = tmp_path / "kek"
    kek_file.write_bytes(V3_KEK)
    out = tmp_path / "cli-out"
    rc = main(
        ["checkpoint", "decrypt", "--key-file", str(kek_file), str(V3 / "checkpoint"), str(out)]
    )
    assert rc == EXIT_OK and plain_files(out) == plain_files(V1 / "plain")
    assert main(["checkpoint", "verify", str(V3 / "checkpoint")]) == EXIT_OK


def test_v3_object_changed_is_caught_by_sha256_verification(tmp_path):
    """Version 3 names objects by SHA-256: keyless verification still hashes with it."""
    bad = Path(shutil.copytree(V3 / "checkpoint", tmp_path / "bad"))
    obj = next(p for p in (bad / "objects").iterdir() if p.stat().st_size > 1000)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 1
    obj.write_bytes(bytes(data))
    store = open_store(str(bad))
    with pytest.raises(IntegrityError, match="ciphertext SHA-256 differs"):
        verify_objects(store, read_manifest(store)[0])


# --- version 5: ciphertexts named by BLAKE3-256 ---------------------------------------------


@pytest.fixture
def v5_raw(plain_dir, tmp_path, kek) -> dict:
    """The manifest of a new checkpoint (version 5), as JSON to edit."""
    encrypt_checkpoint(
        plain_dir, tmp_path / "ckpt", kek=kek, key_uri=KEY_URI, run_id="r", meta={},
        segment_size=SEGMENT,
    )  # fmt: skip
    return json.loads((tmp_path / "ckpt" / MANIFEST_FILE).read_bytes())


def test_new_checkpoints_are_version_5_named_by_blake3(v5_raw, tmp_path):
    assert v5_raw["format_version"] == 5 and v5_raw["encryption"]["format_version"] == 2
    for f in v5_raw["files"]:
        assert set(f) == FileEntry.fields_of(5) and "ciphertext_sha256" not in f
        obj = (tmp_path / "ckpt" / OBJECTS_DIR / f["ciphertext_blake3"]).read_bytes()
        assert blake3.blake3(obj).hexdigest() == f["ciphertext_blake3"]
        assert hashlib.sha256(obj).hexdigest() != f["ciphertext_blake3"]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        # a SHA-256 beside the BLAKE3 digest, or instead of it: version 5 names by BLAKE3 alone
        (lambda f: f.update(ciphertext_sha256="0" * 64), "by ciphertext_blake3 alone"),
        (
            lambda f: f.update(ciphertext_sha256=f.pop("ciphertext_blake3")),
            "by ciphertext_blake3 alone",
        ),
        # an algorithm this reader does not know
        (
            lambda f: f.update(ciphertext_blake2b=f.pop("ciphertext_blake3")),
            "by ciphertext_blake3 alone",
        ),
        (lambda f: f.update(ciphertext_blake3=f["ciphertext_blake3"][:62]), "64 lowercase hex"),
        (lambda f: f.update(ciphertext_blake3=f["ciphertext_blake3"] + "00"), "64 lowercase hex"),
        (lambda f: f.update(ciphertext_blake3=f["ciphertext_blake3"].upper()), "64 lowercase hex"),
        (lambda f: f.pop("header_sha256"), "wrong fields for manifest version 5"),
        (lambda f: f.update(sha256="0" * 64), "wrong fields for manifest version 5"),
    ],
)
def test_version_5_entry_must_name_its_ciphertext_by_blake3(v5_raw, edit, why):
    edit(v5_raw["files"][0])
    with pytest.raises(ManifestError, match=why):
        Manifest.from_bytes(canonical_json(v5_raw))


def test_version_5_entries_cannot_be_mixed_with_sha256_ones(v5_raw, tmp_path):
    """One entry in the older shape among version-5 entries: refused when parsed and when
    built, and a version-3 manifest cannot carry a BLAKE3 entry either."""
    m = Manifest.from_bytes(canonical_json(v5_raw))
    e = m.files[0]
    old = FileEntry(
        **{**e.__dict__, "ciphertext_sha256": e.ciphertext_blake3, "ciphertext_blake3": None}
    )
    mixed = (old, *m.files[1:])
    with pytest.raises(ManifestError, match="manifest version 5 entries have exactly"):
        Manifest(**{**m.__dict__, "files": mixed})
    with pytest.raises(ManifestError, match="manifest version 3 entries have exactly"):
        Manifest(**{**m.__dict__, "files": mixed, "version": 3})
    v5_raw["files"][0] = old.to_dict()
    with pytest.raises(ManifestError, match="by ciphertext_blake3 alone"):
        Manifest.from_bytes(canonical_json(v5_raw))
    v5_raw["format_version"] = 3
    with pytest.raises(ManifestError, match="by ciphertext_sha256 alone"):
        Manifest.from_bytes(canonical_json(v5_raw))


def test_version_5_object_changed_is_caught_without_a_key(plain_dir, tmp_path, kek):
    encrypt_checkpoint(
        plain_dir, tmp_path / "ckpt", kek=kek, key_uri=KEY_URI, run_id="r", meta={},
        segment_size=SEGMENT,
    )  # fmt: skip
    store = open_store(str(tmp_path / "ckpt"))
    m = read_manifest(store)[0]
    big = max(m.files, key=lambda f: f.size)
    obj = tmp_path / "ckpt" / big.object_name
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="ciphertext BLAKE3 differs"):
        verify_objects(store, m)
    assert main(["checkpoint", "verify", str(tmp_path / "ckpt")]) == EXIT_INTEGRITY


def test_store_digest_of_unknown_algorithm_refused(tmp_path):
    store = open_store(str(V3 / "checkpoint"))
    with pytest.raises(ValueError, match="unknown digest algorithm 'sha1'"):
        store.digest(MANIFEST_FILE, "sha1")
