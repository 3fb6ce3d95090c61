"""`coco-ai demo --federated`: the development federation's three departments and its aggregator
fine-tune one adapter together with `confidential_federated_finetune`, each party a TEE process
beside its own guest-components emulator; the summary says who contributed in each round.

The data owner's steps are the stack's (coco_ai.devstack.stack: each department's topics under
its own key, the federation's credentials provisioned in Trustee, the owner policy approving
the federated recipes); the trigger names only references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coco_ai.devstack.stack import FEDERATED_DAG_ID, FEDERATION_AGGREGATOR, StackInfo

#: the federated recipe the demo runs (one of the development owner policy's approved ones)
DEMO_ROUNDS, DEMO_LOCAL_STEPS = 3, 4


def federated_conf(info: StackInfo, *, rounds: int, local_steps: int) -> dict[str, Any]:
    """The trigger's conf: the stack's federation and participants, the emulator's TEE."""
    return {
        "federation": info.federation,
        "aggregator_id": FEDERATION_AGGREGATOR,
        "participants": info.federated_participants,
        "min_participants": len(info.federated_participants),
        "rounds": rounds,
        "local_steps": local_steps,
        "gpu_count": 1,
        "tee": "sample",
        "allow_development_evidence": True,
    }


def run_federated_demo(
    info: StackInfo,
    *,
    rounds: int = DEMO_ROUNDS,
    local_steps: int = DEMO_LOCAL_STEPS,
    progress: Callable[[str], None] = lambda message: None,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Trigger, follow, and summarise one federated run (references and public metrics)."""
    from coco_ai.crypto.manifest import CONFIG_FILE
    from coco_ai.storage import open_store

    client = info.client()
    try:
        conf = federated_conf(info, rounds=rounds, local_steps=local_steps)
        summary = client.run_to_end(
            FEDERATED_DAG_ID,
            conf,
            note="coco-ai demo: federated",
            timeout_s=timeout_s,
            progress=progress,
            what=f": {len(conf['participants'])} participants, {rounds} rounds",
        )
        if summary["state"] != "success":
            return summary
        promoted = client.xcom(FEDERATED_DAG_ID, summary["run_id"], "attested_promotion")
    finally:
        client.close()
    import json

    record = json.loads(open_store(promoted["checkpoint_uri"]).read_bytes(CONFIG_FILE))[
        "contributions"
    ]
    summary["promoted"] = {
        "model_name": promoted["model_name"],
        "version": promoted["version"],
        "manifest_digest": promoted["manifest_digest"],
        "metrics": promoted["metrics"],
    }
    summary["rounds"] = [
        {"round": r["round"], "contributors": [a["site"] for a in r["accepted"]]}
        for r in record["rounds"]
    ]
    return summary


def format_federated(summary: dict[str, Any]) -> str:
    lines = [f"Federated run {summary['run_id']}: {summary['state'].upper()} in "
             f"{summary['wall_seconds']} s"]  # fmt: skip
    promoted = summary.get("promoted")
    if promoted:
        metrics = promoted["metrics"]
        lines.append(
            f"  promoted {promoted['model_name']} v{promoted['version']} "
            f"(manifest {promoted['manifest_digest']})"
        )
        if "eval_loss" in metrics:
            lines.append(
                f"  participants' held-out loss after the last round: {metrics['eval_loss']:.4f}"
            )
        for entry in summary["rounds"]:
            lines.append(f"  round {entry['round']}: {', '.join(entry['contributors'])}")
    return "\n".join(lines)
