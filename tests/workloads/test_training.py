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
        core.eval_batches(trained["eval_enc"], 8, trained["tok"].pad_token_id, pack_length=64)
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


def test_training_batches_hold_batch_size_records_packed(tiny_model: Path, examples) -> None:
    _, tok = core.load_model(tiny_model, core.select_runtime("cpu"))
    enc = core.encode_examples(tok, examples[:8], 512)
    batches = list(core.make_batches(enc, 3, tok.pad_token_id, pack_length=48,
                                     generator=torch.Generator().manual_seed(0)))  # fmt: skip
    assert [b.records for b in batches] == [3, 3, 2]
    assert sum(b.tokens for b in batches) == sum(len(r.input_ids) for r in enc)
    for b in batches:
        # each row holds one copy of the shared prefix; padding only where a row ends short
        real = int((b.input_ids != tok.pad_token_id).sum())
        assert real == b.tokens - b.shared * (b.records - b.input_ids.shape[0])
        assert b.input_ids.numel() - real < b.input_ids.shape[1]  # less than one row of padding
    again = list(core.make_batches(enc, 3, tok.pad_token_id, pack_length=48,
                                   generator=torch.Generator().manual_seed(0)))  # fmt: skip
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again, strict=True))


def test_evaluation_packs_the_whole_set_into_at_most_batch_size_rows_a_forward(
    tiny_model: Path, examples
) -> None:
    _, tok = core.load_model(tiny_model, core.select_runtime("cpu"))
    enc = core.encode_examples(tok, examples[:40], 512)
    pad = tok.pad_token_id
    batches = list(core.eval_batches(enc, 3, pad, pack_length=160))
    rows = [b.input_ids.shape[0] for b in batches]
    assert len(batches) > 1 and max(rows) <= 3 and max(rows) - min(rows) <= 1  # split evenly
    # every record exactly once (segments index the whole set), all its tokens
    assert sorted(s.record for b in batches for s in b.segments) == list(range(len(enc)))
    assert sum(b.tokens for b in batches) == sum(len(r.input_ids) for r in enc)
    # packed across the whole set: fewer rows than packing 3 records at a time
    by_three = core.make_batches(enc, 3, pad, pack_length=160, generator=torch.Generator())
    assert sum(rows) < sum(b.input_ids.shape[0] for b in by_three)
    assert list(core.eval_batches([], 3, pad, pack_length=64)) == []


def test_evaluation_loss_is_the_mean_over_every_response_token(tiny_model: Path, examples) -> None:
    """Several forwards of packed rows score each response token once: the token-weighted mean
    of transformers' own per-record loss."""
    runtime = core.select_runtime("cpu", "fp32")
    model, tok = core.load_model(tiny_model, runtime)
    enc = core.encode_examples(tok, examples[:20], 512)
    result = core.evaluate(model, enc, runtime, batch_size=2, pad_id=tok.pad_token_id,
                           pack_length=64)  # fmt: skip
    total, count = 0.0, 0
    with torch.no_grad():
        for r in enc:
            n = sum(1 for x in r.labels[1:] if x != core.IGNORE_INDEX)
            mean = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels]))
            total, count = total + float(mean.loss) * n, count + n
    assert result.tokens == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it(monkeypatch) -> None:
    for native in (True, False):
        monkeypatch.setattr(core, "cpu_has_native_bf16", lambda native=native: native)
        runtime = core.select_runtime("cpu", "auto")
        assert runtime.precision == ("bf16" if native else "fp32")
        assert runtime.autocast_dtype == (torch.bfloat16 if native else None)
        assert core.select_runtime("cpu", "fp32").autocast_dtype is None  # explicit wins
    assert core.select_runtime("cpu", "bf16").precision == "bf16"
