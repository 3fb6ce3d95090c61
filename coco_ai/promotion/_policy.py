"""Evaluation of the promotion policy (`promotion.rego`) with regopy.

The policy decides on a JSON input (docs/formats/promotion.md) and the run's expectations as
`data.promotion`. Anything unexpected from the evaluator (syntax error, undefined result, a
non-boolean `allow`) is a refusal: the decision fails closed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.policies import load_regopy

POLICY_PATH = Path(__file__).with_name("promotion.rego")
POLICY_PACKAGE = "coco_ai.promotion"


@dataclass(frozen=True)
class PolicyDecision:
    allow: bool
    deny: tuple[str, ...]
    policy_digest: str  # "sha256:<hex>" of the policy text evaluated


def policy_digest(policy_text: str) -> str:
    return "sha256:" + hashlib.sha256(policy_text.encode("utf-8")).hexdigest()


def evaluate(
    policy_input: dict[str, Any], policy_data: dict[str, Any], *, policy_text: str | None = None
) -> PolicyDecision:
    """Evaluate `data.coco_ai.promotion` for `policy_input` with `policy_data` as data.promotion."""
    # regopy loaded first would make a later `import torch` abort the process; load_regopy avoids it
    regopy = load_regopy()
    Interpreter, RegoError = regopy.Interpreter, regopy.RegoError

    text = POLICY_PATH.read_text(encoding="utf-8") if policy_text is None else policy_text
    digest = policy_digest(text)
    try:
        interpreter = Interpreter()
        interpreter.add_module("promotion", text)
        interpreter.add_data_json(json.dumps({"promotion": policy_data}))
        interpreter.set_input(policy_input)
        output = interpreter.query("data." + POLICY_PACKAGE)
    except RegoError as exc:
        return PolicyDecision(False, (f"promotion policy failed to evaluate: {exc}",), digest)
    if not output.ok():
        detail = " ".join(str(output).split())[:300]
        return PolicyDecision(False, (f"promotion policy failed to evaluate: {detail}",), digest)
    try:
        result = json.loads(str(output))["expressions"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return PolicyDecision(False, ("promotion policy returned no decision",), digest)
    allow = result.get("allow") if isinstance(result, dict) else None
    deny = result.get("deny", []) if isinstance(result, dict) else []
    if not isinstance(allow, bool) or not isinstance(deny, list):
        return PolicyDecision(False, ("promotion policy returned a malformed decision",), digest)
    reasons = tuple(sorted(str(d) for d in deny))
    if not allow and not reasons:
        reasons = ("promotion policy did not allow the checkpoint",)
    return PolicyDecision(allow and not reasons, reasons, digest)
