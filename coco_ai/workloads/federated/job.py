"""FedAvg over PEFT LoRA adapter weights on NVFlare: the aggregator's persistor and each
participant's trainer, as installed code (a confidential job brings none: NVFlare's CCManager
refuses BYOC jobs, and the approved image is what the attestation binds).

Only the adapter travels: the persistor draws the initial LoRA weights from the base model (the
same seed everywhere), the trainer loads them into its own copy of the base model, trains
``local_steps`` on its own data and returns the new adapter weights with its step count, and
NVFlare's weighted aggregator averages them. Training, evaluation and the adapter come from
coco_ai.workloads.finetune.train, the fine-tune's own code.

Each participant reads its examples from ``<data_dir>/<site name>.jsonl`` (the data set's JSON
Lines format), and holds out phrasings for evaluation with the data set's own split.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import (
    ModelLearnable,
    ModelLearnableKey,
    make_model_learnable,
)
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants

from coco_ai.federated.startup_kit import DROPPED_SITE_GUARD_CLASS

#: the job's installed classes (a confidential job brings none: no BYOC)
PERSISTOR_CLASS = f"{__name__}.LoraAdapterPersistor"
TRAINER_CLASS = f"{__name__}.LoraTrainer"
UPDATE_CHECK_CLASS = f"{__name__}.AdapterUpdateCheck"
JOB_CLASSES = (PERSISTOR_CLASS, TRAINER_CLASS, UPDATE_CHECK_CLASS)
GLOBAL_ADAPTER_FILE = "global_adapter.npz"
#: Meta key of a participant's result: its mean eval loss on its own held-out phrasings.
LOCAL_EVAL_LOSS = "local_eval_loss"
#: Meta key of a participant's result: the digest of the encrypted data set it trains on, as
#: ``<data_dir>/<site>.digest`` names it (written by the participant's workload).
DATASET_DIGEST = "dataset_digest"
#: The aggregator's record of every update it accepted (JSON Lines, in ``record_dir``).
UPDATES_RECORD = "updates.jsonl"
#: ... and of every update it refused.
REFUSED_RECORD = "refused.jsonl"


def _in_workspace(path: str, fl_ctx: FLContext) -> Path:
    """``path``, relative paths taken from the site's NVFlare workspace root: the job is the
    same for every site, while each site's TEE keeps its model and data in its own workspace."""
    resolved = Path(path)
    if resolved.is_absolute():
        return resolved
    return Path(fl_ctx.get_engine().get_workspace().get_root_dir()) / resolved


def _append_record(record_dir: str | None, name: str, entry: dict[str, Any]) -> None:
    if record_dir is None:
        return
    import json

    directory = Path(record_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / name).open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def _lora_settings(r: int, alpha: int, target_modules: Sequence[str]):
    from coco_ai.workloads.finetune.config import LoraSettings

    return LoraSettings(r=r, alpha=alpha, dropout=0.0, target_modules=tuple(target_modules))


def adapter_model(model_dir: str, r: int, alpha: int, target_modules: Sequence[str], seed: int):
    """(PEFT model with a fresh adapter, tokenizer, runtime) on CPU in fp32."""
    from coco_ai.workloads.finetune.train import add_lora, load_model, select_runtime

    runtime = select_runtime("cpu", "fp32")
    model, tokenizer = load_model(model_dir, runtime)
    return add_lora(model, _lora_settings(r, alpha, target_modules), seed), tokenizer, runtime


