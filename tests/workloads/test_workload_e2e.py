"""The workload as a subprocess against the real Trustee stand-in (TLS on loopback), the real
guest-components emulator, real crypto and a file:// store; then every bad input once."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.digest import Digest
from coco_ai.run_keys import Grant, tombstone
from coco_ai.workloads.dataset import to_jsonl
from coco_ai.workloads.finetune.workload import (
    EXIT_BASE_MODEL,
    EXIT_CONFIG,
    EXIT_DATASET,
    EXIT_KEY_RELEASE,
    EXIT_STAGING,
    WorkloadError,
    with_retries,
)
from coco_ai.workloads.models import model_digest

RUN_ID = "run-e2e-1"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from coco_ai.devstack.workload import start_local_stack

    with start_local_stack(tmp_path_factory.mktemp("trustee"), RUN_ID) as s:
        yield s


@pytest.fixture(scope="module")
def store(tmp_path_factory, stack, examples) -> Path:
    """The object store: the data owner's encrypted data sets (good and bad variants)."""
    root = tmp_path_factory.mktemp("store")
    (root / "northwind.jsonl.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples)))
    (root / "other-key.jsonl.enc").write_bytes(
        stack.encrypt_dataset(to_jsonl(examples), kek=secrets.token_bytes(32))
    )
    tampered = bytearray((root / "northwind.jsonl.enc").read_bytes())
    tampered[len(tampered) // 2] ^= 0x01
    (root / "tampered.jsonl.enc").write_bytes(bytes(tampered))
    malformed = to_jsonl(examples[:20]) + b'{"instruction": "q"}\n'
    (root / "malformed.jsonl.enc").write_bytes(stack.encrypt_dataset(malformed))
    (root / "tiny.jsonl.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples[:5])))
    return root


def make_config(tmp_path: Path, stack, store: Path, tiny_model: Path, **override) -> dict:
    cfg = {
        "run_id": RUN_ID,
        "guest_api_url": stack.guest_url,
        "staging_uri": f"file://{tmp_path}/staging/{RUN_ID}",
        "checkpoint_key_uri": stack.checkpoint_key_uri,
        "run_key_root_uri": stack.run_key_root_uri,
        "store_attempts": 2,
        "store_backoff_s": 0.05,
        "dataset": {"uri": f"file://{store}/northwind.jsonl.enc", "key_uri": stack.dataset_key_uri},
        "base_model": {"path": str(tiny_model), "digest": model_digest(tiny_model)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "epochs": 3,
            "learning_rate": 3e-3,
            "batch_size": 8,
            "max_seq_length": 96,
            "sample_questions": 2,
            "max_new_tokens": 12,
            "device": "cpu",
        },
    }
    for key, value in override.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


def run_workload(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps(cfg))
    env = {"OMP_NUM_THREADS": "2", **os.environ, "COCO_AI_FINETUNE_CONFIG": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "coco_ai.workloads.finetune"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def staged_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "staging"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_workload_end_to_end(tmp_path, stack, store, tiny_model, examples) -> None:
    from coco_ai.crypto import decrypt_checkpoint, verify_checkpoint
    from coco_ai.crypto.verify import VerificationPolicy

    cfg = make_config(tmp_path, stack, store, tiny_model)
    proc = run_workload(tmp_path, cfg)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if " step " in line]
    assert steps and all("loss" in s and "tokens/s" in s and "eta" in s for s in steps)
    assert steps[-1].split()[2] == "36/36"  # 3 epochs x 12 batches

    # the checkpoint in staging verifies without a key: token, TEE signature, digests
    staging = cfg["staging_uri"]
    verified = verify_checkpoint(
        staging, trust_anchor_pem=stack.trust_anchor_pem, policy=VerificationPolicy.for_run(RUN_ID)
    )
    m = verified.manifest
    assert m.base_model_digest == model_digest(tiny_model)
    blob = (store / "northwind.jsonl.enc").read_bytes()
    assert m.dataset_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert m.training_config_digest and m.training_config_digest.startswith("sha256:")
    # the public config beside the manifest is the one the TEE signed: the run's, defaults filled
    from coco_ai.crypto.manifest import CONFIG_FILE
    from coco_ai.storage import open_store
    from coco_ai.workloads.finetune.config import FinetuneConfig

    config_json = open_store(staging).read_bytes(CONFIG_FILE)
    assert m.training_config_digest == "sha256:" + hashlib.sha256(config_json).hexdigest()
    config = json.loads(config_json)
    assert config == FinetuneConfig.from_dict(cfg).to_dict()  # the config given, defaults filled
    assert m.metrics["eval_loss"] < m.metrics["eval_loss_before"]
    assert {f.path for f in m.files} >= {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "loss_curve.png",
        "report.md",
        "metrics.json",
    }

    # what the data owner reads with the run's key, derived from their own run-key root
    key = stack.run_key
    out = tmp_path / "decrypted"
    decrypt_checkpoint(staging, out, kek=key)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] == m.metrics["eval_loss"]
    assert len(metrics["step_losses"]) == 36
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert RUN_ID in report and examples[0].response not in proc.stdout
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model)

    # no secret and no record content in the logs
    logs = proc.stdout + proc.stderr
    for secret in (stack.dataset_key, key):
        assert secret.hex() not in logs
    assert not any(e.response in logs or e.instruction in logs for e in examples)


BAD_INPUTS = [
    pytest.param(
        {"run_id": "some-other-run"},
        EXIT_KEY_RELEASE,
        "key release denied for the grant kbs:///coco-ai-run/grant/some-other-run",
        id="grant-of-another-run-denied",
    ),
    pytest.param(
        {"run_key_root_uri": "kbs:///coco-ai/run-key-root/v2"},
        EXIT_KEY_RELEASE,
        "key release denied for the run-key root kbs:///coco-ai/run-key-root/v2",
        id="root-not-named-in-initdata",
    ),
    pytest.param(
        {"dataset__uri": "other-key.jsonl.enc"},
        EXIT_DATASET,
        "does not decrypt under",
        id="dataset-other-key",
    ),
    pytest.param(
        {"dataset__uri": "tampered.jsonl.enc"},
        EXIT_DATASET,
        "wrong key or tampered",
        id="dataset-tampered",
    ),
    pytest.param(
        {"dataset__uri": "malformed.jsonl.enc"},
        EXIT_DATASET,
        "record on line 21: missing field 'response'",
        id="dataset-malformed",
    ),
    pytest.param(
        {"dataset__uri": "tiny.jsonl.enc"},
        EXIT_DATASET,
        "too few examples for the split",
        id="dataset-too-small",
    ),
    pytest.param(
        {"base_model__digest": "sha256:" + "0" * 64},
        EXIT_BASE_MODEL,
        "but the run names sha256:000",
        id="base-model-digest",
    ),
    pytest.param(
        {"lora__rank": 8}, EXIT_CONFIG, "bad config: lora.rank: unknown field", id="config-unknown"
    ),
    pytest.param(
        {"training__learning_rate": -1},
        EXIT_CONFIG,
        "bad config: training.learning_rate: -1.0 is out of range",
        id="config-out-of-range",
    ),
    pytest.param(
        {"staging_uri": "UNREACHABLE"},
        EXIT_STAGING,
        "failed after 2 attempts: NotADirectoryError",
        id="staging-unreachable",
    ),
]


@pytest.mark.parametrize(("override", "code", "message"), BAD_INPUTS)
def test_bad_input_fails_closed(
    tmp_path, stack, store, tiny_model, override, code, message
) -> None:
    fixed = {}
    for key, value in override.items():
        if value == "UNREACHABLE":  # a "bucket" path whose parent is a plain file
            (tmp_path / "not-a-dir").write_text("")
            value = f"file://{tmp_path}/not-a-dir/staging/{RUN_ID}"
        elif key == "dataset__uri":
            value = f"file://{store}/{value}"
        fixed[key] = value
    proc = run_workload(tmp_path, make_config(tmp_path, stack, store, tiny_model, **fixed))
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    error_lines = proc.stderr.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("finetune: error: ")
    assert message in error_lines[0]
    assert staged_files(tmp_path) == []
    assert stack.dataset_key.hex() not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        (lambda stack: tombstone(RUN_ID), "was revoked"),
        (
            lambda stack: Grant(RUN_ID, Digest.of(b"other initdata", "sha384")).to_bytes(),
            "not this TEE's initdata",
        ),
        (lambda stack: b"not a grant", "not JSON"),
    ],
    ids=["revoked", "other-initdata", "malformed"],
)
def test_run_key_needs_a_live_grant_for_this_tees_initdata(
    tmp_path, stack, store, tiny_model, grant, message
) -> None:
    stack.grant(grant(stack))
    try:
        proc = run_workload(tmp_path, make_config(tmp_path, stack, store, tiny_model))
    finally:
        stack.grant()  # the module's other tests use the run's real grant
    assert proc.returncode == EXIT_KEY_RELEASE, (proc.stdout, proc.stderr)
    assert message in proc.stderr and proc.stderr.startswith("finetune: error: run key for ")
    assert staged_files(tmp_path) == []


def test_retries_are_bounded_with_exponential_backoff() -> None:
    delays: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("store down")
        return "ok"

    log: list[str] = []
    assert (
        with_retries("op", flaky, attempts=4, backoff_s=0.5, log=log.append, sleep=delays.append)
        == "ok"
    )
    assert delays == [0.5, 1.0] and len(log) == 2

    def down() -> None:
        raise ConnectionError("store down")

    with pytest.raises(WorkloadError, match="op failed after 3 attempts: ConnectionError") as info:
        with_retries("op", down, attempts=3, backoff_s=1.0, log=log.append, sleep=delays.append)
    assert info.value.exit_code == EXIT_STAGING
    assert delays[2:] == [1.0, 2.0]


def test_no_config_is_an_error(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COCO_AI_FINETUNE_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "coco_ai.workloads.finetune"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == EXIT_CONFIG
    assert "no config" in proc.stderr


def test_cuda_requested_without_cuda_is_a_config_error(tmp_path, stack, store, tiny_model) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    proc = run_workload(
        tmp_path, make_config(tmp_path, stack, store, tiny_model, training__device="cuda")
    )
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "training.device: device 'cuda' requested but CUDA is not available" in proc.stderr
    assert staged_files(tmp_path) == []
