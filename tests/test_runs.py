"""The run identity (coco_ai.runs.RunRefs), its XCom encoding and the digest rule."""

from __future__ import annotations

import json

import pytest

from coco_ai.digest import Digest, is_sha256
from coco_ai.guest.agent_policy import agent_policy_text
from coco_ai.guest.image_policy import IMAGE_POLICY_URI
from coco_ai.guest.initdata import build_initdata
from coco_ai.kbs.resource_path import parse_resource_uri
from coco_ai.run_keys import DEFAULT_ROOT
from coco_ai.runs import RunInput, RunRefs, RunRefsError, pinned_image, staging_location
from coco_ai.workloads.finetune.config import ConfigError
from coco_ai.workloads.kinds import FINETUNE, workload_kind

IMAGE = "registry.example/coco-ai/finetune@sha256:" + "ab" * 32
DATASET_KEY = "kbs:///coco-ai/dataset-key/v1"


def _refs(run_id: str = "run-1", **overrides) -> RunRefs:
    args = {
        "workload": "finetune",
        "module": FINETUNE.module,
        "run_id": run_id,
        "image": IMAGE,
        "run_key_root": DEFAULT_ROOT,
        "inputs": {
            "dataset": RunInput(
                "s3://data/v1.enc", Digest("sha256", "11" * 32), parse_resource_uri(DATASET_KEY)
            ),
            "base_model": RunInput("s3://models/smol", Digest("sha256", "22" * 32)),
        },
        "staging_root": "s3://staging/",
        "kbs_url": "https://kbs.example:8080",
        "kbs_ca_pem": None,
        **overrides,
    }
    return RunRefs.plan(**args)


def test_xcom_round_trip_is_exact_and_json():
    refs = _refs()
    encoded = json.loads(json.dumps(refs.to_xcom()))
    assert RunRefs.from_xcom(encoded) == refs
    assert encoded["inputs"]["base_model"]["key_uri"] is None
    assert encoded["staging_uri"] == "s3://staging/run-1"
    assert encoded["initdata_digest"].startswith("sha384:")


def test_initdata_is_built_from_exactly_the_expected_claims():
    refs = _refs()
    initdata = refs.initdata()
    custom = {k: v for k, v in initdata.claims().items() if k.startswith("io.coco-ai.")}
    assert (
        custom
        == refs.expected_claims()
        == {
            "io.coco-ai.workload": "finetune",
            "io.coco-ai.run-id": "run-1",
            "io.coco-ai.image-digest": "sha256:" + "ab" * 32,
            "io.coco-ai.checkpoint-key": "kbs:///coco-ai-run/checkpoint-key/run-1",
            "io.coco-ai.run-grant": "kbs:///coco-ai-run/grant/run-1",
            "io.coco-ai.run-key-root": "kbs:///coco-ai/run-key-root/v1",
            "io.coco-ai.dataset-key": DATASET_KEY,
        }
    )
    assert refs.initdata_digest.value == initdata.digest()


def test_the_run_initdata_binds_the_guest_to_the_run_image():
    """policy.rego is the agent policy for exactly the run's image running its workload's launch
    and the CDH reads the data owner's image policy: what the resource policies require before
    releasing a key."""
    claims = _refs().initdata().claims()
    assert claims["policy.rego"] == agent_policy_text(IMAGE, FINETUNE.module)
    assert claims["cdh.toml"]["image"] == {"image_security_policy_uri": IMAGE_POLICY_URI}
    other = _refs(image="registry.example/coco-ai/finetune@sha256:" + "cd" * 32)
    assert other.initdata().claims()["policy.rego"] != claims["policy.rego"]
    with pytest.raises(RunRefsError, match="fully qualified"):
        _refs(image="finetune@sha256:" + "ab" * 32)
    with pytest.raises(ValueError, match="module"):
        _refs(module="os; import sys")


def test_two_runs_have_different_initdata():
    assert _refs("run-1").initdata_digest != _refs("run-2").initdata_digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_id": None}, "lack run_id"),
        ({"run_id": "../x"}, "not a run id"),
        ({"workload": "fine tune"}, "workload"),
        ({"image": "registry.example/x:latest"}, "pinned by digest"),
        ({"run_key_root_uri": "kbs:///a/../b"}, r"\.\."),
        ({"run_key_root_uri": "kbs:///a/b"}, "3 segments"),
        ({"run_key_root_uri": None}, "lack run_key_root_uri"),
        ({"checkpoint_key_uri": "kbs:///coco-ai-run/checkpoint-key/other"}, "is not kbs:///"),
        ({"grant_uri": "kbs:///coco-ai-run/grant/other"}, "grant_uri is not"),
        ({"initdata_digest": "sha256:" + "00" * 32}, "sha384"),
        ({"initdata_digest": "sha384:XYZ"}, "hex"),
        ({"inputs": []}, "inputs must be an object"),
        ({"inputs": {"dataset": {"uri": "", "digest": "sha256:" + "0" * 64}}}, "uri"),
        ({"inputs": {"dataset": {"uri": "s3://d", "digest": "sha256:00"}}}, "dataset"),
        ({"inputs": {"Data Set": {"uri": "s3://d", "digest": "sha256:" + "0" * 64}}}, "name"),
        ({"staging_uri": ""}, "staging_uri"),
    ],
)
def test_from_xcom_refuses_malformed_references(change, message):
    data = _refs().to_xcom()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(RunRefsError, match=message):
        RunRefs.from_xcom(data)


