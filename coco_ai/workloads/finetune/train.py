"""The training core: tokenise, evaluate, LoRA-train, sample. torch/transformers/peft only.

Nothing here knows about keys, attestation or storage, so the GPU benchmark can import it on an
image without the crypto stack. One code path for fp32 and bf16 (autocast, frozen base weights
stored in bf16, LoRA weights and optimiser state in fp32) on CPU and CUDA; ``precision = "auto"``
picks bf16 where the device computes it natively (see :func:`select_runtime`).

Speed comes from doing less work, not from hand-written kernels:

- **Padding-free packing behind a shared prefix.** The records of a step are laid end to end in
  a few rows of at most ``pack_length`` tokens (first-fit decreasing), behind one copy per row
  of the prefix they all share (a chat template's system prompt and turn header; never a
  trained position). An explicit block mask lets a token attend to earlier tokens of its own
  record and to the shared prefix, nothing else; position ids are each record's own. This is
  the unpacked computation, only cheaper: the prefix's hidden states are the same for every
  record (causal attention, same tokens, same positions), so computing them once changes
  nothing but the cost (with LoRA dropout, the prefix shares one dropout draw). Only the tail
  of a row can be padding; it is a block of its own. Each step still trains on ``batch_size``
  records, so the optimiser sees the same batches (and the same mean loss per response token)
  as a padded loop.
- **Loss on response tokens only.** Targets are shifted inside each record at collate time; the
  LM head runs only on the hidden states that have a target (the prompt, often most of a chat
  record, never reaches the vocabulary projection), through a chunked linear + cross-entropy that
  never holds more than ``LOSS_CHUNK`` rows of logits and computes the hidden-state gradient in
  the same pass (the fused-linear-cross-entropy idea, in plain torch so it runs on CPU too).
- **Evaluation** packs the whole held-out set at once and runs it a few full rows at a time;
  **sample answers** are generated in one left-padded batch with the KV cache. Both run on
  faster weights that are put back exactly afterwards (:func:`inference_weights`, entered once
  for both): LoRA merged into the base projections, and on a bf16 CPU every linear's weight
  laid out once for oneDNN.

The loop avoids per-step host/device synchronisation: step losses stay on the device and are read
only when a progress line is due (at most every ``log_interval_s``) and at the end.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from coco_ai.workloads.dataset import Example
from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings

IGNORE_INDEX = -100
MAX_GRAD_NORM = 1.0
LOSS_CHUNK = 2048  # rows of logits alive at once in the loss (2048 x 49152 fp32 = 384 MiB)
FALLBACK_PROMPT = "### Instruction:\n{instruction}\n### Response:\n"
PACK_ROWS = 8  # rows per call that bf16 CPU weights are laid out for (see _pack_linears)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt


@dataclass(frozen=True)
class Segment:
    """Where one record's tokens after the shared prefix lie in a packed batch."""

    record: int  # index into the packed records
    row: int
    start: int
    end: int


@dataclass(frozen=True)
class Batch:
    """Records packed into rows behind one copy per row of their shared prefix."""

    input_ids: torch.Tensor  # (rows, width)
    position_ids: torch.Tensor  # each record's own positions (its prefix part: 0..shared-1)
    attention_mask: torch.Tensor  # (rows, 1, width, width) bool: own record + shared prefix
    targets: torch.Tensor  # the next token within the same record, IGNORE_INDEX where none/prompt
    tokens: int  # the records' tokens (prefix counted once per record, as unpacked)
    records: int
    shared: int  # shared prefix length
    segments: tuple[Segment, ...]


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, as the Xeons that host
    TDX guests have). Then a bf16 matmul runs several times faster than an fp32 one (one core
    of the development box: 277 vs 71 GFLOP/s); without it oneDNN emulates bf16 and gains
    little."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def select_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """auto: CUDA if present; bf16 where the device computes it natively (a CUDA GPU that
    supports it, a CPU with :func:`cpu_has_native_bf16`), else fp32. Both precisions run the
    same code: bf16 is autocast with the frozen base weights stored in bf16."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if precision == "auto":
        use_bf16 = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_has_native_bf16()
    else:
        use_bf16 = precision == "bf16"
    return Runtime(dev, torch.bfloat16 if use_bf16 else None)