def adapter_weights(model) -> dict[str, np.ndarray]:
    """The adapter's tensors (PEFT's own naming), as float32 NumPy arrays."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().cpu().float().numpy().copy()
        for k, v in get_peft_model_state_dict(model).items()
    }


def load_adapter_weights(model, weights: dict[str, Any]) -> None:
    """Set the adapter to ``weights``: exactly the adapter's names and shapes, finite values."""
    import torch
    from peft import set_peft_model_state_dict

    expected = {k: tuple(v.shape) for k, v in adapter_weights(model).items()}
    got = {k: tuple(np.shape(v)) for k, v in weights.items()}
    if got != expected:
        raise ValueError("global adapter does not have this model's adapter names and shapes")
    if not all(np.isfinite(np.asarray(v)).all() for v in weights.values()):
        raise ValueError("global adapter holds NaN or Inf")
    set_peft_model_state_dict(
        model, {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
    )


class LoraAdapterPersistor(ModelPersistor):
    """The aggregator's global adapter: initial LoRA weights drawn from the base model, each
    round's average saved as ``<output_dir>/global_adapter.npz`` (NVFlare removes the job's run
    directory when the job ends; in the TEE ``output_dir`` is private memory, encrypted before
    anything leaves)."""

    def __init__(
        self,
        model_dir: str,
        output_dir: str,
        lora_r: int = 8,
        lora_alpha: int = 16,
        target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.output_dir = output_dir
        self.lora = (lora_r, lora_alpha, tuple(target_modules), seed)

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        r, alpha, targets, seed = self.lora
        model, _, _ = adapter_model(self.model_dir, r, alpha, targets, seed)
        return make_model_learnable(adapter_weights(model), {})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        partial = out / (GLOBAL_ADAPTER_FILE + ".partial")
        with partial.open("wb") as fh:
            np.savez(fh, **model[ModelLearnableKey.WEIGHTS])
        partial.replace(out / GLOBAL_ADAPTER_FILE)


class LoraTrainer(Executor):
    """A participant: trains the global adapter ``local_steps`` on its own data per round."""

    def __init__(
        self,
        model_dir: str,
        data_dir: str,
        local_steps: int = 4,
        batch_size: int = 8,
        learning_rate: float = 2e-3,
        lora_r: int = 8,
        lora_alpha: int = 16,
        target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        seed: int = 0,
        train_task_name: str = AppConstants.TASK_TRAIN,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.data_dir = data_dir
        self.local_steps = local_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lora = (lora_r, lora_alpha, tuple(target_modules), seed)
        self.train_task_name = train_task_name
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _setup(self, fl_ctx: FLContext) -> dict[str, Any]:
        from coco_ai.workloads.dataset import parse_jsonl, split_examples
        from coco_ai.workloads.finetune.train import encode_examples

        site = fl_ctx.get_identity_name()
        r, alpha, targets, seed = self.lora
        model_dir = _in_workspace(self.model_dir, fl_ctx)
        model, tokenizer, runtime = adapter_model(str(model_dir), r, alpha, targets, seed)
        data_dir = _in_workspace(self.data_dir, fl_ctx)
        examples = parse_jsonl((data_dir / f"{site}.jsonl").read_bytes())
        digest_file = data_dir / f"{site}.digest"
        train, held = split_examples(examples, 0.2, seed)
        return {
            "model": model,
            "runtime": runtime,
            "pad_id": tokenizer.pad_token_id,
            "train": encode_examples(tokenizer, train, 256),
            "eval": encode_examples(tokenizer, held, 256),
            "dataset_digest": digest_file.read_text().strip() if digest_file.is_file() else None,
        }

    def execute(
        self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        if task_name != self.train_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        from coco_ai.workloads.finetune.config import TrainingSettings
        from coco_ai.workloads.finetune.train import evaluate, train

        with self._lock:
            if self._state is None:
                self._state = self._setup(fl_ctx)
            state = self._state
            try:
                dxo = from_shareable(shareable)
                load_adapter_weights(state["model"], dxo.data)
            except ValueError as exc:
                self.log_error(fl_ctx, f"refusing the global adapter: {exc}")
                return make_reply(ReturnCode.BAD_TASK_DATA)
            settings = TrainingSettings(
                max_steps=self.local_steps,
                epochs=max(1, self.local_steps),
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                seed=self.lora[3] + shareable.get_header(AppConstants.CURRENT_ROUND, 0),
                device="cpu",
                precision="fp32",
            )
            result = train(
                state["model"], state["train"], settings, state["runtime"], pad_id=state["pad_id"]
            )
            local = evaluate(
                state["model"],
                state["eval"],
                state["runtime"],
                batch_size=self.batch_size,
                pad_id=state["pad_id"],
                pack_length=256,
            )
            self.log_info(
                fl_ctx,
                f"round {shareable.get_header(AppConstants.CURRENT_ROUND)}: {result.steps} steps, "
                f"last loss {result.step_losses[-1]:.4f}, local eval loss {local.loss:.4f}",
            )
            meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: result.steps, LOCAL_EVAL_LOSS: local.loss}
            if state["dataset_digest"]:
                meta[DATASET_DIGEST] = state["dataset_digest"]
            out = DXO(DataKind.WEIGHTS, data=adapter_weights(state["model"]), meta=meta)
            return out.to_shareable()


def update_digest(weights: dict[str, Any]) -> str:
    """``sha256:`` over an update's tensor names, shapes and float32 bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(np.asarray(weights[name], dtype=np.float32))
        h.update(f"{name}\0{array.shape}\0".encode())
        h.update(array.tobytes())
    return "sha256:" + h.hexdigest()


class AdapterUpdateCheck(Filter):
    """The aggregator's check of each participant's update (a task result filter): exactly the
    adapter's tensor names and shapes, finite values, a global L2 norm of at most ``max_norm``,
    a positive step count, and never an update accepted before (its SHA-256 over names, shapes
    and bytes: a replayed update, from an earlier round or another party, counts once at most;
    ScatterAndGather itself discards results that carry an earlier round's cookie). A failing
    update is replaced by a BAD_TASK_DATA reply, which ScatterAndGather leaves out of the
    average (or, below its minimum of responses, turns into a failed run): the sender
    contributes nothing."""

    def __init__(
        self,
        model_dir: str,
        max_norm: float = 1e3,
        lora_r: int = 8,
        lora_alpha: int = 16,
        target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        record_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model_dir = model_dir
        self.record_dir = record_dir
        self.max_norm = float(max_norm)
        self.lora = (lora_r, lora_alpha, tuple(target_modules))
        self._layout: dict[str, tuple[int, ...]] | None = None
        self._accepted: set[str] = set()  # digests of the updates accepted so far

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Adapter tensor name -> shape, from the base model (computed once)."""
        if self._layout is None:
            r, alpha, targets = self.lora
            model, _, _ = adapter_model(self.model_dir, r, alpha, targets, 0)
            self._layout = {k: v.shape for k, v in adapter_weights(model).items()}
        return self._layout

    def problem(self, shareable: Shareable) -> str | None:
        """Why the update must not be averaged, or None."""
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            return f"not a DXO: {exc}"
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, dict):
            return f"data kind {dxo.data_kind!r} is not WEIGHTS"
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            return f"step count {steps!r} is not a positive integer"
        got = {k: tuple(np.shape(v)) for k, v in dxo.data.items()}
        if got != self.layout():
            return "tensor names or shapes are not the adapter's"
        arrays = [np.asarray(v, dtype=np.float64) for v in dxo.data.values()]
        if not all(np.isfinite(a).all() for a in arrays):
            return "update holds NaN or Inf"
        norm = float(np.sqrt(sum(float((a * a).sum()) for a in arrays)))
        if norm > self.max_norm:
            return f"update norm {norm:.3g} exceeds {self.max_norm:.3g}"
        return None

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        peer = fl_ctx.get_peer_context()
        sender = peer.get_identity_name() if peer else "unknown"
        round_number = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reason = self.problem(shareable)
        if reason is None:
            dxo = from_shareable(shareable)
            digest = update_digest(dxo.data)
            if digest not in self._accepted:
                self._accepted.add(digest)
                _append_record(
                    self.record_dir,
                    UPDATES_RECORD,
                    {
                        "round": round_number,
                        "site": sender,
                        "update_digest": digest,
                        "num_steps": dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND),
                        "local_eval_loss": dxo.get_meta_prop(LOCAL_EVAL_LOSS),
                        "dataset_digest": dxo.get_meta_prop(DATASET_DIGEST),
                    },
                )
                return shareable
            reason = f"replayed update ({digest[:19]}… was accepted before)"
        self.log_error(fl_ctx, f"update from {sender} refused: {reason}")
        _append_record(
            self.record_dir,
            REFUSED_RECORD,
            {"round": round_number, "site": sender, "reason": reason},
        )
        return make_reply(ReturnCode.BAD_TASK_DATA)


def trainer_args(
    model_dir: str | Path,
    data_dir: str | Path,
    local_steps: int,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
) -> dict:
    """A participant's LoraTrainer arguments in a job of :func:`write_fedavg_job`."""
    return {
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "local_steps": local_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }


def write_fedavg_job(
    job_dir: str | Path,
    *,
    name: str,
    model_dir: str,
    output_dir: str,
    min_clients: int,
    rounds: int,
    trainer_args: Mapping[str, Any],
    lora_args: Mapping[str, Any] | None = None,
    check_args: Mapping[str, Any] | None = None,
    workflow_args: Mapping[str, Any] | None = None,
    seed: int = 0,
    guard_drops: bool = True,
) -> Path:
    """The one FedAvg job over the LoRA adapter: ScatterAndGather weighted by local steps, the
    aggregator's update check on every result, installed classes only.

    ``model_dir`` is the base model on the server side; ``trainer_args`` are the participant's
    (its own ``model_dir``, ``data_dir``, ``local_steps``...). ``lora_args`` go to persistor,
    check and trainer alike (they must agree on the adapter's shape); ``guard_drops`` lists the
    ``DroppedSiteGuard``, which a secure-mode federation under the CC manager needs."""
    job = Path(job_dir)
    config = job / "app" / "config"
    config.mkdir(parents=True)
    lora = dict(lora_args or {})
    components = [
        {
            "id": "persistor",
            "path": PERSISTOR_CLASS,
            "args": {"model_dir": model_dir, "output_dir": output_dir, "seed": seed, **lora},
        },
        {
            "id": "shareable_generator",
            "path": "nvflare.app_common.shareablegenerators."
            "full_model_shareable_generator.FullModelShareableGenerator",
        },
        {
            "id": "aggregator",
            "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
            "InTimeAccumulateWeightedAggregator",
            "args": {"expected_data_kind": "WEIGHTS"},
        },
    ]
    if guard_drops:
        components.append({"id": "dropped_site_guard", "path": DROPPED_SITE_GUARD_CLASS})
    check = {"model_dir": model_dir, **lora, **(check_args or {})}
    server = {
        "format_version": 2,
        "task_result_filters": [
            {"tasks": ["train"], "filters": [{"path": UPDATE_CHECK_CLASS, "args": check}]}
        ],
        "workflows": [
            {
                "id": "scatter_and_gather",
                "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
                "args": {
                    "min_clients": min_clients,
                    "num_rounds": rounds,
                    "aggregator_id": "aggregator",
                    "persistor_id": "persistor",
                    "shareable_generator_id": "shareable_generator",
                    **(workflow_args or {}),
                },
            }
        ],
        "components": components,
    }
    trainer = {"seed": seed, **trainer_args, **lora}
    client = {
        "format_version": 2,
        "executors": [{"tasks": ["train"], "executor": {"path": TRAINER_CLASS, "args": trainer}}],
    }
    meta = {
        "name": name[:128],
        "resource_spec": {},
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": min_clients,
    }
    (job / "meta.json").write_text(json.dumps(meta))
    (config / "config_fed_server.json").write_text(json.dumps(server))
    (config / "config_fed_client.json").write_text(json.dumps(client))
    return job
