"""Pipeline runs that only have to end (succeed, promote, revoke the grant): eight optimizer steps
of the tiny model instead of the DAG's default epoch (40 steps; ~30 s of a run on the loaded test
box). The stack's data owner approves the recipe first, as a data owner approves any new recipe
(promotion refuses one it has not approved); the stacks' policies ask for any held-out
improvement, which eight steps give. Tests that act on a fine-tune while it runs keep longer
confs."""

from __future__ import annotations

from typing import Any

QUICK_RECIPE = {
    "lora": {"r": 4, "alpha": 16, "dropout": 0.05},
    "training": {"epochs": 1, "max_steps": 8},
}
# the same recipe as the fine-tune DAG's params
QUICK_CONF = {"lora_r": 4, "lora_alpha": 16, "lora_dropout": 0.05, "epochs": 1, "max_steps": 8}


def approve_quick_runs(info: Any) -> dict[str, Any]:
    """Have the data owner of `info` (a StackInfo) approve the quick recipe; the DAG conf of a
    quick run."""
    info.approve_recipes(QUICK_RECIPE)
    return dict(QUICK_CONF)