def load_model(model_dir: str | Path, runtime: Runtime):
    """Load a Hugging Face causal LM and its tokenizer from a local directory (offline), with
    SDPA attention (the packed-sequence masks below rely on it or on eager attention)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if runtime.autocast_dtype == torch.bfloat16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), local_files_only=True, dtype=dtype, attn_implementation="sdpa"
    )
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


def pack_rows(lengths: Sequence[int], pack_length: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows of at most ``max(pack_length, longest)``
    tokens, first-fit decreasing (a record is never split)."""
    capacity = max(pack_length, max(lengths))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([i])
            free.append(capacity - lengths[i])
        else:
            rows[row].append(i)
            free[row] -= lengths[i]
    return rows


def shared_prefix_length(records: Sequence[Encoded]) -> int:
    """Tokens every record starts with that no record learns from: the longest common prefix,
    cut so that no prefix position predicts a response token (its target would differ between
    records). A chat template's system prompt and turn header are typically all of it."""
    first = records[0].input_ids
    n = min(len(r.input_ids) for r in records)
    for r in records:
        n = min(n, next(j for j, t in enumerate(r.labels) if t != IGNORE_INDEX) - 1)
        n = next((j for j in range(n) if r.input_ids[j] != first[j]), n)
    return max(n, 0)


def _plan_rows(records: Sequence[Encoded], pack_length: int) -> tuple[int, list[list[int]]]:
    """(shared prefix length, rows of record indices): each row at most ``pack_length`` tokens
    with its copy of the prefix."""
    shared = shared_prefix_length(records)
    rest = [len(r.input_ids) - shared for r in records]
    return shared, pack_rows(rest, max(pack_length - shared, 1))


def pack_batch(records: Sequence[Encoded], pack_length: int, pad_id: int) -> Batch:
    """Pack one step's records (see the module docstring)."""
    shared, rows = _plan_rows(records, pack_length)
    return _lay_out(records, rows, shared, pad_id)


