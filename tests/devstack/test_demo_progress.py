"""`coco-ai demo` relays training progress read from the fine-tune task's log.

The lines are produced by the workload's own progress reporter, so a change of its format
breaks this test rather than silently stopping the relay.
"""

from __future__ import annotations

import io

from coco_ai.devstack.demo import ProgressRelay, TrainingProgress, latest_progress
from coco_ai.workloads.finetune.train import Progress
from coco_ai.workloads.finetune.workload import FinetuneWorkload


def _workload_line(p: Progress) -> str:
    """What the workload prints for `p` (its `_progress` with its own log writer)."""
    from coco_ai.workloads.finetune.workload import _Log

    out = io.StringIO()

    class _Reporter:
        log = _Log(out)

    FinetuneWorkload._progress(_Reporter(), p)
    return out.getvalue()


def _task_log(*lines: str) -> str:
    # as relayed by the local execution mode into the Airflow task log
    return "\n".join(f"[2026-12-02T02:00:00Z] INFO - [workload] {line.strip()}" for line in lines)


def test_latest_progress_reads_the_workloads_own_lines():
    first = _workload_line(Progress(3, 90, 1, 2.71828, 812.4, 65.0))
    last = _workload_line(Progress(60, 90, 2, 1.25, 799.6, 3725.0))
    got = latest_progress(_task_log("[finetune] LoRA: 10 trainable", first, last, "other"))
    assert got == TrainingProgress(60, 90, 2, 1.25, 800, 3725)


def test_no_progress_before_training_reports():
    assert latest_progress(_task_log("[finetune] eval before: loss 3.1 perplexity 22")) is None
    assert latest_progress("") is None


def test_relay_prints_plain_lines_off_a_terminal_and_skips_repeats():
    out = io.StringIO()
    relay = ProgressRelay(out, tty=False)
    p = TrainingProgress(30, 90, 1, 2.0, 700, 125)
    relay.show(p)
    relay.show(p)
    relay.show(TrainingProgress(45, 90, 1, 1.9, 710, 100))
    lines = out.getvalue().splitlines()
    assert lines == [
        "coco-ai demo: confidential_finetune: step 30/90 epoch 1 loss 2.0000 700 tokens/s "
        "ETA 0:02:05",
        "coco-ai demo: confidential_finetune: step 45/90 epoch 1 loss 1.9000 710 tokens/s "
        "ETA 0:01:40",
    ]
    assert "\r" not in out.getvalue()


def test_relay_redraws_one_bar_on_a_terminal():
    out = io.StringIO()
    relay = ProgressRelay(out, tty=True)
    relay.show(TrainingProgress(45, 90, 1, 1.9, 710, 100))
    relay.show(TrainingProgress(90, 90, 3, 1.1, 720, 0))
    relay.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 2 and text.endswith("\n")
    assert "[" + "#" * 15 + "." * 15 + "]  50.0%" in text
    assert "[" + "#" * 30 + "] 100.0%" in text
