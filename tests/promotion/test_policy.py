"""The promotion policy (promotion.rego) evaluated by real regopy."""

from __future__ import annotations

import pytest

from coco_ai.promotion._policy import POLICY_PATH, evaluate, policy_digest

BASE = "sha256:" + "b" * 64
DATA = "sha256:" + "d" * 64


def _input(**overrides):
    doc = {
        "attestation": {
            "verified": True,
            "submods": {"cpu0": "affirming", "gpu0": "affirming"},
            "gpu_count": 1,
        },
        "checkpoint": {"base_model_digest": BASE, "dataset_digest": DATA},
        "metrics": {"eval_loss": 1.0, "eval_loss_before": 4.0},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        doc[section][key] = value
    return doc


def _data(**overrides):
    data = {
        "min_gpus": 1,
        "max_eval_loss": 2.0,
        "min_relative_improvement": 0.25,
        "approved_base_models": [BASE],
        "approved_datasets": [DATA],
    }
    data.update(overrides)
    return data


def test_allows_a_checkpoint_meeting_every_rule():
    decision = evaluate(_input(), _data())
    assert decision.allow is True
    assert decision.deny == ()
    assert decision.policy_digest == policy_digest(POLICY_PATH.read_text())


@pytest.mark.parametrize(
    ("overrides", "data", "reason"),
    [
        ({"metrics__eval_loss": 2.5}, {}, "eval_loss 2.5 is above the maximum 2"),
        ({"metrics__eval_loss": 3.5}, {"max_eval_loss": 5.0}, "improved by 0.125"),
        ({"checkpoint__dataset_digest": "sha256:" + "e" * 64}, {}, "data set sha256:eee"),
        ({"checkpoint__base_model_digest": None}, {}, "base model null is not approved"),
        ({"attestation__gpu_count": 1}, {"min_gpus": 2}, "covers 1 GPU(s), at least 2"),
        (
            {"attestation__submods": {"cpu0": "warning", "gpu0": "affirming"}},
            {},
            "cpu0 is warning",
        ),
        ({"attestation__submods": {"gpu0": "affirming"}}, {}, "no cpu0 submod"),
        ({"attestation__verified": False}, {}, "attestation chain was not verified"),
    ],
)
def test_denies_with_a_reason_naming_the_rule(overrides, data, reason):
    decision = evaluate(_input(**overrides), _data(**data))
    assert decision.allow is False
    assert any(reason in d for d in decision.deny), decision.deny


def test_missing_metrics_are_denied_when_thresholds_are_set():
    doc = _input()
    doc["metrics"] = {}
    decision = evaluate(doc, _data())
    assert not decision.allow
    assert "metric eval_loss is missing from the manifest" in decision.deny
    assert any("eval_loss_before" in d for d in decision.deny)


def test_thresholds_not_configured_are_not_applied():
    doc = _input(metrics__eval_loss=9.0)
    doc["metrics"].pop("eval_loss_before")
    data = _data()
    del data["max_eval_loss"], data["min_relative_improvement"]
    assert evaluate(doc, data).allow


def test_a_broken_policy_fails_closed():
    decision = evaluate(_input(), _data(), policy_text="package coco_ai.promotion\nallow if {")
    assert decision.allow is False
    assert decision.deny[0].startswith("promotion policy failed to evaluate")


def test_a_policy_without_a_decision_fails_closed():
    decision = evaluate(_input(), _data(), policy_text="package coco_ai.promotion\nx := 1\n")
    assert decision.allow is False
    assert decision.deny == ("promotion policy returned a malformed decision",)
