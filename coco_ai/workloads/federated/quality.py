"""Federated vs solo quality on one global held-out set.

The generated Northwind data is split twice: first phrasings are held out from every fact (the
global held-out set: every topic, phrasings no party trains on), then the rest goes to the
participants by topic (each department only its own). The federation (FedAvg on NVFlare over the
installed :class:`~.job.LoraTrainer`) and each participant alone (the same
trainer, the same rounds x local steps, learning rate and batch) are then scored by the mean eval
loss of their adapter on the global held-out set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from coco_ai.workloads.dataset import Example, split_examples, to_jsonl
from coco_ai.workloads.federated.data import split_by_topic
from coco_ai.workloads.federated.job import (
    GLOBAL_ADAPTER_FILE,
    JOB_CLASSES,
    LoraAdapterPersistor,
    LoraTrainer,
    adapter_model,
    load_adapter_weights,
    trainer_args,
    write_fedavg_job,
)

#: Tokens per packed row, as LoraTrainer encodes and evaluates.
_MAX_TOKENS = 256


@dataclass(frozen=True)
class QualitySplit:
    """Each participant's training examples (its own topics only) and the global held-out set."""

    sites: dict[str, list[Example]]
    held_out: list[Example]


def global_split(
    examples: list[Example],
    participant_ids: Sequence[str],
    *,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> QualitySplit:
    """Hold out phrasings of every fact (the data set's own split), then split the rest by
    topic: no participant ever sees a held-out phrasing, and the held-out set covers all
    topics."""
    train, held = split_examples(examples, eval_fraction, seed)
    return QualitySplit(split_by_topic(train, participant_ids), held)


def write_site_data(split: QualitySplit, data_dir: str | Path) -> Path:
    """``<data_dir>/<site>.jsonl`` for every participant (what LoraTrainer reads)."""
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for site, records in split.sites.items():
        (out / f"{site}.jsonl").write_bytes(to_jsonl(records))
    return out


def load_adapter(path: str | Path) -> dict[str, np.ndarray]:
    """An adapter saved by the persistor (``global_adapter.npz``)."""
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def evaluate_adapter(
    model_dir: str | Path,
    weights: dict[str, np.ndarray],
    examples: Sequence[Example],
    *,
    lora_r: int = 8,
    lora_alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    batch_size: int = 8,
) -> float:
    """Mean eval loss (per response token) of the base model with ``weights`` as its adapter on
    ``examples``, computed by the fine-tune's own evaluation (as LoraTrainer's local eval)."""
    from coco_ai.workloads.finetune.train import encode_examples, evaluate

    model, tokenizer, runtime = adapter_model(str(model_dir), lora_r, lora_alpha, target_modules, 0)
    load_adapter_weights(model, weights)
    encoded = encode_examples(tokenizer, examples, _MAX_TOKENS)
    if not encoded:
        raise ValueError("no held-out example fits the model's window")
    result = evaluate(
        model,
        encoded,
        runtime,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        pack_length=_MAX_TOKENS,
    )
    return result.loss


def initial_adapter(model_dir: str | Path, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The federation's round-0 global adapter: what the aggregator's persistor starts from."""
    persistor = LoraAdapterPersistor(str(model_dir), output_dir="", seed=seed)
    return persistor.load_model(FLContext())[ModelLearnableKey.WEIGHTS]


def train_alone(
    trainer: LoraTrainer, site: str, initial: dict[str, np.ndarray], rounds: int
) -> dict[str, np.ndarray]:
    """``site`` trains without the others: the same trainer for the same rounds, each round
    starting from its own previous adapter instead of the federation's average (FedAvg with one
    participant), so rounds x local steps, optimiser restarts and seeds are the federation's."""
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False)
    weights = initial
    for current_round in range(rounds):
        task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
        task.set_header(AppConstants.CURRENT_ROUND, current_round)
        result = trainer.execute(trainer.train_task_name, task, fl_ctx, Signal())
        if result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            raise RuntimeError(f"{site}'s trainer failed in round {current_round}")
        weights = from_shareable(result).data
    return weights