def _lay_out(
    records: Sequence[Encoded], rows: Sequence[Sequence[int]], shared: int, pad_id: int
) -> Batch:
    """The tensors of ``rows`` (indices into ``records``), each behind one copy of the
    ``shared``-token prefix. Built on the CPU (pinned when CUDA is present)."""
    members = [i for row in rows for i in row]
    rest = {i: len(records[i].input_ids) - shared for i in members}
    width = shared + max(sum(rest[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    block = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    segments = []
    prefix = torch.tensor(records[members[0]].input_ids[:shared], dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, :shared] = prefix
        positions[j, :shared] = torch.arange(shared)
        block[j, :shared] = 0
        at = shared
        for i in row:
            r = records[i]
            n = rest[i]
            ids[j, at : at + n] = torch.tensor(r.input_ids[shared:])
            positions[j, at : at + n] = torch.arange(shared, shared + n)
            targets[j, at : at + n - 1] = torch.tensor(r.labels[shared + 1 :])
            block[j, at : at + n] = i + 1
            segments.append(Segment(i, j, at, at + n))
            at += n
    # query q may see key k <= q of its own block, and a record sees the shared prefix
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = block[:, :, None] == block[:, None, :]
    from_prefix = (block[:, None, :] == 0) & (block[:, :, None] > 0)
    mask = (causal & (same | from_prefix))[:, None]
    if torch.cuda.is_available():
        ids, positions, targets = ids.pin_memory(), positions.pin_memory(), targets.pin_memory()
        mask = mask.pin_memory()
    tokens = sum(len(records[i].input_ids) for i in members)
    return Batch(ids, positions, mask, targets, tokens, len(members), shared, tuple(segments))


def make_batches(
    encoded: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    *,
    pack_length: int,
    generator: torch.Generator,
) -> Iterator[Batch]:
    """Training batches: ``batch_size`` records each, in an order drawn from ``generator``,
    each batch packed on its own."""
    order = torch.randperm(len(encoded), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start : start + batch_size]]
        yield pack_batch(rows, pack_length, pad_id)


def eval_batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int, *, pack_length: int
) -> Iterator[Batch]:
    """Evaluation batches: all records packed at once, first-fit decreasing over the whole set
    (fewer rows and less padding than ``batch_size`` records at a time: the order of records
    does not change a held-out loss), then the rows split evenly into forwards of at most
    ``batch_size`` rows: never more tokens than a training step of full rows holds."""
    if not encoded:
        return
    shared, rows = _plan_rows(encoded, pack_length)
    forwards = math.ceil(len(rows) / batch_size)
    bounds = [round(k * len(rows) / forwards) for k in range(forwards + 1)]
    for start, end in itertools.pairwise(bounds):
        yield _lay_out(encoded, rows[start:end], shared, pad_id)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, chunk by chunk: the
    gradient for ``hidden`` is computed in the forward pass (softmax minus one-hot, times the
    weight), so no chunk's logits outlive it. ``weight`` is frozen (the LoRA setting)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad[start : start + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def _decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (hidden states) and the LM head of a causal LM, PEFT-wrapped or not.
    Refuses models whose logits are more than ``head(hidden)`` (scaled or soft-capped)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise ValueError(f"{config.model_type}: scaled or soft-capped logits are not supported")
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def summed_loss(model, batch: Batch, runtime: Runtime) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the batch's targets, number of targets)."""
    decoder, head = _decoder_and_head(model)
    ids = batch.input_ids.to(runtime.device, non_blocking=True)
    positions = batch.position_ids.to(runtime.device, non_blocking=True)
    mask = batch.attention_mask.to(runtime.device, non_blocking=True)
    targets = batch.targets.to(runtime.device, non_blocking=True)
    keep = targets != IGNORE_INDEX
    with runtime.autocast():
        hidden = decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        hidden, wanted = hidden[keep], targets[keep]
        # a frozen head (or no gradient wanted: evaluation) takes the chunked loss
        frozen = not head.weight.requires_grad or not torch.is_grad_enabled()
        if type(head) is torch.nn.Linear and head.bias is None and frozen:
            loss = _LinearCrossEntropy.apply(hidden, head.weight, wanted, LOSS_CHUNK)
        else:  # a trained or adapted head (e.g. LoRA on lm_head): let autograd see it
            logits = head(hidden).float()
            loss = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
    return loss, int(batch.targets.ne(IGNORE_INDEX).sum())


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


_Merged = list[tuple[LoraLayer, torch.nn.Parameter, torch.Tensor]]
_ON_INFERENCE_WEIGHTS: weakref.WeakSet = weakref.WeakSet()  # models inside inference_weights


def _merge_lora(model, merged: _Merged) -> None:
    """Merge each plain LoRA layer's active adapters into its base weight, rounding once:
    ``W + scaling * B @ A`` is summed in fp32 and stored in the base weight's dtype. Appends to
    ``merged`` what :func:`_unmerge_lora` puts back: the base weights' own tensors, not a
    subtraction (in bf16, ``W + D - D`` is not ``W``). Layers that are already merged, disabled
    or not plain LoRA (DoRA and other variants, a LoRA bias) keep running unmerged."""
    for layer in model.modules():
        if (
            not isinstance(layer, LoraLayer)
            or layer.merged
            or layer.disable_adapters
            or any(layer.lora_variant.get(a) or layer.lora_bias.get(a) for a in layer.lora_A)
        ):
            continue
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]
        if not adapters:
            continue
        weight = layer.get_base_layer().weight
        base = weight.data
        delta = sum(layer.get_delta_weight(a).float() for a in adapters)
        merged.append((layer, weight, base))
        weight.data = (base.float() + delta).to(base.dtype)
        layer.merged_adapters = adapters  # PEFT's forward now runs the base layer alone


def _unmerge_lora(merged: _Merged) -> None:
    for layer, weight, base in merged:
        weight.data = base
        layer.merged_adapters = []


def _packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor):
    return torch.ops.mkldnn._linear_pointwise(
        x.to(torch.bfloat16).contiguous(), packed, bias, "none", [], ""
    )


