"""`coco-ai verify`: a real promoted bundle re-checked with the data owner's public key alone, and
a single changed byte in every artefact of it caught with a reason naming that artefact.

The bundle (two promoted versions, the second replacing the first as champion, and the MLflow
registry that serves it) is built once; each test works on a copy in its own directory, which also
shows that a bundle verifies wherever it was copied to.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from coco_ai.cli import main
from coco_ai.promotion import promote, sqlite_registry_uri
from coco_ai.promotion.audit import CHECK_NAMES

from .conftest import MODEL, CheckpointFactory

RECORD_SUFFIX = ".promotion.json"
#: record fields that only say where things were (a copied bundle verifies elsewhere) or when
RECORD_LOCATIONS = ("checkpoint_uri", "signature_uri", "promoted_at")


@dataclass(frozen=True)
class Bundle:
    root: Path
    owner_key: Path  # the data owner's public key, what a third party holds

    @property
    def checkpoint(self) -> Path:
        return self.root / "v2"

    @property
    def record(self) -> Path:
        return self.root / ("v2" + RECORD_SUFFIX)

    @property
    def registry(self) -> str:
        return sqlite_registry_uri(self.root / "mlflow.db")

    def verify(self, capsys, *extra: str, target: str | None = None) -> tuple[int, dict]:
        args = ["verify", target or str(self.checkpoint), "--owner-key", str(self.owner_key)]
        rc = main([*args, *extra, "--json"])
        out = capsys.readouterr().out
        return rc, json.loads(out)


@pytest.fixture(scope="module")
def built(tmp_path_factory, issuer, initdata, tee_key_pem, promotion_keys, owner) -> Bundle:
    root = tmp_path_factory.mktemp("bundle")
    factory = CheckpointFactory(root, issuer, initdata, tee_key_pem)
    policy = owner.sign(version=2)
    registry = sqlite_registry_uri(root / "mlflow.db")
    for name, age, loss in (("v1", 120, 1.2), ("v2", 10, 1.0)):
        ckpt = factory.make(
            name, created_at=time.time() - age, metrics={"eval_loss": loss, "eval_loss_before": 3}
        )
        promote(
            str(ckpt),
            owner_policy=policy,
            initdata=initdata,
            signing_key_path=promotion_keys[0],
            registry_uri=registry,
        )
    (root / "owner.pub").write_bytes(owner.public_pem)
    for plain in root.glob("*-plain"):
        shutil.rmtree(plain)
    return Bundle(root, root / "owner.pub")


@pytest.fixture
def bundle(built, tmp_path) -> Bundle:
    root = tmp_path / "copy"
    shutil.copytree(built.root, root)
    return Bundle(root, root / "owner.pub")


def _statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def _failed(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["status"] == "failed"]


# ---- a real bundle verifies ---------------------------------------------------------------------


def test_a_promoted_bundle_verifies_with_every_check_passing(bundle, capsys):
    rc, report = bundle.verify(capsys, "--registry", bundle.registry)
    assert rc == 0, report
    assert report["verdict"] == "verified"
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)
    assert set(_statuses(report).values()) == {"passed"}
    assert report["owner_policy"]["version"] == 2
    reasons = {c["name"]: c["reason"] for c in report["checks"]}
    assert "newer and not worse than version 1" in reasons["champion"]
    assert "'serving' serves version 2, the newest of 2" in reasons["registry alias"]


def test_without_a_registry_the_registry_checks_do_not_run(bundle, capsys):
    rc, report = bundle.verify(capsys)
    assert rc == 0
    statuses = _statuses(report)
    assert statuses.pop("registry version") == statuses.pop("registry alias") == "not run"
    assert set(statuses.values()) == {"passed"}


def test_a_registry_entry_resolves_to_its_checkpoint(bundle, capsys):
    rc, report = bundle.verify(
        capsys, "--registry", bundle.registry, target=f"models:/{MODEL}@serving"
    )
    assert rc == 0, report
    assert Path(report["checkpoint_uri"]).name == "v2"


def test_human_output_names_each_check(bundle, capsys):
    rc = main(["verify", str(bundle.checkpoint), "--owner-key", str(bundle.owner_key)])
    out = capsys.readouterr().out
    assert rc == 0
    for name in CHECK_NAMES:
        assert f" {name}: " in out
    assert out.strip().endswith("verified")


def test_a_newer_policy_is_applied(bundle, owner, capsys, tmp_path):
    newer = tmp_path / "newer.jws"
    newer.write_text(owner.sign(version=3).jws)
    rc, report = bundle.verify(capsys, "--policy", str(newer))
    assert rc == 0, report
    assert (report["owner_policy"]["version"], report["owner_policy"]["recorded_version"]) == (3, 2)
    # a newer, stricter policy judges the same evidence and refuses it
    newer.write_text(owner.sign(version=3, thresholds__max_eval_loss=0.5).jws)
    rc, report = bundle.verify(capsys, "--policy", str(newer))
    assert rc == 4
    chain = next(c for c in _failed(report) if c["name"] == "evidence chain")
    assert "eval_loss 1 is above the maximum 0.5" in chain["reason"]


# ---- a single changed byte in every artefact ---------------------------------------------------


def _checkpoint_files(built: Bundle) -> list[str]:
    ckpt = built.checkpoint
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())


def _record_fields(built: Bundle) -> list[str]:
    record = json.loads(built.record.read_bytes())
    fields = [k for k in sorted(record) if k not in RECORD_LOCATIONS and k != "champion"]
    return fields + [f"champion.{k}" for k in sorted(record["champion"])]


#: every file of the checkpoint, its model signature, every non-location field of its record;
#: the names are listed from the built bundle in the test
ARTEFACT_KINDS = ("checkpoint file", "model signature", "record field")


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _changed_character(text: str) -> str:
    """`text` with one alphanumeric character near its middle replaced by another of its kind."""
    i = next(j for j in range(len(text) // 2, len(text)) if text[j].isalnum())
    c = text[i]
    if c.isdigit():
        other = str((int(c) + 1) % 10)
    else:
        base = "a" if c.islower() else "A"
        other = chr((ord(c) - ord(base) + 1) % 26 + ord(base))
    return text[:i] + other + text[i + 1 :]


def _change_record_field(record_path: Path, field: str) -> None:
    """One character of one field's value changed; the record re-written as promote writes it
    (sorted keys, indent 1), so the file differs from the original in one byte."""
    record = json.loads(record_path.read_bytes())
    holder, key = record, field
    if field.startswith("champion."):
        holder, key = record["champion"], field.split(".", 1)[1]
    value = holder[key]
    if isinstance(value, str):
        holder[key] = _changed_character(value)
    else:
        holder[key] = json.loads(_changed_character(json.dumps(value)))
    before = record_path.read_bytes()
    after = json.dumps(record, sort_keys=True, indent=1).encode()
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
    record_path.write_bytes(after)


@pytest.mark.parametrize("kind", ARTEFACT_KINDS)
def test_a_single_changed_byte_in_any_artefact_fails_naming_it(built, kind, tmp_path, capsys):
    if kind == "checkpoint file":
        targets = _checkpoint_files(built)
        assert {"manifest.json", "manifest.jws", "token.jwt", "training_config.json"} <= set(
            targets
        )
        assert sum(t.startswith("objects/") for t in targets) >= 2
    elif kind == "model signature":
        targets = ["v2.sig"]
    else:
        targets = _record_fields(built)
        assert {"owner_policy", "initdata", "manifest_digest", "champion.version"} <= set(targets)
    failures = {}
    for i, target in enumerate(targets):
        root = tmp_path / f"copy-{i}"
        shutil.copytree(built.root, root)
        copy = Bundle(root, root / "owner.pub")
        if kind == "checkpoint file":
            _flip_middle_byte(copy.checkpoint / target)
            name = target
        elif kind == "model signature":
            _flip_middle_byte(root / target)
            name = target
        else:
            _change_record_field(copy.record, target)
            name = target.split(".")[0]
        rc, report = copy.verify(capsys, "--registry", copy.registry)
        named = [c["name"] for c in _failed(report) if name in c["reason"]]
        if rc not in (3, 4) or report["verdict"] != "failed" or not named:
            failures[target] = (rc, _failed(report))
    assert not failures, failures


def test_the_model_signature_must_be_by_a_signer_the_policy_names(
    bundle, owner, capsys, tmp_path, other_p256_pem
):
    from .conftest import public_pem_of

    stranger = public_pem_of(other_p256_pem).decode()
    real = owner.promotion_public_pem.decode()
    newer = tmp_path / "newer.jws"
    newer.write_text(owner.sign(version=3, promotion_signers=[stranger, real]).jws)
    rc, report = bundle.verify(capsys, "--policy", str(newer))
    assert rc == 0, report
    assert "promotion signer 1 of the owner policy" in _reasons(report)["model signature"]
    # a policy that no longer names the key that signed: the signature is not accepted
    newer.write_text(owner.sign(version=4, promotion_signers=[stranger]).jws)
    rc, report = bundle.verify(capsys, "--policy", str(newer))
    assert rc == 4
    assert [c["name"] for c in _failed(report)] == ["model signature"]
    assert "no promotion signer of the owner policy verifies it" in _failed(report)[0]["reason"]


def _reasons(report: dict) -> dict[str, str]:
    return {c["name"]: c["reason"] for c in report["checks"]}


def test_a_policy_signed_by_another_key_fails(bundle, owner, capsys):
    from coco_ai.owner_policy import generate_owner_key

    stranger, _ = generate_owner_key()
    forged = owner.sign(version=2, thresholds={}, key_pem=stranger)  # no thresholds at all
    record = json.loads(bundle.record.read_bytes())
    record["owner_policy"], record["owner_policy_digest"] = forged.jws, forged.digest
    bundle.record.write_bytes(json.dumps(record, sort_keys=True, indent=1).encode())
    rc, report = bundle.verify(capsys, "--registry", bundle.registry)
    assert rc == 4
    failed = _failed(report)
    assert failed[0]["name"] == "owner policy"
    assert "does not verify with the data owner's key" in failed[0]["reason"]


def test_a_given_policy_signed_by_another_key_fails(bundle, owner, capsys, tmp_path):
    from coco_ai.owner_policy import generate_owner_key

    stranger, _ = generate_owner_key()
    given = tmp_path / "given.jws"
    given.write_text(owner.sign(version=9, key_pem=stranger).jws)
    rc, report = bundle.verify(capsys, "--policy", str(given))
    assert rc == 4
    assert "given --policy: owner policy signature does not verify" in _failed(report)[0]["reason"]


def test_an_older_policy_version_fails(bundle, owner, capsys, tmp_path):
    older = tmp_path / "older.jws"
    older.write_text(owner.sign(version=1).jws)
    rc, report = bundle.verify(capsys, "--policy", str(older))
    assert rc == 4
    reason = _failed(report)[0]["reason"]
    assert "given --policy version 1 is older than the record's version 2" in reason


def test_another_policy_id_fails(bundle, owner, capsys, tmp_path):
    other = tmp_path / "other.jws"
    other.write_text(owner.sign(version=5, policy_id="another-policy").jws)
    rc, report = bundle.verify(capsys, "--policy", str(other))
    assert rc == 4
    assert "given --policy is 'another-policy'" in _failed(report)[0]["reason"]


def test_another_owner_key_fails(bundle, capsys):
    from coco_ai.owner_policy import generate_owner_key

    bundle.owner_key.write_bytes(generate_owner_key()[1])
    rc, report = bundle.verify(capsys)
    assert rc == 4
    statuses = _statuses(report)
    assert (statuses.pop("promotion record"), statuses.pop("owner policy")) == ("passed", "failed")
    assert set(statuses.values()) == {"not run"}  # nothing is judged without a verified policy


def test_an_alias_moved_back_to_an_older_version_fails(bundle, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=bundle.registry, registry_uri=bundle.registry)
    client.set_registered_model_alias(MODEL, "serving", "1")
    rc, report = bundle.verify(capsys, "--registry", bundle.registry)
    assert rc == 4
    failed = _failed(report)
    assert [c["name"] for c in failed] == ["registry alias"]
    assert "points at version 1 but version(s) [2] were registered after it" in failed[0]["reason"]
    # verifying what the alias now serves fails the same way
    rc, _ = bundle.verify(capsys, "--registry", bundle.registry, target=f"models:/{MODEL}@serving")
    assert rc == 4


def test_a_registry_tag_changed_fails(bundle, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=bundle.registry, registry_uri=bundle.registry)
    client.set_model_version_tag(MODEL, "2", "coco-ai.dataset_digest", "sha256:" + "e" * 64)
    rc, report = bundle.verify(capsys, "--registry", bundle.registry)
    assert rc == 3
    failed = _failed(report)
    assert [c["name"] for c in failed] == ["registry version"]
    assert "coco-ai.dataset_digest" in failed[0]["reason"]


def test_a_missing_record_fails(bundle, capsys):
    bundle.record.unlink()
    rc, report = bundle.verify(capsys)
    assert rc == 3
    assert "no promotion record at" in _failed(report)[0]["reason"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"format": "coco-ai/promotion-record/v0"}', "format is not"),
    ],
)
def test_a_malformed_record_fails(bundle, capsys, content, reason):
    bundle.record.write_bytes(content)
    rc, report = bundle.verify(capsys)
    assert rc == 3
    assert reason in _failed(report)[0]["reason"]


def test_a_record_with_malformed_extra_or_missing_fields_fails(bundle, capsys):
    record = json.loads(bundle.record.read_bytes())
    record["approved_by"] = "airflow"
    del record["initdata"]
    record["manifest_digest"] = "sha256:" + "g" * 64
    record["champion"]["version"] = "1"
    bundle.record.write_bytes(json.dumps(record).encode())
    rc, report = bundle.verify(capsys, "--registry", bundle.registry)
    assert rc == 3
    reason = _failed(report)[0]["reason"]
    assert "initdata must be a non-empty string" in reason
    assert "unknown field(s) ['approved_by']" in reason
    assert "manifest_digest must be 'sha256:<64 hex>'" in reason
    assert "champion must be null or {version: int >= 1" in reason


def test_a_missing_model_signature_fails(bundle, capsys):
    (bundle.root / "v2.sig").unlink()
    rc, report = bundle.verify(capsys)
    assert rc == 4
    assert [c["name"] for c in _failed(report)] == ["model signature"]
    assert "no model signature at" in _failed(report)[0]["reason"]


def test_a_registered_version_missing_for_the_manifest_fails(bundle, built, capsys, tmp_path):
    rc, report = bundle.verify(
        capsys, "--registry", sqlite_registry_uri(tmp_path / "empty" / "mlflow.db")
    )
    assert rc in (3, 4)
    statuses = _statuses(report)
    assert statuses["registry version"] == "failed"
    assert statuses["registry alias"] == "failed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models:/m@serving"], "needs --registry"),
        (["{ckpt}", "--model", "m"], "--model needs --registry"),
        (["{ckpt}", "--policy", "/nonexistent.jws"], "cannot read owner policy"),
    ],
)
def test_usage_errors_exit_2(bundle, capsys, args, message):
    args = [a.replace("{ckpt}", str(bundle.checkpoint)) for a in args]
    rc = main(["verify", *args, "--owner-key", str(bundle.owner_key)])
    assert rc == 2
    assert message in capsys.readouterr().err


# ---- coco-ai policy ----------------------------------------------------------------------------


def test_policy_keygen_sign_show_round_trip(owner, tmp_path, capsys):
    private, public = tmp_path / "owner.key", tmp_path / "owner.pub"
    assert main(["owner-policy", "keygen", "--private", str(private), "--public", str(public)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600
    assert main(["owner-policy", "keygen", "--private", str(private), "--public", str(public)]) == 2
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(owner.policy_doc(version=4)))
    jws = tmp_path / "policy.jws"
    capsys.readouterr()
    assert main(["owner-policy", "sign", str(doc), "--key", str(private), "--out", str(jws)]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["version"] == 4 and signed["digest"].startswith("sha256:")
    assert main(["owner-policy", "show", str(jws), "--owner-key", str(public)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["digest"] == signed["digest"]
    assert shown["policy"]["approved"] == owner.policy_doc()["approved"]
    # under another key the policy does not verify
    assert main(["owner-policy", "show", str(jws), "--owner-key", str(tmp_path / "x.pub")]) == 2
    other = tmp_path / "other.pub"
    other.write_bytes(owner.public_pem)
    assert main(["owner-policy", "show", str(jws), "--owner-key", str(other)]) == 4
    assert "does not verify with the data owner's key" in capsys.readouterr().err


def test_policy_sign_refuses_an_invalid_document(owner, tmp_path, capsys):
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(owner.policy_doc(attestation__min_gpus=-1)))
    key = tmp_path / "owner.key"
    key.write_bytes(owner.private_pem)
    out = tmp_path / "policy.jws"
    assert main(["owner-policy", "sign", str(doc), "--key", str(key), "--out", str(out)]) == 2
    assert "attestation.min_gpus must be an integer >= 0" in capsys.readouterr().err
    assert not out.exists()