def simulate_fedavg(
    job_dir: str | Path, workspace: str | Path, participants: Sequence[str], *, timeout_s: float
) -> Path:
    """Run the job in NVFlare's simulator (the same job config; server and clients in worker
    processes of one machine, no network or provisioning); returns its log file, kept beside
    the workspace (the simulator clears the workspace when it starts)."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    ws = Path(workspace)
    log = ws.with_name(ws.name + ".log")
    # The simulator copies <workspace>/local into every site: admit the installed job classes
    # there, as install_confidential_kit does in a real kit's resources.json.
    local = ws / "local"
    local.mkdir(parents=True, exist_ok=True)
    allowed = sorted({*DEFAULT_CLASS_ALLOW_LIST, *JOB_CLASSES})
    (local / "resources.json").write_text(json.dumps({"class_allow_list": allowed}))
    command = [
        sys.executable, "-m", "nvflare.private.fed.app.simulator.simulator", str(job_dir),
        "-w", str(ws), "-c", ",".join(participants), "-t", str(len(participants)),
    ]  # fmt: skip
    with log.open("wb") as out:
        # one torch thread per client: the clients train side by side on the CPU
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"NVFlare simulator exited {done.returncode}:\n{tail}")
    return log


def federated_adapter(output_dir: str | Path) -> dict[str, np.ndarray]:
    """The aggregator's final global adapter."""
    return load_adapter(Path(output_dir) / GLOBAL_ADAPTER_FILE)


@dataclass(frozen=True)
class QualityReport:
    """Global held-out eval loss of the untrained adapter, the federation and each solo run."""

    initial: float
    federated: float
    solo: dict[str, float]
    held_out_examples: int
    train_examples: dict[str, int]

    def margin(self) -> float:
        """How much lower the federation's loss is than the best participant's alone."""
        return min(self.solo.values()) - self.federated

    def as_dict(self) -> dict:
        return {
            "initial_eval_loss": self.initial,
            "federated_eval_loss": self.federated,
            "solo_eval_loss": self.solo,
            "margin_vs_best_solo": self.margin(),
            "held_out_examples": self.held_out_examples,
            "train_examples": self.train_examples,
        }


def compare_federated_with_solo(
    model_dir: str | Path,
    examples: list[Example],
    participants: Sequence[str],
    work_dir: str | Path,
    *,
    rounds: int,
    local_steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    timeout_s: float = 900,
) -> QualityReport:
    """Split ``examples`` (:func:`global_split`), train every participant alone and the
    federation in NVFlare's simulator with the same trainer settings, and score all on the
    global held-out set."""
    work = Path(work_dir)
    split = global_split(examples, participants, seed=seed)
    data = write_site_data(split, work / "data")
    initial = initial_adapter(model_dir, seed=seed)
    solo = {}
    for site in participants:
        trainer = LoraTrainer(
            str(model_dir),
            str(data),
            local_steps=local_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
        )
        solo[site] = evaluate_adapter(
            model_dir, train_alone(trainer, site, initial, rounds), split.held_out
        )
    job = write_fedavg_job(
        work / "job",
        name="lora-fedavg",
        model_dir=str(model_dir),
        output_dir=str(work / "aggregator-output"),
        min_clients=len(participants),
        rounds=rounds,
        trainer_args=trainer_args(model_dir, data, local_steps, batch_size, learning_rate),
        seed=seed,
        guard_drops=False,  # the simulator runs no CC manager
    )
    simulate_fedavg(job, work / "simulator", participants, timeout_s=timeout_s)
    federated = federated_adapter(work / "aggregator-output")
    return QualityReport(
        initial=evaluate_adapter(model_dir, initial, split.held_out),
        federated=evaluate_adapter(model_dir, federated, split.held_out),
        solo=solo,
        held_out_examples=len(split.held_out),
        train_examples={site: len(records) for site, records in split.sites.items()},
    )