def _pack_linears(model, patched: list[torch.nn.Linear]) -> None:
    """Give every bf16 ``nn.Linear`` a forward over its weight re-laid once in oneDNN's blocked
    layout. A plain bf16 linear re-lays the weight on every call, which costs a decoding step as
    much as the multiply (one thread, SmolLM2's 576x1536 at 3 rows: 80 vs 160 us). The layout
    is the one oneDNN picks for ``PACK_ROWS`` rows per call; it serves any number of rows, and
    its products here equal the plain linear's bit for bit (a layout for one row does not: it
    sums in another order). Linear layers in another dtype (the fp32 LoRA matrices) keep their
    forward. Appends the patched layers to ``patched``."""
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16:
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), PACK_ROWS)
            bias = None if module.bias is None else module.bias.detach()
            patched.append(module)
            module.forward = functools.partial(_packed_linear, packed, bias)


@contextlib.contextmanager
def inference_weights(model, runtime: Runtime) -> Iterator[None]:
    """Faster weights for a model in eval mode, the model's own put back bit for bit on exit.

    - LoRA merged into the base projections (:func:`_merge_lora`): one matmul per projection
      instead of the base's, the adapter's two and their casts. Decoding with 120 LoRA-wrapped
      projections cost 4.1 CPU-s against 2.5 for the base model (SmolLM2, bf16). In fp32 the
      merged product equals the unmerged one to rounding; in bf16 the merged weight is rounded
      to bf16, where unmerged only the adapter's output is, so held-out losses agree to under
      1e-3 (relative; 5e-4 on SmolLM2) and a greedy answer can take another word after a few
      dozen tokens. The adapter is only read, so what is saved afterwards is what training
      produced.
    - On a CPU in bf16 (oneDNN present), every bf16 linear runs on a pre-laid weight
      (:func:`_pack_linears`).

    Dropout is skipped by a merged layer, so this is for eval mode only. Nested use is a no-op,
    so an assessment can merge and lay out once around :func:`evaluate` and :func:`answer`
    (each ~0.2 CPU-s on SmolLM2)."""
    if model.training:
        raise RuntimeError(
            "inference_weights needs the model in eval mode (dropout is merged away)"
        )
    if model in _ON_INFERENCE_WEIGHTS:
        yield
        return
    pack = (
        runtime.device.type == "cpu"
        and runtime.autocast_dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
    )
    merged: _Merged = []
    patched: list[torch.nn.Linear] = []
    _ON_INFERENCE_WEIGHTS.add(model)
    try:
        if isinstance(model, PeftModel):
            _merge_lora(model, merged)
        if pack:
            _pack_linears(model, patched)
        yield
    finally:
        for module in patched:
            del module.forward  # back to nn.Linear.forward
        _unmerge_lora(merged)
        _ON_INFERENCE_WEIGHTS.discard(model)


@torch.no_grad()
def evaluate(
    model,
    encoded: Sequence[Encoded],
    runtime: Runtime,
    *,
    batch_size: int,
    pad_id: int,
    pack_length: int,
) -> EvalResult:
    """Token-weighted mean cross-entropy over all response tokens, and its perplexity."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=runtime.device)
    count = 0
    with inference_weights(model, runtime):
        for batch in eval_batches(encoded, batch_size, pad_id, pack_length=pack_length):
            loss, n = summed_loss(model, batch, runtime)
            total += loss
            count += n
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
        batches = make_batches(
            encoded,
            settings.batch_size,
            pad_id,
            pack_length=settings.pack_length,
            generator=generator,
        )
        for batch in batches:
            summed, targets = summed_loss(model, batch, runtime)
            loss = summed / max(targets, 1)  # mean per response token, as a padded loop's loss
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
    """Greedy answers, all prompts in one left-padded batch decoded with the KV cache, on
    :func:`inference_weights`."""
    if not instructions:
        return []
    was_training = model.training
    model.eval()
    prompts = [prompt_ids(tokenizer, q) for q in instructions]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, width - len(p) :] = torch.tensor(p)
        mask[j, width - len(p) :] = 1
    with inference_weights(model, runtime), runtime.autocast():
        gen = model.generate(
            input_ids=ids.to(runtime.device),
            attention_mask=mask.to(runtime.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    model.train(was_training)
    return [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in gen]


def count_parameters(model) -> tuple[int, int]:
    """(total, trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
