"""Fine-tune speed on CPU: our loop against its peers, and the cost of confidentiality.

**Peers** (``--section peers``): the same LoRA fine-tune (same base model, LoRA config and seed,
the same tokenised Northwind records with the prompt masked, batch 8, AdamW, linear decay, one
epoch) by three trainers, each in a fresh process so its peak memory is its own:
- ``ours``: the workload's training core (padding-free packing, loss on response tokens only);
- ``trl``: TRL ``SFTTrainer`` configured for speed (see bench_gpu.trl_sft_train);
- ``plain``: the textbook PEFT loop (DataLoader, right padding, ``model(..., labels)``), which is
  what the workload ran before.
Reported per trainer: real (non-padding) tokens per wall second and per CPU second of training,
train wall seconds for the epoch, the held-out eval loss it reaches, peak RSS; and for ours vs
plain, the wall time of evaluation + greedy sample answers (batched + packed vs one by one).
Rounds rotate the order; ratios are medians over rounds, all from the same run.

``--precision fp32,bf16`` runs the comparison in each precision (bf16: autocast with the frozen
base weights in bf16, for all three trainers alike).

**Demo** (``--section demo``, not part of ``all``: three processes side by side, 10-30 minutes
per epoch on a busy box): the demo's SmolLM2 fine-tune (320 train / 80 held-out records, the
default recipe; ``--epochs``: 3 as the demo, fewer to save time; ``--train-records N`` to time
the assessments alone) with the workload's phases minus its fixed confidential steps (assess,
train, assess), by the plain loop in fp32 (what ``make demo`` ran when issue 15 was filed), the
packed loop in fp32 and the packed loop in bf16: training and eval + sample-answer seconds (wall
and CPU) as ratios to the first, and the held-out loss each reaches. ``--serial``: one after
another instead (on a quiet box: no run shares the caches and memory bandwidth with another);
``--serial --threads 2``: each with the whole box, as ``make demo`` runs (compare wall seconds).

**Confidential** (``--section confidential``): the whole confidential workload (Trustee stand-in
over TLS, guest-components emulator, key release after attestation, encrypted data set, LoRA
training, encryption, TEE signature, upload to a file:// staging store) against the same training
core run bare, in the same process and rounds. Goal: ratio >= 0.97 (confidentiality costs at most
3 % of training throughput), plus the fixed overhead in seconds and as a share of the run.

The box is shared (2 cores, several users): wall-clock throughput swings with other people's
jobs, so ratios use tokens per CPU-second of training (one torch thread: no OpenMP spin-waiting,
so CPU time is what the loop itself costs) and wall-clock figures are reported beside them.

    nice -n 5 .venv/bin/python benchmarks/bench_finetune.py [--quick] [--section S] [--out FILE]
        [--precision fp32,bf16] [--epochs N] [--train-records N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))

FIXED_PHASES = (
    "staging_check",
    "keys",
    "dataset",
    "base_model_check",
    "attest",
    "encrypt",
    "sign",
    "upload",
)
SIZES = {
    # name: (examples, epochs, max_steps, learning rate, rounds)
    "1m": (400, 1, None, 2e-3, 3),
    "10m": (200, 1, None, 2e-3, 2),
    "135m": (120, 1, 8, 1e-3, 2),  # SmolLM2: seconds per step on one thread
}


def _model_dir(size: str, root: Path, corpus: list[str]) -> Path:
    from coco_ai.workloads.models import build_tiny_model, convert_smollm2

    if size == "135m":
        return convert_smollm2(REPO / ".cache" / "models")
    return build_tiny_model(root / f"tiny-{size}", size, corpus)


def _bare_tokens_per_s(model_dir: Path, cfg, examples) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of the training core alone: the same
    loop and settings as the workload, without keys, attestation, encryption or upload."""
    from coco_ai.workloads.dataset import split_examples
    from coco_ai.workloads.finetune import train as core

    t = cfg.training
    runtime = core.select_runtime(t.device, t.precision)  # as the workload picks it
    model, tok = core.load_model(model_dir, runtime)
    model = core.add_lora(model, cfg.lora, t.seed)
    train_set, _ = split_examples(examples, t.eval_fraction, t.seed)
    encoded = core.encode_examples(tok, train_set, t.max_seq_length)
    cpu_start = time.process_time()
    result = core.train(model, encoded, t, runtime, pad_id=tok.pad_token_id)
    return result.tokens_per_s, result.tokens / (time.process_time() - cpu_start)


