"""The training core on a tiny model: real PEFT LoRA training on CPU, a few dozen steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coco_ai.workloads.dataset import split_examples
from coco_ai.workloads.finetune import train as core
from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings

SETTINGS = TrainingSettings(epochs=3, learning_rate=3e-3, batch_size=8, seed=0, max_seq_length=96)


@pytest.fixture(scope="module")
def trained(tiny_model: Path, examples, tmp_path_factory):
    runtime = core.select_runtime("cpu", "auto")
    model, tok = core.load_model(tiny_model, runtime)
    train_set, eval_set = split_examples(examples, 0.2, seed=0)
    train_enc = core.encode_examples(tok, train_set, SETTINGS.max_seq_length)
    eval_enc = core.encode_examples(tok, eval_set, SETTINGS.max_seq_length)
    pad = tok.pad_token_id
    before = core.evaluate(model, eval_enc, runtime, batch_size=16, pad_id=pad, pack_length=128)
    model = core.add_lora(model, LoraSettings(), seed=0)
    seen: list[core.Progress] = []
    result = core.train(model, train_enc, SETTINGS, runtime, pad_id=pad, progress=seen.append)
    after = core.evaluate(model, eval_enc, runtime, batch_size=16, pad_id=pad, pack_length=128)
    adapter = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(adapter)
    return dict(model=model, tok=tok, before=before, after=after, result=result, seen=seen,
                adapter=adapter, eval_enc=eval_enc, runtime=runtime)  # fmt: skip


def test_lora_training_lowers_held_out_loss(trained) -> None:
    before, after = trained["before"], trained["after"]
    assert after.loss < before.loss - 0.05, (before, after)
    assert after.perplexity < before.perplexity
    assert before.tokens == after.tokens > 0
    r = trained["result"]
    assert r.steps == 3 * -(-96 // 8) == len(r.step_losses)  # 96 train examples
    assert r.tokens > 0 and r.tokens_per_s > 0
    assert trained["seen"][0].step == 1 and trained["seen"][-1].step == r.steps
    assert trained["seen"][-1].eta_s == 0


def test_only_lora_parameters_train(trained) -> None:
    total, trainable = core.count_parameters(trained["model"])
    names = [n for n, p in trained["model"].named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert 0 < trainable < total / 10


def test_adapter_reload_gives_identical_logits(trained, tiny_model: Path) -> None:
    from peft import PeftModel

    runtime = trained["runtime"]
    base, _ = core.load_model(tiny_model, runtime)
    reloaded = PeftModel.from_pretrained(base, trained["adapter"], local_files_only=True).eval()
    model = trained["model"].eval()
    batch = next(
        core.make_batches(trained["eval_enc"], 8, trained["tok"].pad_token_id, pack_length=64)
    )
    inputs = {
        "input_ids": batch.input_ids,
        "position_ids": batch.position_ids,
        "attention_mask": batch.attention_mask,  # the packed batch's block mask
    }
    with torch.no_grad():
        a = model(**inputs).logits
        b = reloaded(**inputs).logits
    assert torch.equal(a, b)
    with reloaded.disable_adapter(), torch.no_grad():
        c = reloaded(**inputs).logits
    assert not torch.equal(a, c)  # the adapter is not a no-op


def test_labels_mask_the_prompt(tiny_model: Path, examples) -> None:
    _, tok = core.load_model(tiny_model, core.select_runtime("cpu"))
    enc = core.encode_examples(tok, examples[:1], 512)[0]
    prompt = core.prompt_ids(tok, examples[0].instruction)
    assert enc.input_ids[: len(prompt)] == prompt
    assert enc.labels[: len(prompt)] == [core.IGNORE_INDEX] * len(prompt)
    assert enc.labels[len(prompt) :] == enc.input_ids[len(prompt) :]
    assert enc.input_ids[-1] == tok.eos_token_id
    # a window shorter than the prompt leaves nothing to learn: the example is dropped
    assert core.encode_examples(tok, examples[:1], len(prompt)) == []


def test_batches_hold_batch_size_records_packed(tiny_model: Path, examples) -> None:
    _, tok = core.load_model(tiny_model, core.select_runtime("cpu"))
    enc = core.encode_examples(tok, examples[:8], 512)
    batches = list(core.make_batches(enc, 3, tok.pad_token_id, pack_length=48))
    assert [b.records for b in batches] == [3, 3, 2]
    by_length = sorted(enc, key=lambda r: len(r.input_ids))  # evaluation order: by length
    for i, b in enumerate(batches):
        rows = by_length[3 * i : 3 * i + 3]
        assert b.tokens == sum(len(r.input_ids) for r in rows)
        real = int((b.input_ids != tok.pad_token_id).sum())
        assert real == b.tokens  # padding only where a row ends short (no pad id in the data)
        assert b.input_ids.numel() - real < b.input_ids.shape[1]  # less than one row of padding
    shuffled = list(core.make_batches(enc, 3, tok.pad_token_id, pack_length=48,
                                      generator=torch.Generator().manual_seed(0)))  # fmt: skip
    assert sum(b.tokens for b in shuffled) == sum(len(r.input_ids) for r in enc)


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it(monkeypatch) -> None:
    for native in (True, False):
        monkeypatch.setattr(core, "cpu_has_native_bf16", lambda native=native: native)
        runtime = core.select_runtime("cpu", "auto")
        assert runtime.precision == ("bf16" if native else "fp32")
        assert runtime.autocast_dtype == (torch.bfloat16 if native else None)
        assert core.select_runtime("cpu", "fp32").autocast_dtype is None  # explicit wins
    assert core.select_runtime("cpu", "bf16").precision == "bf16"
