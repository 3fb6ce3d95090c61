"""`coco-ai dataset encrypt`, `coco-ai model digest`, the GPU benchmark's CPU fallback, and the
workload run in-process with its base model fetched from an object store."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.cli import main as coco_ai
from coco_ai.workloads.dataset import generate_examples, parse_jsonl, to_jsonl
from coco_ai.workloads.models import model_digest

REPO = Path(__file__).resolve().parents[2]


def test_dataset_encrypt_round_trips_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    from coco_ai.crypto import decrypt_blob
    from coco_ai.workloads.dataset import DATASET_AAD

    key = secrets.token_bytes(32)
    (tmp_path / "k").write_bytes(key)
    src, dst = tmp_path / "d.jsonl", tmp_path / "d.enc"
    src.write_bytes(to_jsonl(generate_examples(30, seed=1)))
    uri = "kbs:///default/dataset/nw"
    assert coco_ai(["dataset", "encrypt", "--key-file", str(tmp_path / "k"), "--key-uri", uri,
                    str(src), str(dst)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["records"] == 30 and printed["dataset_digest"].startswith("sha256:")
    blob = dst.read_bytes()
    assert src.read_bytes() not in blob
    plain = decrypt_blob(blob, kek=key, aad_context=DATASET_AAD, key_uri=uri)
    assert parse_jsonl(plain) == generate_examples(30, seed=1)

    (tmp_path / "short").write_bytes(b"x" * 16)
    assert coco_ai(["dataset", "encrypt", "--key-file", str(tmp_path / "short"), "--key-uri", uri,
                    str(src), str(tmp_path / "o")]) == 2  # fmt: skip
    assert "32-byte key" in capsys.readouterr().err
    src.write_bytes(b'{"instruction": "q"}\n')
    assert coco_ai(["dataset", "encrypt", "--key-file", str(tmp_path / "k"), "--key-uri", uri,
                    str(src), str(tmp_path / "o")]) == 2  # fmt: skip
    assert "missing field 'response'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_digest_cli(tiny_model: Path, capsys) -> None:
    assert coco_ai(["model", "digest", str(tiny_model)]) == 0
    assert capsys.readouterr().out.strip() == model_digest(tiny_model)


@pytest.mark.timeout(320)  # three trainers (TRL included) on a tiny model; the box is shared
def test_gpu_bench_cpu_smoke_and_fail_fast_without_cuda(tmp_path: Path) -> None:
    script = REPO / "benchmarks" / "gpu" / "bench_gpu.py"
    env = {"OMP_NUM_THREADS": "2", **os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke"], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "gpu_bench.json").read_text())
    check = summary["functional_check"]
    assert check["eval_loss_after"] < check["eval_loss_before"]
    assert check["reload_max_abs_logit_diff"] == 0.0
    (result,) = summary["results"]
    assert result["ours_tokens_per_s_median"] > 0 and result["plain_tokens_per_s_median"] > 0
    assert result["trl_tokens_per_s_median"] > 0 and result["ratio_ours_to_trl"] > 0
    assert result["n_lora"] == result["trainable_parameters"] > 0
    assert result["flops_per_token"] > 4 * result["n_base_matmul"]
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
        assert proc.returncode == 2
        assert "CUDA is not available" in proc.stderr


@pytest.mark.timeout(200)
def test_in_process_run_with_base_model_from_object_store(tmp_path, tiny_model, examples) -> None:
    from coco_ai.devstack.workload import start_local_stack
    from coco_ai.storage import open_store
    from coco_ai.workloads.finetune.config import FinetuneConfig
    from coco_ai.workloads.finetune.workload import EXIT_BASE_MODEL, FinetuneWorkload, WorkloadError

    models = open_store("memory://coco-ai-test-models")
    for f in sorted(tiny_model.iterdir()):
        models.put_bytes(f"tiny/{f.name}", f.read_bytes())
    with start_local_stack(tmp_path / "trustee", "run-inproc") as stack:
        (tmp_path / "ds.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples)))

        def config(digest: str, staging: str) -> FinetuneConfig:
            return FinetuneConfig.from_dict({
                "run_id": "run-inproc", "guest_api_url": stack.guest_url,
                "staging_uri": f"file://{tmp_path}/{staging}",
                "checkpoint_key_uri": stack.checkpoint_key_uri,
                "run_key_root_uri": stack.run_key_root_uri,
                "dataset": {"uri": f"file://{tmp_path}/ds.enc", "key_uri": stack.dataset_key_uri},
                "base_model": {"path": "memory://coco-ai-test-models/tiny", "digest": digest},
                "training": {"max_steps": 2, "batch_size": 4, "sample_questions": 1,
                             "max_new_tokens": 4, "device": "cpu", "max_seq_length": 64},
            })  # fmt: skip

        with pytest.raises(WorkloadError, match="but the run names") as info:
            FinetuneWorkload(config("sha256:" + "1" * 64, "s1"), out=io.StringIO()).run()
        assert info.value.exit_code == EXIT_BASE_MODEL
        assert not (tmp_path / "s1").exists()

        log = io.StringIO()
        result = FinetuneWorkload(config(model_digest(tiny_model), "s2"), out=log).run()
    assert result.metrics["train_steps"] == 2
    assert (tmp_path / "s2" / "manifest.json").is_file()
    assert {"keys", "dataset", "train", "attest", "encrypt", "sign", "upload"} <= set(
        result.timings
    )
    assert "step 2/2" in log.getvalue()