def test_from_xcom_refuses_an_annotation_that_is_not_the_pinned_initdata():
    data = _refs().to_xcom()
    data["initdata_annotation"] = _refs("run-2").initdata_annotation
    with pytest.raises(RunRefsError, match="differs from the pinned"):
        RunRefs.from_xcom(data)
    data["initdata_annotation"] = "not base64 gzip"
    with pytest.raises(ValueError):
        RunRefs.from_xcom(data)


@pytest.mark.parametrize("value", [None, "refs", ["run-1"], 7])
def test_from_xcom_refuses_what_is_not_key_release_output(value):
    with pytest.raises(RunRefsError):
        RunRefs.from_xcom(value)


def test_image_pin_and_staging_rules():
    assert pinned_image(IMAGE) == IMAGE
    for bad in ("x:1", "x@sha256:" + "ab" * 31, "X@sha256:" + "ab" * 32, None):
        with pytest.raises(RunRefsError, match="pinned by digest"):
            pinned_image(bad)
    assert staging_location("file:///s//", "r") == "file:///s/r"
    with pytest.raises(RunRefsError, match="empty"):
        staging_location("  ", "r")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("sha256:" + "0f" * 32, True),
        ("sha256:" + "0F" * 32, False),
        ("sha256:" + "0f" * 31, False),
        ("sha384:" + "0f" * 48, False),  # only sha256 unless asked for
        ("md5:" + "0f" * 16, False),
        ("0f" * 32, False),
        (None, False),
    ],
)
def test_digest_rule(text, ok):
    assert is_sha256(text) is ok


def test_digest_accepts_other_algorithms_only_when_asked():
    value = "sha384:" + "0f" * 48
    assert str(Digest.parse(value, algorithms=("sha384",))) == value
    assert Digest.of(b"x").hex == Digest.parse(str(Digest.of(b"x"))).hex


def test_finetune_kind_builds_the_workload_config_from_the_refs():
    refs = _refs()
    config = workload_kind("finetune").config(
        refs, {"lora": {"r": 4, "alpha": None}, "training": {"epochs": 2}}
    )
    assert config["run_id"] == "run-1"
    assert config["staging_uri"] == refs.staging_uri
    assert config["checkpoint_key_uri"] == refs.checkpoint_key.uri()
    assert config["run_key_root_uri"] == "kbs:///coco-ai/run-key-root/v1"
    assert config["dataset"] == {"uri": "s3://data/v1.enc", "key_uri": DATASET_KEY}
    assert config["base_model"] == {"path": "s3://models/smol", "digest": "sha256:" + "22" * 32}
    assert config["lora"]["r"] == 4 and config["lora"]["alpha"] == 16  # None keeps the default
    with pytest.raises(ConfigError, match="unknown settings table"):
        FINETUNE.config(refs, {"optimizer": {}})
    with pytest.raises(ValueError, match="unknown workload 'rag'"):
        workload_kind("rag")


def test_rag_index_kind_builds_its_config_and_claims_its_repository_key():
    repo_key = "kbs:///default/rag/northwind"
    refs = _refs(
        workload="rag_index",
        inputs={
            "documents": RunInput(
                "s3://docs/v3.enc", Digest("sha256", "33" * 32), parse_resource_uri(repo_key)
            ),
            "embedder": RunInput("s3://models/minilm", Digest("sha256", "44" * 32)),
        },
    )
    kind = workload_kind("rag_index")
    assert kind.module == "coco_ai.workloads.rag_index"
    assert [(i.name, i.keyed) for i in kind.inputs] == [("documents", True), ("embedder", False)]
    config = kind.config(refs, {"chunker": {"max_words": 64, "overlap_words": None}})
    assert config["repository"] == {"uri": "s3://docs/v3.enc", "key_uri": repo_key}
    assert config["embedder"] == {"path": "s3://models/minilm", "digest": "sha256:" + "44" * 32}
    assert config["chunker"]["max_words"] == 64 and config["chunker"]["overlap_words"] == 8
    assert config["checkpoint_key_uri"] == refs.checkpoint_key.uri()
    # the TEE of this run may ask for the repository key: its initdata names it
    assert repo_key in refs.expected_claims().values()
    with pytest.raises(ConfigError, match="lora: unknown settings table"):
        kind.config(refs, {"lora": {}})


def test_expected_claims_match_what_the_initdata_builder_accepts():
    # every claim is a custom initdata key: build_initdata refuses anything else
    build_initdata("https://kbs.example", None, _refs().expected_claims())
