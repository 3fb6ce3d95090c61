"""The training core: tokenise, evaluate, LoRA-train, sample. torch/transformers/peft only.

Nothing here knows about keys, attestation or storage, so the GPU benchmark can import it on an
image without the crypto stack. One code path for CPU (fp32) and CUDA (bf16 autocast, frozen base
weights stored in bf16, LoRA weights in fp32).

The loop avoids per-step host/device synchronisation: step losses stay on the device and are read
only when a progress line is due (at most every ``log_interval_s``) and at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from coco_ai.workloads.dataset import Example
from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings

IGNORE_INDEX = -100
MAX_GRAD_NORM = 1.0
FALLBACK_PROMPT = "### Instruction:\n{instruction}\n### Response:\n"


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tokens: int  # real (non-padding) tokens


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy per response token
    perplexity: float
    tokens: int  # response tokens scored


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float  # mean step loss since the previous report
    tokens_per_s: float
    eta_s: float


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int  # real tokens processed
    seconds: float
    step_losses: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def select_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """auto: CUDA if present; bf16 on CUDA when supported, fp32 on CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if precision == "auto":
        use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    else:
        use_bf16 = precision == "bf16"
    return Runtime(dev, torch.bfloat16 if use_bf16 else None)


def load_model(model_dir: str | Path, runtime: Runtime):
    """Load a Hugging Face causal LM and its tokenizer from a local directory (offline)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if runtime.autocast_dtype == torch.bfloat16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    return model.to(runtime.device), tokenizer


def prompt_ids(tokenizer: PreTrainedTokenizerBase, instruction: str) -> list[int]:
    """The model's chat template if it has one, else a plain instruction format with BOS."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(FALLBACK_PROMPT.format(instruction=instruction), add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + ids["input_ids"]


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_seq_length: int
) -> list[Encoded]:
    """Prompt + response + EOS, truncated to ``max_seq_length``; the loss covers the response
    and EOS only. Examples whose prompt alone fills the window are dropped (they teach nothing)."""
    out: list[Encoded] = []
    for ex in examples:
        prompt = prompt_ids(tokenizer, ex.instruction)
        response = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        response = [*response, tokenizer.eos_token_id]
        ids = (prompt + response)[:max_seq_length]
        labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_seq_length]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            out.append(Encoded(ids, labels))
    return out


def make_batches(
    encoded: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Dynamic padding (to the longest sequence of each batch, on the right); shuffled when a
    generator is given. Tensors are built on the CPU (pinned when CUDA is present)."""
    order = (
        torch.randperm(len(encoded), generator=generator).tolist()
        if generator is not None
        else list(range(len(encoded)))
    )
    pin = torch.cuda.is_available()
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r.input_ids)
            ids[j, :n] = torch.tensor(r.input_ids)
            mask[j, :n] = 1
            labels[j, :n] = torch.tensor(r.labels)
        if pin:
            ids, mask, labels = ids.pin_memory(), mask.pin_memory(), labels.pin_memory()
        yield Batch(ids, mask, labels, sum(len(r.input_ids) for r in rows))


def add_lora(model, lora: LoraSettings, seed: int) -> PeftModel:
    torch.manual_seed(seed)  # LoRA A matrices are drawn here
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the base model
        raise ValueError(f"lora.target_modules: {exc}") from None


def _to(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        batch.input_ids.to(device, non_blocking=True),
        batch.attention_mask.to(device, non_blocking=True),
        batch.labels.to(device, non_blocking=True),
    )


@torch.no_grad()
def evaluate(
    model, encoded: Sequence[Encoded], runtime: Runtime, *, batch_size: int, pad_id: int
) -> EvalResult:
    """Token-weighted mean cross-entropy over all response tokens, and its perplexity."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = 0
    for batch in make_batches(encoded, batch_size, pad_id):
        ids, mask, labels = _to(batch, runtime.device)
        with runtime.autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        count += int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = total.item() / max(count, 1)
    return EvalResult(loss, math.exp(min(loss, 700.0)), count)


def train(
    model,
    encoded: Sequence[Encoded],
    settings: TrainingSettings,
    runtime: Runtime,
    *,
    pad_id: int,
    progress: Callable[[Progress], None] | None = None,
    log_interval_s: float = 2.0,
) -> TrainResult:
    """AdamW over the trainable (LoRA) parameters, linear decay to zero, gradient clipping."""
    steps_per_epoch = math.ceil(len(encoded) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, 1.0 - s / total_steps)
    )
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    step_losses: list[torch.Tensor] = []
    tokens = 0
    step = 0
    start = last_report = time.perf_counter()
    reported_step, reported_tokens = 0, 0
    for epoch in range(1, settings.epochs + 1):
        for batch in make_batches(encoded, settings.batch_size, pad_id, generator=generator):
            ids, mask, labels = _to(batch, runtime.device)
            with runtime.autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_losses.append(loss.detach())
            tokens += batch.tokens
            step += 1
            now = time.perf_counter()
            if progress is not None and (
                step in (1, total_steps) or now - last_report >= log_interval_s
            ):
                window = torch.stack(step_losses[reported_step:]).float().mean().item()
                now = time.perf_counter()  # after the sync the item() forced
                rate = (tokens - reported_tokens) / max(now - last_report, 1e-9)
                per_step = (now - start) / step
                progress(
                    Progress(
                        step, total_steps, epoch, window, rate, per_step * (total_steps - step)
                    )
                )
                last_report, reported_step, reported_tokens = now, step, tokens
            if step >= total_steps:
                break
        if step >= total_steps:
            break
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    seconds = time.perf_counter() - start
    losses = torch.stack(step_losses).float().tolist() if step_losses else []
    return TrainResult(step, tokens, seconds, losses)


@torch.no_grad()
def answer(
    model,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    runtime: Runtime,
    *,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers, one prompt at a time (a handful of questions: no padding games)."""
    was_training = model.training
    model.eval()
    out = []
    for q in instructions:
        ids = torch.tensor([prompt_ids(tokenizer, q)], device=runtime.device)
        with runtime.autocast():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    model.train(was_training)
    return out


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
