"""The confidential fine-tune: keys → data → LoRA → encrypted, signed adapter in staging.

Runs inside the TEE (or beside the guest-components emulator). Secrets — the data key, the
checkpoint key, the TEE private key, the plaintext data and adapter — stay in this process's
memory or in a private temp dir (tmpfs when there is one) that is removed before exit. What
leaves is ciphertext, the manifest, its signature and the EAR token. Any failure raises
:class:`WorkloadError` before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from coco_ai.workloads.dataset import DatasetError, Example, parse_jsonl, split_examples
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
from coco_ai.workloads.models import ModelError, model_digest

# aad context every encrypted data set is bound to (with its key URI): a checkpoint file or any
# other blob under the same key cannot be passed off as a data set
DATASET_AAD = {"type": "coco-ai/dataset-jsonl", "version": 1}

EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_KEY_RELEASE = 3
EXIT_DATASET = 4
EXIT_BASE_MODEL = 5
EXIT_STAGING = 6
EXIT_ATTESTATION = 7

T = TypeVar("T")


class WorkloadError(Exception):
    """A failure with a one-line, secret-free reason and the process exit code for it."""

    def __init__(self, reason: str, exit_code: int = EXIT_INTERNAL) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


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


class _Log:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, message: str) -> None:
        print(f"[finetune] {message}", file=self._out, flush=True)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_bytes(config: FinetuneConfig) -> bytes:
    """The RFC 8785 canonical JSON of the validated config (defaults filled): the public
    `training_config.json` beside the manifest."""
    from coco_ai.kbs.wire import canonical_json

    return canonical_json(config.to_dict())


def config_digest(config: FinetuneConfig) -> str:
    """``sha256:`` over :func:`config_bytes` (the manifest's training_config_digest)."""
    return _sha256(config_bytes(config))


def private_tmpdir(prefix: str) -> Path:
    """A 0700 temp dir, on tmpfs (/dev/shm) when available so plaintext never touches a disk."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a fresh 0700 dir; that is the point)
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def with_retries(
    what: str,
    fn: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` up to ``attempts`` times with exponential backoff; then fail with the cause."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # storage back-ends raise many kinds; all are retried alike
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if attempt == attempts:
                raise WorkloadError(
                    f"{what} failed after {attempts} attempts: {cause}", EXIT_STAGING
                ) from None
            delay = backoff_s * 2 ** (attempt - 1)
            log(f"{what} failed (attempt {attempt}/{attempts}: {cause}); retrying in {delay:.1f} s")
            sleep(delay)
    raise AssertionError("unreachable")


def _split_object_uri(uri: str) -> tuple[str, str]:
    from coco_ai.storage import split_object_uri

    try:
        return split_object_uri(uri)
    except ValueError as exc:
        raise WorkloadError(str(exc), EXIT_CONFIG) from None


def _is_remote(path: str) -> bool:
    return "://" in path


class FinetuneWorkload:
    """One run of the workload. ``guest`` is a ``GuestClient`` (injected in tests)."""

    def __init__(self, config: FinetuneConfig, *, guest=None, out: TextIO | None = None) -> None:
        self.config = config
        self._guest = guest
        self.log = _Log(out or sys.stdout)
        self.timings: dict[str, float] = {}  # wall seconds per phase, in order
        self.cpu_timings: dict[str, float] = {}  # process CPU seconds per phase

    # ---- steps --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.config
        phase = self._phase
        with ExitStack() as stack:
            guest = self._guest
            if guest is None:
                from coco_ai.guest.client import GuestClient

                guest = stack.enter_context(GuestClient(cfg.guest_api_url))
            with phase("staging_check"):
                self._check_staging()
            with phase("keys"):  # the first key request attests
                data_key = self._fetch_key(guest, cfg.dataset.key_uri, "data-set key")
                checkpoint_key = self._run_key(guest)
            with phase("dataset"):
                examples, dataset_digest = self._load_dataset(data_key)
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

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.cpu_timings[name] = (
                self.cpu_timings.get(name, 0.0) + time.process_time() - cpu_start
            )

    def _check_staging(self) -> None:
        """Fail fast (before any key is released or any compute spent) if staging is unreachable
        or already holds a checkpoint."""
        from coco_ai.crypto.manifest import MANIFEST_FILE
        from coco_ai.storage import open_store

        cfg = self.config

        def probe() -> bool:
            # size(), not exists(): fsspec's exists/isfile answer False when the store is down
            try:
                open_store(cfg.staging_uri).size(MANIFEST_FILE)
            except FileNotFoundError:
                return False
            return True

        occupied = with_retries(
            f"staging store {cfg.staging_uri}",
            probe,
            attempts=cfg.store_attempts,
            backoff_s=cfg.store_backoff_s,
            log=self.log,
        )
        if occupied:
            raise WorkloadError(
                f"staging {cfg.staging_uri} already holds a checkpoint; refusing to overwrite",
                EXIT_STAGING,
            )

    def _fetch_key(self, guest, uri: str, what: str, *, size: int | None = 32) -> bytes:
        """A resource from the confidential data hub (``size``: the exact length it must have)."""
        from coco_ai.guest.client import GuestError

        try:
            key = guest.get_resource(uri)
        except GuestError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "no reason given"
            # an outage is not a denial: say which, so an operator retries or fixes the policy
            verb = "denied" if exc.policy_denied else "failed"
            raise WorkloadError(
                f"key release {verb} for the {what} {uri}: {detail}", EXIT_KEY_RELEASE
            ) from None
        if size is not None and len(key) != size:
            raise WorkloadError(
                f"the {what} {uri} is {len(key)} bytes; a {size}-byte AES-256 key is required",
                EXIT_KEY_RELEASE,
            )
        self.log(f"{what} released: {uri}")
        return key

    def _run_key(self, guest) -> bytes:
        """The run's checkpoint key: the run's grant must name this run and this TEE's own
        initdata (as its attestation token reports it); then the key is derived from the data
        owner's root (coco_ai.run_keys)."""
        from coco_ai.kbs.ear import unverified_claims
        from coco_ai.kbs.errors import KbsError
        from coco_ai.run_keys import Grant, RunKeyError, check_grant, derive_run_key, grant_path

        cfg = self.config
        grant_uri = grant_path(cfg.run_id).uri()
        try:
            grant = Grant.from_bytes(self._fetch_key(guest, grant_uri, "grant", size=None))
            token, _ = self._attestation_token(guest)
            claims = unverified_claims(token)  # this TEE's own token, fresh from its AA
            check_grant(grant, run_id=cfg.run_id, initdata_matches=claims.carries_init_data)
            root = self._fetch_key(guest, cfg.run_key_root_uri, "run-key root")
            key = derive_run_key(root, cfg.run_id)
        except (RunKeyError, KbsError) as exc:
            raise WorkloadError(f"run key for {cfg.run_id}: {exc}", EXIT_KEY_RELEASE) from None
        self.log(f"checkpoint key {cfg.checkpoint_key_uri} derived (grant {grant_uri})")
        return key

    def _load_dataset(self, data_key: bytes) -> tuple[list[Example], str]:
        from coco_ai.crypto import decrypt_blob
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.storage import open_store

        cfg = self.config
        parent, name = _split_object_uri(cfg.dataset.uri)
        blob = with_retries(
            f"reading data set {cfg.dataset.uri}",
            lambda: open_store(parent).read_bytes(name),
            attempts=cfg.store_attempts,
            backoff_s=cfg.store_backoff_s,
            log=self.log,
        )
        digest = _sha256(blob)
        try:
            plaintext = decrypt_blob(
                blob, kek=data_key, aad_context=DATASET_AAD, key_uri=cfg.dataset.key_uri
            )
        except CheckpointError as exc:
            raise WorkloadError(
                f"data set {cfg.dataset.uri} does not decrypt under {cfg.dataset.key_uri} "
                f"(wrong key or tampered): {type(exc).__name__}: {exc}",
                EXIT_DATASET,
            ) from None
        try:
            examples = parse_jsonl(plaintext)
        except DatasetError as exc:
            raise WorkloadError(f"data set {cfg.dataset.uri}: {exc}", EXIT_DATASET) from None
        self.log(f"data set {digest}: {len(examples)} records")
        return examples, digest

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
        if _is_remote(cfg.path) and not cfg.path.startswith("file://"):
            from coco_ai.storage import open_store

            parent, dirname = _split_object_uri(cfg.path)

            def download() -> Path:  # a flat Hugging Face model directory
                store = open_store(parent)
                names = store.list(dirname)
                if not names:
                    raise FileNotFoundError(f"no files under {cfg.path}")
                scratch.mkdir(parents=True, exist_ok=True)
                for name in names:
                    (scratch / name.rpartition("/")[2]).write_bytes(store.read_bytes(name))
                return scratch

            model_dir = with_retries(
                f"downloading base model {cfg.path}",
                download,
                attempts=self.config.store_attempts,
                backoff_s=self.config.store_backoff_s,
                log=self.log,
            )
        else:
            model_dir = Path(cfg.path.removeprefix("file://"))
        try:
            actual = model_digest(model_dir)
        except ModelError as exc:
            raise WorkloadError(f"base model: {exc}", EXIT_BASE_MODEL) from None
        if actual != cfg.digest:
            raise WorkloadError(
                f"base model {cfg.path} has digest {actual}, but the run names {cfg.digest}",
                EXIT_BASE_MODEL,
            )
        self.log(f"base model {cfg.digest} verified")
        return model_dir

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
        with self._phase("evaluate"):
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

    def _attestation_token(self, guest) -> tuple[str, bytes]:
        from coco_ai.guest.client import GuestError

        try:
            return guest.get_token()
        except GuestError as exc:
            raise WorkloadError(
                f"attestation token unavailable from {self.config.guest_api_url}: {exc}",
                EXIT_ATTESTATION,
            ) from None

    def _sign(self, manifest, dst: Path, token: str, tee_key: bytes) -> None:
        from coco_ai.crypto import sign_manifest
        from coco_ai.crypto.errors import CheckpointError

        try:
            sign_manifest(manifest, tee_key, token, dst_dir=str(dst))
        except CheckpointError as exc:
            raise WorkloadError(f"signing the manifest failed: {exc}", EXIT_ATTESTATION) from None
        self.log(f"manifest {manifest.digest()} signed with the attested TEE key")

    def _upload(self, src: Path) -> None:
        from coco_ai.crypto.transfer import upload_checkpoint

        cfg = self.config
        with_retries(
            f"upload to staging {cfg.staging_uri}",
            lambda: upload_checkpoint(str(src), cfg.staging_uri),
            attempts=cfg.store_attempts,
            backoff_s=cfg.store_backoff_s,
            log=self.log,
        )
        self.log(f"uploaded to {cfg.staging_uri}")


def _quiet_transformers() -> None:
    """Progress bars and load reports go to stderr and say nothing the log needs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    # PEFT looks for a config beside base_model_name_or_path, a URI here; vocab is unchanged
    warnings.filterwarnings("ignore", message="Could not find a config file", module=r"peft\.")
