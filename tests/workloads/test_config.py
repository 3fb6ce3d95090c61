from __future__ import annotations

import json
from pathlib import Path

import pytest

from coco_ai.workloads.finetune.config import ConfigError, FinetuneConfig, load_config

DIGEST = "sha256:" + "ab" * 32


def minimal() -> dict:
    return {
        "run_id": "run-1",
        "staging_uri": "file:///tmp/staging/run-1",
        "checkpoint_key_uri": "kbs:///default/checkpoint/run-1",
        "run_key_root_uri": "kbs:///coco-ai/run-key-root/v1",
        "dataset": {"uri": "file:///tmp/ds.jsonl.enc", "key_uri": "kbs:///default/dataset/nw"},
        "base_model": {"path": "/models/tiny", "digest": DIGEST},
    }


def test_minimal_config_fills_defaults_and_round_trips(tmp_path: Path) -> None:
    cfg = FinetuneConfig.from_dict(minimal())
    assert cfg.lora.r == 8 and cfg.training.device == "auto"
    assert cfg.training.max_steps is None
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg.to_dict()))
    assert load_config(p) == cfg


def test_toml_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        'run_id = "r2"\nstaging_uri = "s3://b/r2"\ncheckpoint_key_uri = "kbs:///a/b/c"\n'
        'run_key_root_uri = "kbs:///a/b/r"\n'
        '[dataset]\nuri = "s3://b/d.enc"\nkey_uri = "kbs:///a/b/d"\n'
        f'[base_model]\npath = "/m"\ndigest = "{DIGEST}"\n'
        '[lora]\nr = 4\ntarget_modules = ["q_proj"]\n[training]\nprecision = "bf16"\n'
    )
    cfg = load_config(p)
    assert cfg.lora.r == 4 and cfg.lora.target_modules == ("q_proj",)
    assert cfg.training.precision == "bf16"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"epochs": 3}, "epochs"),  # belongs under [training]
        ({"lora": {"rank": 8}}, "lora.rank"),
        ({"training": {"lr": 0.1}}, "training.lr"),
    ],
)
def test_unknown_fields_are_named(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: unknown field"):
        FinetuneConfig.from_dict({**minimal(), **patch})


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lora": {"target_modules": []}}, "lora.target_modules"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate"),
        ({"training": {"eval_fraction": 1.5}}, "training.eval_fraction"),
        ({"training": {"batch_size": True}}, "training.batch_size"),
        ({"training": {"max_steps": 0}}, "training.max_steps"),
        ({"training": {"device": "tpu"}}, "training.device"),
        ({"training": {"precision": "fp16"}}, "training.precision"),
        ({"training": {"learning_rate": float("nan")}}, "training.learning_rate"),
        ({"store_attempts": 0}, "store_attempts"),
        ({"run_id": "../escape"}, "run_id"),
        ({"checkpoint_key_uri": "kbs:///a/../b"}, "checkpoint_key_uri"),
        ({"run_key_root_uri": "kbs:///a/b"}, "run_key_root_uri"),
        ({"guest_api_url": "ftp://x"}, "guest_api_url"),
    ],
)
def test_out_of_range_values_are_named(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        FinetuneConfig.from_dict({**minimal(), **patch})


def test_bad_digest_and_missing_field() -> None:
    bad = minimal()
    bad["base_model"] = {"path": "/m", "digest": "md5:00"}
    with pytest.raises(ConfigError, match=r"^base_model.digest: "):
        FinetuneConfig.from_dict(bad)
    missing = minimal()
    del missing["dataset"]["key_uri"]
    with pytest.raises(ConfigError, match=r"^dataset.key_uri: required field missing"):
        FinetuneConfig.from_dict(missing)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.json")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(p)


def test_the_rag_recipe_a_data_owner_approves_is_the_one_a_run_indexes_with() -> None:
    from coco_ai.workloads.rag_index.config import RagIndexConfig, recipe_digest, recipe_for

    run = RagIndexConfig.from_dict(
        {
            "run_id": "run-1",
            "staging_uri": "file:///staging/run-1",
            "checkpoint_key_uri": "kbs:///coco-ai-run/checkpoint-key/run-1",
            "run_key_root_uri": "kbs:///coco-ai/run-key-root/v1",
            "repository": {"uri": "file:///docs.enc", "key_uri": "kbs:///coco-ai/rag-key/v1"},
            "embedder": {"path": "/m", "digest": "sha256:" + "0" * 64},
            "chunker": {"max_words": 48},
        }
    ).to_dict()
    settings = {"chunker": {"max_words": 48, "overlap_words": None}}
    assert recipe_digest(recipe_for(settings)) == recipe_digest(run)
    assert recipe_digest(recipe_for({})) != recipe_digest(run)
    with pytest.raises(ConfigError, match=r"chunker\.overlap_words: 8 must be less than"):
        recipe_for({"chunker": {"max_words": 8}})
    with pytest.raises(ConfigError, match=r"index\.engine"):
        recipe_for({"index": {"engine": "lancedb"}})
