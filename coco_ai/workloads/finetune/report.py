"""What travels inside the encrypted checkpoint besides the adapter: loss curve, report, metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_CURVE_FILE = "loss_curve.png"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
ADAPTER_DIR = "adapter"
METRICS_VERSION = 1


def write_loss_curve(
    path: Path, step_losses: Sequence[float], eval_before: float, eval_after: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display inside a TEE
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    steps = range(1, len(step_losses) + 1)
    ax.plot(steps, step_losses, label="train loss (per step)", linewidth=1)
    ax.axhline(eval_before, color="grey", linestyle="--", label=f"eval before {eval_before:.3f}")
    ax.axhline(eval_after, color="green", linestyle="--", label=f"eval after {eval_after:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("LoRA fine-tune")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})  # no volatile metadata
    plt.close(fig)


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    path.write_text(json.dumps({"version": METRICS_VERSION, **metrics}, indent=2) + "\n")


def write_report(
    path: Path,
    *,
    run_id: str,
    provenance: Mapping[str, str],
    metrics: Mapping[str, Any],
    samples: Sequence[Mapping[str, str]],
) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# Fine-tune report: run `{run_id}`",
        "",
        "## Provenance",
        "",
        *(f"- {k}: `{v}`" for k, v in provenance.items()),
        "",
        "## Evaluation (held-out phrasings)",
        "",
        "| | loss | perplexity |",
        "|---|---|---|",
        f"| before | {metrics['eval_loss_before']:.4f} | {metrics['eval_perplexity_before']:.2f} |",
        f"| after | {metrics['eval_loss']:.4f} | {metrics['eval_perplexity']:.2f} |",
        "",
        f"Training: {metrics['train_steps']} steps, {metrics['train_tokens']} tokens, "
        f"{metrics['train_seconds']:.1f} s ({metrics['train_tokens_per_s']:.0f} tokens/s) on "
        f"{metrics['device']} ({metrics['precision']}); "
        f"{metrics['trainable_parameters']} trainable of {metrics['total_parameters']} parameters.",
        "",
        f"![loss curve]({LOSS_CURVE_FILE})",
        "",
        "## Greedy answers to held-out questions",
        "",
        "| question | expected | before | after |",
        "|---|---|---|---|",
        *(
            f"| {cell(s['question'])} | {cell(s['expected'])} | {cell(s['before'])} "
            f"| {cell(s['after'])} |"
            for s in samples
        ),
        "",
    ]
    path.write_text("\n".join(lines))