def bench_size(size: str, rounds: int, root: Path) -> dict:
    from coco_ai.devstack.workload import start_local_stack
    from coco_ai.workloads.dataset import corpus_text, generate_examples, to_jsonl
    from coco_ai.workloads.finetune.config import FinetuneConfig
    from coco_ai.workloads.finetune.workload import FinetuneWorkload
    from coco_ai.workloads.models import model_digest

    n, epochs, max_steps, lr, _ = SIZES[size]
    examples = generate_examples(n, seed=0)
    model_dir = _model_dir(size, root, corpus_text(examples))
    digest = model_digest(model_dir)
    run_id = f"bench-{size}"
    work = Path(tempfile.mkdtemp(prefix=f"bench-{size}-", dir=root))
    ours, bare, ours_cpu, bare_cpu, runs = [], [], [], [], []
    with start_local_stack(work / "trustee", run_id) as stack:
        (work / "store").mkdir()
        (work / "store" / "data.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples)))

        def config(i: int) -> FinetuneConfig:
            return FinetuneConfig.from_dict(
                {
                    "run_id": run_id,
                    "guest_api_url": stack.guest_url,
                    "staging_uri": f"file://{work}/staging/{i}",
                    "checkpoint_key_uri": stack.checkpoint_key_uri,
                    "run_key_root_uri": stack.run_key_root_uri,
                    "dataset": {
                        "uri": f"file://{work}/store/data.enc",
                        "key_uri": stack.dataset_key_uri,
                    },
                    "base_model": {"path": str(model_dir), "digest": digest},
                    "training": {
                        "epochs": epochs,
                        "max_steps": max_steps,
                        "learning_rate": lr,
                        "batch_size": 8,
                        "max_seq_length": 128,
                        "device": "cpu",
                        "sample_questions": 1,
                        "max_new_tokens": 8,
                    },
                }
            )

        for i in range(rounds):
            order = ("ours", "bare") if i % 2 == 0 else ("bare", "ours")
            for which in order:
                cfg = config(i)
                if which == "bare":
                    wall_rate, cpu_rate = _bare_tokens_per_s(model_dir, cfg, examples)
                    bare.append(wall_rate)
                    bare_cpu.append(cpu_rate)
                    continue
                start = time.perf_counter()
                result = FinetuneWorkload(cfg, out=io.StringIO()).run()
                wall = time.perf_counter() - start
                ours.append(result.metrics["train_tokens_per_s"])
                ours_cpu.append(result.metrics["train_tokens"] / result.cpu_timings["train"])
                runs.append((wall, result))
    # the first run: its emulator has not attested yet, so "keys" includes the attestation
    wall, result = runs[0]
    fixed = sum(result.timings.get(p, 0.0) for p in FIXED_PHASES)
    return {
        "model": size,
        "parameters": int(result.metrics["total_parameters"]),
        "trainable_parameters": int(result.metrics["trainable_parameters"]),
        "train_steps": int(result.metrics["train_steps"]),
        "train_tokens": int(result.metrics["train_tokens"]),
        "workload_tokens_per_cpu_s": [round(x, 1) for x in ours_cpu],
        "bare_loop_tokens_per_cpu_s": [round(x, 1) for x in bare_cpu],
        "ratio": round(statistics.median(ours_cpu) / statistics.median(bare_cpu), 4),
        "workload_train_tokens_per_s": [round(x, 1) for x in ours],
        "bare_loop_tokens_per_s": [round(x, 1) for x in bare],
        "ratio_wall_best_of_rounds": round(max(ours) / max(bare), 4),
        "fixed_overhead_s": round(fixed, 3),
        "run_s": round(wall, 2),
        "fixed_overhead_share": round(fixed / wall, 4),
        "phases_s": {k: round(v, 3) for k, v in result.timings.items()},
        "eval_loss_before": round(result.metrics["eval_loss_before"], 4),
        "eval_loss_after": round(result.metrics["eval_loss"], 4),
    }


# ---- peers --------------------------------------------------------------------------------------

TRAINERS = ("ours", "trl", "plain")
PEER_SIZES = {
    # name: (train records, eval records, learning rate, rounds)
    "1m": (96, 40, 2e-3, 3),
    "10m": (64, 40, 2e-3, 2),
    "135m": (24, 16, 1e-3, 2),  # SmolLM2-135M-Instruct: 3 steps of 8 records per run
}
SAMPLE_QUESTIONS, MAX_NEW_TOKENS = 3, 48  # the demo's settings


def peer_worker(spec: dict) -> dict:
    """One trainer in this (fresh) process; the figures as a dict. ``spec``: trainer, precision
    (fp32 | bf16: autocast + frozen base weights in bf16, for every trainer alike), epochs,
    train/eval record counts (None: all), and ``assess_before``: also evaluate and answer the
    sample questions before training, as the workload does."""
    import resource

    import psutil
    import torch
    from bench_gpu import plain_answers, plain_evaluate, plain_peft_loop, trl_sft_train

    from coco_ai.workloads.dataset import generate_examples, split_examples
    from coco_ai.workloads.finetune import train as core
    from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings

    torch.set_num_threads(spec.get("threads", 1))
    trainer, batch, epochs = spec["trainer"], 8, spec.get("epochs", 1)
    train_set, eval_set = split_examples(generate_examples(spec["examples"], seed=0), 0.2, 0)
    runtime = core.select_runtime("cpu", spec.get("precision", "fp32"))
    model, tok = core.load_model(spec["model_dir"], runtime)
    train_enc = core.encode_examples(tok, train_set, 256)[: spec["train_records"]]
    eval_enc = core.encode_examples(tok, eval_set, 256)[: spec["eval_records"]]
    questions = [e.instruction for e in eval_set[:SAMPLE_QUESTIONS]]

    def assess() -> tuple[float, float, float, float, list[str]]:
        """(eval loss, eval s, eval + sample answers s and CPU s, answers): the workload's way
        for ours and TRL (batched, packed), the textbook way for plain (what the workload did
        before)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        if trainer == "plain":
            loss = plain_evaluate(model, eval_enc, batch_size=batch, device=runtime.device,
                                  dtype=runtime.autocast_dtype)  # fmt: skip
            eval_s = time.perf_counter() - start
            prompts = [core.prompt_ids(tok, q) for q in questions]
            answers = plain_answers(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS,
                                    device=runtime.device)  # fmt: skip
        else:
            model.eval()
            with core.inference_weights(model, runtime):  # once for both, as the workload
                loss = core.evaluate(model, eval_enc, runtime, batch_size=batch,
                                     pad_id=tok.pad_token_id, pack_length=256).loss  # fmt: skip
                eval_s = time.perf_counter() - start
                answers = core.answer(model, tok, questions, runtime, max_new_tokens=MAX_NEW_TOKENS)
        return loss, eval_s, time.perf_counter() - start, time.process_time() - cpu_start, answers

    before = assess() if spec.get("assess_before") else None
    model = core.add_lora(model, LoraSettings(), seed=0)
    rss_before = psutil.Process().memory_info().rss
    steps = epochs * -(-len(train_enc) // batch)
    cpu_start = time.process_time()
    if trainer == "ours":
        settings = TrainingSettings(
            epochs=epochs, batch_size=batch, learning_rate=spec["lr"], seed=0
        )
        r = core.train(model, train_enc, settings, runtime, pad_id=tok.pad_token_id)
        tokens, seconds = r.tokens, r.seconds
    elif trainer == "plain":
        tokens, seconds = plain_peft_loop(
            model, train_enc, steps=steps, batch_size=batch, lr=spec["lr"],
            device=runtime.device, dtype=runtime.autocast_dtype, seed=0,
        )  # fmt: skip
    else:
        tokens, seconds = trl_sft_train(
            model, tok, train_enc, steps=None, batch_size=batch, lr=spec["lr"], seed=0,
            bf16=runtime.autocast_dtype is not None, out_dir=spec["scratch"], epochs=epochs,
        )  # fmt: skip
    cpu = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    loss, eval_s, assess_s, assess_cpu_s, answers = assess()
    out = {
        "trainer": trainer,
        "precision": runtime.precision,
        "records": len(train_enc),
        "tokens": tokens,
        "train_s": seconds,
        "train_cpu_s": cpu,
        "eval_loss": loss,
        "eval_s": eval_s,
        "eval_and_samples_s": assess_s,
        "eval_and_samples_cpu_s": assess_cpu_s,
        "answers": answers,
        "peak_rss_mib": peak / 2**20,
        "rss_before_training_mib": rss_before / 2**20,
    }
    if before is not None:
        out["eval_loss_before"] = before[0]
        out["eval_and_samples_before_s"] = before[2]
        out["eval_and_samples_before_cpu_s"] = before[3]
        out["answers_before"] = before[4]
    return out


def _run_worker(spec: dict) -> dict:
    """One trainer in a fresh process (its own peak memory); its figures."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{spec['trainer']} ({spec}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_peers(size: str, rounds: int, root: Path, precision: str) -> dict:
    from coco_ai.workloads.dataset import corpus_text, generate_examples

    train_records, eval_records, lr, _ = PEER_SIZES[size]
    examples = 400  # the demo's data set size; its first records are taken
    model_dir = _model_dir(size, root, corpus_text(generate_examples(examples, seed=0)))
    runs: dict[str, list[dict]] = {t: [] for t in TRAINERS}
    for i in range(rounds):
        for trainer in TRAINERS[i % 3 :] + TRAINERS[: i % 3]:  # rotate the order
            spec = {
                "trainer": trainer, "precision": precision, "model_dir": str(model_dir),
                "examples": examples, "train_records": train_records,
                "eval_records": eval_records, "lr": lr,
                "scratch": str(root / f"trl-{size}-{precision}-{i}"),
            }  # fmt: skip
            runs[trainer].append(_run_worker(spec))

    def med(trainer: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[trainer])

    def rate(r: dict, key: str) -> float:
        return r["tokens"] / r[key]

    out: dict = {
        "model": size,
        "precision": precision,
        "train_records": train_records,
        "eval_records": eval_records,
    }
    for t in TRAINERS:
        rs = runs[t]
        out[t] = {
            "tokens_per_s": [round(rate(r, "train_s"), 1) for r in rs],
            "tokens_per_cpu_s": [round(rate(r, "train_cpu_s"), 1) for r in rs],
            "train_s": [round(r["train_s"], 2) for r in rs],
            "tokens": rs[0]["tokens"],
            "eval_loss": round(rs[0]["eval_loss"], 4),
            "peak_rss_mib": round(max(r["peak_rss_mib"] for r in rs), 1),
            "rss_before_training_mib": round(rs[0]["rss_before_training_mib"], 1),
        }
    for t in ("ours", "plain"):
        out[t]["eval_and_samples_s"] = [round(r["eval_and_samples_s"], 2) for r in runs[t]]
        out[t]["sample_answer"] = runs[t][0]["answers"][0]

    def ratio(a: str, b: str, key: str) -> float:
        return round(
            statistics.median(rate(r, key) for r in runs[a])
            / statistics.median(rate(r, key) for r in runs[b]),
            4,
        )

    out["ratios"] = {
        "ours_vs_trl_tokens_per_cpu_s": ratio("ours", "trl", "train_cpu_s"),
        "ours_vs_plain_tokens_per_cpu_s": ratio("ours", "plain", "train_cpu_s"),
        "ours_vs_trl_tokens_per_s": ratio("ours", "trl", "train_s"),
        "ours_vs_plain_tokens_per_s": ratio("ours", "plain", "train_s"),
        "plain_vs_ours_train_wall_s": round(med("plain", "train_s") / med("ours", "train_s"), 4),
        "plain_vs_ours_eval_and_samples_s": round(
            med("plain", "eval_and_samples_s") / med("ours", "eval_and_samples_s"), 4
        ),
    }
    return out


# ---- the demo's fine-tune -----------------------------------------------------------------------

#: (trainer, precision): the first is what ``make demo`` ran when issue 15 was filed (the plain
#: loop, fp32), the second the packed loop in fp32, the third the packed loop in bf16 (what
#: ``precision = "auto"`` picks on a CPU with native bf16 matmuls)
DEMO_RUNS = (("plain", "fp32"), ("ours", "fp32"), ("ours", "bf16"))
DEMO_RATIO_KEYS = ("train_s", "train_cpu_s", "eval_and_samples_s", "eval_and_samples_cpu_s",
                   "total_s", "total_cpu_s")  # fmt: skip


def bench_demo(
    root: Path, epochs: int, train_records: int | None, serial: bool = False, threads: int = 1
) -> dict:
    """The demo's fine-tune on SmolLM2 (all 320 train / 80 held-out records, the default recipe,
    ``epochs`` epochs; ``train_records`` limits the training set, to time the assessments
    alone), the workload's phases without its fixed confidential steps: assess (held-out loss
    + 3 greedy sample answers), train, assess again. The runs go side by side (unless
    `serial`), one process (`threads` torch threads) each, so that a busy box slows them
    alike."""
    from concurrent.futures import ThreadPoolExecutor

    model_dir = _model_dir("135m", root, [])
    common = {"model_dir": str(model_dir), "examples": 400, "train_records": train_records,
              "eval_records": None, "lr": 1e-3, "epochs": epochs, "assess_before": True,
              "scratch": str(root / "demo"), "threads": threads}  # fmt: skip
    specs = [{"trainer": t, "precision": p, **common} for t, p in DEMO_RUNS]
    with ThreadPoolExecutor(1 if serial else len(specs)) as pool:
        results = list(pool.map(_run_worker, specs))
    runs = []
    for (trainer, _), r in zip(DEMO_RUNS, results, strict=True):
        assess_s = r["eval_and_samples_before_s"] + r["eval_and_samples_s"]
        assess_cpu_s = r["eval_and_samples_before_cpu_s"] + r["eval_and_samples_cpu_s"]
        runs.append(
            {
                "trainer": trainer,
                "precision": r["precision"],
                "train_s": round(r["train_s"], 1),
                "train_cpu_s": round(r["train_cpu_s"], 1),
                "tokens": r["tokens"],
                "tokens_per_s": round(r["tokens"] / r["train_s"], 1),
                "eval_and_samples_s": round(assess_s, 1),
                "eval_and_samples_cpu_s": round(assess_cpu_s, 1),
                "total_s": round(r["train_s"] + assess_s, 1),
                "total_cpu_s": round(r["train_cpu_s"] + assess_cpu_s, 1),
                "eval_loss_before": round(r["eval_loss_before"], 4),
                "eval_loss": round(r["eval_loss"], 4),
                "peak_rss_mib": round(r["peak_rss_mib"], 1),
                "answers_before": r["answers_before"],
                "answers_after": r["answers"],
            }
        )
    base = runs[0]
    for r in runs[1:]:
        r["vs_plain_fp32"] = {key: round(r[key] / base[key], 4) for key in DEMO_RATIO_KEYS}
    return {"model": "135m", "epochs": epochs, "serial": serial, "threads": threads, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1M model only")
    p.add_argument(
        "--section", choices=("peers", "confidential", "demo", "all"), default="all",
        help="demo: the demo's whole SmolLM2 fine-tune, before/after (not part of 'all')",
    )  # fmt: skip
    p.add_argument("--precision", default="fp32", help="peers: fp32, bf16 or both (fp32,bf16)")
    p.add_argument("--epochs", type=int, default=3, help="demo: epochs (the demo's: 3)")
    p.add_argument("--train-records", type=int, default=None, help="demo: fewer train records")
    p.add_argument("--serial", action="store_true", help="demo: one trainer after another")
    p.add_argument("--threads", type=int, default=1, help="demo: torch threads per trainer")
    p.add_argument("--rounds", type=int, default=None, help="rounds per size")
    p.add_argument("--sizes", default=None, help=f"comma-separated subset of {', '.join(SIZES)}")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one peer run (JSON spec), internal
    args = p.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.worker:
        print(json.dumps(peer_worker(json.loads(args.worker))))
        return
    torch.set_num_threads(1)
    sizes = args.sizes.split(",") if args.sizes else ["1m"] if args.quick else list(SIZES)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size {unknown[0]!r}; known: {', '.join(SIZES)}")
    bad = [x for x in args.precision.split(",") if x not in ("fp32", "bf16")]
    if bad:
        p.error(f"unknown precision {bad[0]!r}; known: fp32, bf16")
    started = time.perf_counter()
    summary: dict = {
        "benchmark": "finetune_cpu_peers_and_confidential_cost",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        if args.section in ("peers", "all"):
            peers = [
                bench_peers(s, args.rounds or PEER_SIZES[s][3], Path(tmp), precision)
                for precision in args.precision.split(",")
                for s in sizes
            ]
            summary["peers"] = {
                "goal": "ours >= 1.0x trl and >= 1.5x plain (median tokens per CPU-second)",
                "results": peers,
            }
        if args.section in ("confidential", "all"):
            results = [bench_size(s, args.rounds or SIZES[s][4], Path(tmp)) for s in sizes]
            summary["confidential"] = {
                "goal": "ratio >= 0.97 (median training tokens per CPU-second, workload / bare "
                "training core)",
                "fixed_phases": list(FIXED_PHASES),
                "results": results,
                "min_ratio": min(r["ratio"] for r in results),
            }
        if args.section == "demo":
            summary["demo"] = {
                "goal": "the same held-out eval loss in <= 1/2 the plain fp32 loop's train + "
                "assess time; eval + samples in <= 1/3 (vs_plain_fp32 ratios <= 0.5, <= 0.33)",
                **bench_demo(Path(tmp), args.epochs, args.train_records, args.serial, args.threads),
            }
    summary["load_average_at_end"] = list(os.getloadavg())
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
