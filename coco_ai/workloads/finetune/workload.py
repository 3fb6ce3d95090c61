"""The confidential fine-tune: keys → data → LoRA → encrypted, signed adapter in staging.

Runs inside the TEE (or beside the guest-components emulator). Secrets — the data key, the
checkpoint key, the TEE private key, the plaintext data and adapter — stay in this process's
memory or in a private temp dir (tmpfs when there is one) that is removed before exit. What
leaves is ciphertext, the manifest, its signature and the EAR token. Any failure raises
:class:`WorkloadError` before anything is uploaded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from coco_ai.workloads.dataset import DatasetError, Example, split_examples
from coco_ai.workloads.finetune.config import FinetuneConfig
from coco_ai.workloads.finetune.report import (
    ADAPTER_DIR,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    REPORT_FILE,
    write_loss_curve,
    write_metrics,
    write_report,
)
from coco_ai.workloads.tee import (  # noqa: F401 (the exit codes are this module's API too)
    EXIT_BASE_MODEL,
    EXIT_CONFIG,
    EXIT_DATASET,
    EXIT_KEY_RELEASE,
    EXIT_RESOURCES,
    EXIT_STAGING,
    TeeWorkload,
    WorkloadError,
    WorkloadLog,
    private_tmpdir,
    sha256_digest,
    split_object_uri,
    with_retries,
)


@dataclass(frozen=True)
class RunResult:
    manifest_digest: str
    checkpoint_id: str
    staging_uri: str
    metrics: dict[str, float | int]
    timings: dict[str, float]  # wall seconds per phase (see FinetuneWorkload.run)
    cpu_timings: dict[str, float]  # process CPU seconds per phase


@dataclass(frozen=True)
class _Assessment:
    eval: Any  # train.EvalResult (the training core is imported lazily)
    answers: list[str]


@dataclass(frozen=True)
class _Outcome:
    before: _Assessment
    after: _Assessment
    train: Any  # train.TrainResult
    train_examples: int
    eval_examples: int


class _Log(WorkloadLog):
    def __init__(self, out: TextIO) -> None:
        super().__init__(out, "finetune")


def config_bytes(config: FinetuneConfig) -> bytes:
    """The RFC 8785 canonical JSON of the validated config (defaults filled): the public
    `training_config.json` beside the manifest."""
    from coco_ai.kbs.wire import canonical_json

    return canonical_json(config.to_dict())


def config_digest(config: FinetuneConfig) -> str:
    """``sha256:`` over :func:`config_bytes` (the manifest's training_config_digest)."""
    return sha256_digest(config_bytes(config))


class FinetuneWorkload(TeeWorkload):
    """One run of the workload. ``guest`` is a ``GuestClient`` (injected in tests)."""

    NAME = "finetune"
    config: FinetuneConfig

    # ---- steps --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.config
        phase = self._phase
        with ExitStack() as stack:
            guest = self._guest_client(stack)
            with phase("staging_check"):
                self._check_staging()
            with phase("memory_check"):  # before any key is released or input loaded
                self._check_memory(
                    {"data set": cfg.dataset.uri, "base model": cfg.base_model.path},
                    cfg.tee_memory_bytes,
                )
            with phase("keys"):  # the first key request attests
                data_key = self._fetch_key(guest, cfg.dataset.key_uri, "data-set key")
                checkpoint_key = self._run_key(guest)
            with phase("dataset"):
                examples, dataset_digest = self._load_dataset(cfg.dataset, data_key)
                del data_key
                train_set, eval_set = self._split(examples)

            plain = private_tmpdir("coco-ai-finetune-")
            stack.callback(shutil.rmtree, plain, ignore_errors=True)
            with phase("base_model_check"):
                base_dir = self._base_model(plain / "base")
            outputs = plain / "checkpoint"
            outputs.mkdir()
            metrics = self._train(base_dir, train_set, eval_set, outputs, dataset_digest)

            encrypted = Path(tempfile.mkdtemp(prefix="coco-ai-checkpoint-"))
            stack.callback(shutil.rmtree, encrypted, ignore_errors=True)
            # The manifest's creation time must fall inside the token's validity, so the token
            # (which the guest renews near expiry, possibly re-attesting) is fetched right before
            # encrypting, not after a long training run.
            with phase("attest"):
                token, tee_key = self._attestation_token(guest)
            with phase("encrypt"):
                manifest = self._encrypt(
                    outputs, encrypted, checkpoint_key, dataset_digest, metrics
                )
                del checkpoint_key
                shutil.rmtree(outputs)  # plaintext gone before anything leaves the TEE
            with phase("sign"):
                self._sign(manifest, encrypted, token, tee_key)
                del tee_key
            with phase("upload"):
                self._upload(encrypted)
        self.log("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        self.log(f"done: checkpoint {manifest.checkpoint_id} in {cfg.staging_uri}")
        return RunResult(
            manifest.digest(),
            manifest.checkpoint_id,
            cfg.staging_uri,
            manifest.metrics,
            dict(self.timings),
            dict(self.cpu_timings),
        )

    def _split(self, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        t = self.config.training
        try:
            train_set, eval_set = split_examples(examples, t.eval_fraction, t.seed)
        except DatasetError as exc:
            raise WorkloadError(
                f"data set {self.config.dataset.uri}: {exc}", EXIT_DATASET
            ) from None
        self.log(f"split: {len(train_set)} train / {len(eval_set)} eval (held-out phrasings)")
        return train_set, eval_set

    def _base_model(self, scratch: Path) -> Path:
        """The base model directory, downloaded first if remote; its digest must match."""
        cfg = self.config.base_model
        return self._pinned_model(cfg.path, cfg.digest, scratch, "base model")

    def _train(
        self,
        base_dir: Path,
        train_set: list[Example],
        eval_set: list[Example],
        outputs: Path,
        dataset_digest: str,
    ) -> dict[str, Any]:
        """Load, assess, LoRA-train, assess again, write the plaintext outputs; the metrics."""
        from coco_ai.workloads.finetune import train as core

        t = self.config.training
        _quiet_transformers()
        try:
            runtime = core.select_runtime(t.device, t.precision)
        except RuntimeError as exc:
            raise WorkloadError(f"training.device: {exc}", EXIT_CONFIG) from None
        model, tokenizer = self._load_model(base_dir, runtime)
        train_enc, eval_enc = self._encode(tokenizer, train_set, eval_set)
        self.log(f"device {runtime.device} ({runtime.precision})")
        questions = [e.instruction for e in eval_set[: t.sample_questions]]
        before = self._assess(model, tokenizer, eval_enc, questions, runtime, "before")
        model = self._add_lora(model)
        with self._phase("train"):
            result = core.train(
                model, train_enc, t, runtime, pad_id=tokenizer.pad_token_id, progress=self._progress
            )
        after = self._assess(model, tokenizer, eval_enc, questions, runtime, "after")
        return self._write_outputs(
            outputs,
            model,
            runtime,
            _Outcome(before, after, result, len(train_enc), len(eval_enc)),
            samples=[
                {"question": q, "expected": e.response, "before": b, "after": a}
                for q, e, b, a in zip(
                    questions,
                    eval_set[: len(questions)],
                    before.answers,
                    after.answers,
                    strict=True,
                )
            ],
            dataset_digest=dataset_digest,
        )

    def _load_model(self, base_dir: Path, runtime):
        from coco_ai.workloads.finetune import train as core

        try:
            with self._phase("model_load"):
                return core.load_model(base_dir, runtime)
        except (OSError, ValueError) as exc:
            raise WorkloadError(
                f"base model {self.config.base_model.path} cannot be loaded: "
                f"{str(exc).splitlines()[0]}",
                EXIT_BASE_MODEL,
            ) from None

    def _encode(self, tokenizer, train_set: list[Example], eval_set: list[Example]):
        from coco_ai.workloads.finetune import train as core

        max_len = self.config.training.max_seq_length
        train_enc = core.encode_examples(tokenizer, train_set, max_len)
        eval_enc = core.encode_examples(tokenizer, eval_set, max_len)
        if not train_enc or not eval_enc:
            raise WorkloadError(
                f"training.max_seq_length {max_len} leaves no response tokens in the "
                "train or eval split",
                EXIT_DATASET,
            )
        return train_enc, eval_enc

    def _assess(self, model, tokenizer, eval_enc, questions: list[str], runtime, when: str):
        """Held-out loss and greedy answers to the sample questions."""
        from coco_ai.workloads.finetune import train as core

        t = self.config.training
        model.eval()
        with ExitStack() as weights:
            with self._phase("evaluate"):  # merged and laid out once, for both phases
                weights.enter_context(core.inference_weights(model, runtime))
                result = core.evaluate(
                    model,
                    eval_enc,
                    runtime,
                    batch_size=t.batch_size,
                    pad_id=tokenizer.pad_token_id,
                    pack_length=t.pack_length,
                )
            self.log(f"eval {when}: loss {result.loss:.4f} perplexity {result.perplexity:.2f}")
            with self._phase("samples"):
                answers = core.answer(
                    model, tokenizer, questions, runtime, max_new_tokens=t.max_new_tokens
                )
        return _Assessment(result, answers)

    def _add_lora(self, model):
        from coco_ai.workloads.finetune import train as core

        try:
            model = core.add_lora(model, self.config.lora, self.config.training.seed)
        except ValueError as exc:
            raise WorkloadError(str(exc).splitlines()[0], EXIT_CONFIG) from None
        total, trainable = core.count_parameters(model)
        self.log(f"LoRA: {trainable} trainable of {total} parameters")
        return model

    def _write_outputs(
        self,
        outputs: Path,
        model,
        runtime,
        outcome: _Outcome,
        *,
        samples: list[dict[str, str]],
        dataset_digest: str,
    ) -> dict[str, Any]:
        """The adapter, loss curve, metrics.json and report.md (plaintext, in the private dir)."""
        from coco_ai.workloads.finetune import train as core

        cfg = self.config
        start = time.perf_counter()
        # the adapter names the base model by its run-level reference, not a temp path
        model.peft_config["default"].base_model_name_or_path = cfg.base_model.path
        model.save_pretrained(outputs / ADAPTER_DIR)
        total_params, trainable = core.count_parameters(model)
        before, after, result = outcome.before.eval, outcome.after.eval, outcome.train
        metrics: dict[str, Any] = {
            "eval_loss_before": before.loss,
            "eval_perplexity_before": before.perplexity,
            "eval_loss": after.loss,
            "eval_perplexity": after.perplexity,
            "eval_tokens": after.tokens,
            "train_examples": outcome.train_examples,
            "eval_examples": outcome.eval_examples,
            "train_steps": result.steps,
            "train_tokens": result.tokens,
            "train_seconds": result.seconds,
            "train_tokens_per_s": result.tokens_per_s,
            "train_loss_first": result.step_losses[0],
            "train_loss_last": result.step_losses[-1],
            "trainable_parameters": trainable,
            "total_parameters": total_params,
        }
        where = {"device": runtime.device.type, "precision": runtime.precision}
        write_loss_curve(outputs / LOSS_CURVE_FILE, result.step_losses, before.loss, after.loss)
        write_metrics(
            outputs / METRICS_FILE, {**metrics, **where, "step_losses": result.step_losses}
        )
        write_report(
            outputs / REPORT_FILE,
            run_id=cfg.run_id,
            provenance={
                "base model": f"{cfg.base_model.path} ({cfg.base_model.digest})",
                "data set": f"{cfg.dataset.uri} ({dataset_digest})",
                "config digest": config_digest(cfg),
            },
            metrics={**metrics, **where},
            samples=samples,
        )
        self.timings["write_outputs"] = time.perf_counter() - start
        return metrics

    def _progress(self, p) -> None:
        eta = time.strftime("%H:%M:%S", time.gmtime(p.eta_s))
        self.log(
            f"step {p.step}/{p.total_steps} epoch {p.epoch} loss {p.loss:.4f} "
            f"tokens/s {p.tokens_per_s:.0f} eta {eta}"
        )

    def _encrypt(self, outputs: Path, dst: Path, key: bytes, dataset_digest: str, metrics):
        from coco_ai.crypto import encrypt_checkpoint
        from coco_ai.crypto.manifest import CONFIG_FILE

        cfg = self.config
        manifest = encrypt_checkpoint(
            str(outputs),
            str(dst),
            kek=key,
            key_uri=cfg.checkpoint_key_uri,
            run_id=cfg.run_id,
            meta={
                "base_model_digest": cfg.base_model.digest,
                "dataset_digest": dataset_digest,
                "training_config_digest": config_digest(cfg),
                "metrics": metrics,
            },
        )
        # public beside the manifest, so that verifiers can judge the recipe the digest names
        (dst / CONFIG_FILE).write_bytes(config_bytes(cfg))
        self.log(f"adapter encrypted: {len(manifest.files)} files under {cfg.checkpoint_key_uri}")
        return manifest


def _quiet_transformers() -> None:
    """Progress bars and load reports go to stderr and say nothing the log needs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    # PEFT looks for a config beside base_model_name_or_path, a URI here; vocab is unchanged
    warnings.filterwarnings("ignore", message="Could not find a config file", module=r"peft\.")
