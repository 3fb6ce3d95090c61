"""The promotion policy (promotion.rego) evaluated by real regopy."""

from __future__ import annotations

import pytest

from coco_ai.promotion._policy import POLICY_PATH, evaluate, policy_digest

BASE = "sha256:" + "b" * 64
DATA = "sha256:" + "d" * 64
RECIPE = "sha256:" + "c" * 64
IMAGE = "sha256:" + "1" * 64


def _input(**overrides):
    doc = {
        "attestation": {
            "verified": True,
            "submods": {"cpu0": "affirming", "gpu0": "affirming"},
            "gpu_count": 1,
            "image_digest": IMAGE,
            "appraisal_policy_ids": {"cpu0": "default", "gpu0": "default"},
            "development_evidence": False,
        },
        "checkpoint": {
            "base_model_digest": BASE,
            "dataset_digest": DATA,
            "training_recipe_digest": RECIPE,
        },
        "metrics": {"eval_loss": 1.0, "eval_loss_before": 4.0},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        doc[section][key] = value
    return doc


def _data(**overrides):
    data = {
        "min_gpus": 1,
        "metric_bounds": [{"metric": "eval_loss", "minimum": False, "limit": 2.0}],
        "min_relative_improvement": 0.25,
        "approved_base_models": [BASE],
        "approved_datasets": [DATA],
        "approved_training_recipes": [RECIPE],
        "approved_images": [IMAGE],
        "appraisal_policy_ids": ["default"],
        "allow_development_evidence": False,
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
        (
            {"metrics__eval_loss": 3.5},
            {"metric_bounds": [{"metric": "eval_loss", "minimum": False, "limit": 5.0}]},
            "improved by 0.125",
        ),
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
        ({"attestation__image_digest": "sha256:" + "9" * 64}, {}, "image sha256:999"),
        ({"attestation__image_digest": None}, {}, "image null is not approved"),
        ({}, {"approved_images": []}, f"image {IMAGE} is not approved"),
        ({"checkpoint__training_recipe_digest": None}, {}, "training recipe null is not approved"),
        ({}, {"approved_training_recipes": []}, f"training recipe {RECIPE} is not approved"),
        (
            {"attestation__appraisal_policy_ids": {"cpu0": "default", "gpu0": "lenient"}},
            {},
            "submod gpu0 was appraised by policy lenient",
        ),
        ({}, {"appraisal_policy_ids": ["prod"]}, "submod cpu0 was appraised by policy default"),
        ({"attestation__development_evidence": True}, {}, "development (sample/sampledevice)"),
        (
            {"attestation__development_evidence": True},
            {"allow_development_evidence": "yes"},
            "development (sample/sampledevice)",
        ),
    ],
)
def test_denies_with_a_reason_naming_the_rule(overrides, data, reason):
    decision = evaluate(_input(**overrides), _data(**data))
    assert decision.allow is False
    assert any(reason in d for d in decision.deny), decision.deny


def test_development_evidence_passes_only_when_the_owner_allows_it():
    doc = _input(attestation__development_evidence=True)
    assert evaluate(doc, _data(allow_development_evidence=True)).allow


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
    del data["metric_bounds"], data["min_relative_improvement"]
    assert evaluate(doc, data).allow


def test_a_broken_policy_fails_closed():
    decision = evaluate(_input(), _data(), policy_text="package coco_ai.promotion\nallow if {")
    assert decision.allow is False
    assert decision.deny[0].startswith("promotion policy failed to evaluate")


def test_a_policy_without_a_decision_fails_closed():
    decision = evaluate(_input(), _data(), policy_text="package coco_ai.promotion\nx := 1\n")
    assert decision.allow is False
    assert decision.deny == ("promotion policy returned a malformed decision",)
