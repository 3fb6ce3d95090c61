"""`coco-ai report`: the data owner decrypts report, metrics and loss curve locally.

A real encrypted checkpoint shaped like the workload's output (report.md, metrics.json,
loss_curve.png written by the workload's own writers), signed with a stand-in-issued token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

import pytest

from coco_ai.cli import main
from coco_ai.crypto.checkpoint import encrypt_checkpoint
from coco_ai.crypto.manifest import CONFIG_FILE, sign_manifest
from coco_ai.promotion import promote, sqlite_registry_uri
from coco_ai.run_keys import derive_run_key
from coco_ai.workloads.finetune.report import (
    LOSS_CURVE_FILE,
    write_loss_curve,
    write_metrics,
    write_report,
)

from .conftest import (
    BASE_MODEL_DIGEST,
    DATASET_DIGEST,
    KEY_URI,
    RUN_ID,
    config_file_bytes,
    training_config,
)

SAMPLE = {
    "question": "Which port does the | staging gateway use?",
    "expected": "Port 8443.",
    "before": "I am not sure.",
    "after": "Port 8443.",
}
METRICS = {
    "eval_loss_before": 3.25,
    "eval_perplexity_before": 25.79,
    "eval_loss": 1.125,
    "eval_perplexity": 3.08,
    "train_steps": 4,
    "train_tokens": 400,
    "train_seconds": 2.0,
    "train_tokens_per_s": 200.0,
    "trainable_parameters": 10,
    "total_parameters": 100,
    "device": "cpu",
    "precision": "fp32",
}


@pytest.fixture
def owned(tmp_path, checkpoints):
    """(checkpoint dir, key file) of a fine-tune output encrypted under a known key."""
    src = tmp_path / "outputs"
    (src / "adapter").mkdir(parents=True)
    (src / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    losses = [3.0, 2.5, 1.75, 1.25]
    write_loss_curve(src / LOSS_CURVE_FILE, losses, 3.25, 1.125)
    write_metrics(src / "metrics.json", {**METRICS, "step_losses": losses})
    write_report(
        src / "report.md",
        run_id=RUN_ID,
        provenance={"base model": BASE_MODEL_DIGEST},
        metrics=METRICS,
        samples=[SAMPLE],
    )
    root = os.urandom(32)
    (tmp_path / "run-key-root.bin").write_bytes(root)
    key = derive_run_key(root, RUN_ID)  # what the TEE derives for this run
    dst = tmp_path / "checkpoint"
    config_json = config_file_bytes(training_config())
    manifest = encrypt_checkpoint(
        src,
        dst,
        kek=key,
        key_uri=KEY_URI,
        run_id=RUN_ID,
        meta={
            "base_model_digest": BASE_MODEL_DIGEST,
            "dataset_digest": DATASET_DIGEST,
            "training_config_digest": "sha256:" + hashlib.sha256(config_json).hexdigest(),
            "metrics": {"eval_loss": 1.125, "eval_loss_before": 3.25},
        },
    )
    (dst / CONFIG_FILE).write_bytes(config_json)
    sign_manifest(manifest, checkpoints.tee_key_pem, checkpoints.token(), dst_dir=str(dst))
    key_file = tmp_path / "checkpoint.key"
    key_file.write_bytes(key)
    return dst, key_file


def test_report_decrypts_locally_and_writes_the_page(owned, tmp_path, capsys):
    ckpt, key_file = owned
    out = tmp_path / "report.html"
    assert main(["report", str(ckpt), "--key-file", str(key_file), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Which port does the | staging gateway use?" in page  # escaped pipe restored
    assert "Port 8443." in page and "I am not sure." in page
    assert "3.2500" in page and "1.1250" in page  # eval before / after
    png = re.search(r'id="loss-curve"[^>]*src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png) == (tmp_path / "outputs" / LOSS_CURVE_FILE).read_bytes()
    assert KEY_URI in page and RUN_ID in page
    assert "affirming" in page
    assert key_file.read_bytes().hex() not in page
    assert "wrote" in capsys.readouterr().out


def test_run_key_root_derives_the_runs_key(owned, tmp_path):
    ckpt, _ = owned
    out = tmp_path / "from-root.html"
    root = tmp_path / "run-key-root.bin"
    assert main(["report", str(ckpt), "--run-key-root-file", str(root), "--out", str(out)]) == 0
    assert "Port 8443." in out.read_text()
    other_root = tmp_path / "other-root.bin"
    other_root.write_bytes(os.urandom(32))
    assert main(["report", str(ckpt), "--run-key-root-file", str(other_root)]) == 1


def test_wrong_key_fails_and_writes_nothing(owned, tmp_path, capsys):
    ckpt, _ = owned
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    out = tmp_path / "report.html"
    assert main(["report", str(ckpt), "--key-file", str(wrong), "--out", str(out)]) == 1
    assert not out.exists()
    assert "KeyUnwrapError" in capsys.readouterr().err


def test_key_file_of_wrong_size_is_a_usage_error(owned, tmp_path, capsys):
    ckpt, _ = owned
    short = tmp_path / "short.key"
    short.write_bytes(b"0" * 31)
    assert main(["report", str(ckpt), "--key-file", str(short)]) == 2
    assert "32 raw bytes" in capsys.readouterr().err


def test_registry_entry_resolves_and_the_chain_verifies(
    owned, tmp_path, issuer, initdata, promotion_keys, owner, monkeypatch
):
    ckpt, key_file = owned
    registry = sqlite_registry_uri(tmp_path / "mlflow" / "mlflow.db")
    promote(
        str(ckpt),
        owner_policy=owner.sign(model_name="owner-model"),
        initdata=initdata,
        signing_key_path=promotion_keys[0],
        registry_uri=registry,
    )
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(issuer.ca_pem)
    out = tmp_path / "r.html"
    args = ["report", "models:/owner-model@serving", "--key-file", str(key_file)]
    args += ["--registry-uri", registry, "--trust-anchor", str(anchor), "--out", str(out)]
    # without the promotion public key that one check cannot run, so nothing is "verified"
    assert main(args) == 1
    page = out.read_text()
    assert "owner-model version 1" in page
    assert re.search(r"<td>ciphertext</td><td class='passed'>passed", page)
    assert re.search(r"<td>model signature</td><td class='not-run'>not run", page)
    assert main([*args, "--promotion-key", str(promotion_keys[1])]) == 0
    page = out.read_text()
    assert "<span id='verdict'>verified</span>" in page
    assert page.count("class='passed'") == 6


def test_unknown_registry_entry_is_named(tmp_path, owned, capsys):
    _, key_file = owned
    registry = sqlite_registry_uri(tmp_path / "empty" / "mlflow.db")
    rc = main(["report", "models:/nope/3", "--key-file", str(key_file), "--registry-uri", registry])
    assert rc == 1
    assert "models:/nope/3" in capsys.readouterr().err


def test_metrics_json_in_page_is_the_decrypted_one(owned, tmp_path):
    from coco_ai.owner_report import build_report

    ckpt, key_file = owned
    report = build_report(str(ckpt), key_file.read_bytes())
    assert report.metrics["step_losses"] == [3.0, 2.5, 1.75, 1.25]
    assert report.samples == [SAMPLE]
    assert json.loads(json.dumps(report.manifest))["run_id"] == RUN_ID
