"""MLflow model registry (SQLite) records: provenance tags, alias, idempotency, validation."""

from __future__ import annotations

import pytest

from coco_ai.promotion import (
    RegistryError,
    default_registry_uri,
    find_model_version,
    model_versions,
    register_model_version,
    sqlite_registry_uri,
    version_by_alias,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    return sqlite_registry_uri(tmp_path_factory.mktemp("reg") / "sub" / "mlflow.db")


def test_versions_are_keyed_by_manifest_digest_and_the_alias_follows(registry):
    prov_a = {"manifest_digest": DIGEST_A, "run_id": "r1", "metrics": {"eval_loss": 1.25}}
    assert register_model_version("m", "file:///ckpt/a", prov_a, registry_uri=registry) == ("m", 1)
    assert register_model_version("m", "file:///ckpt/a", prov_a, registry_uri=registry) == ("m", 1)
    prov_b = {"manifest_digest": DIGEST_B, "run_id": "r2"}
    assert register_model_version("m", "file:///ckpt/b", prov_b, registry_uri=registry) == ("m", 2)
    assert version_by_alias("m", registry_uri=registry).version == 2

    found = find_model_version("m", DIGEST_A, registry_uri=registry)
    assert found.source == "file:///ckpt/a"
    assert found.tags == {
        "coco-ai.manifest_digest": DIGEST_A,
        "coco-ai.run_id": "r1",
        "coco-ai.metric.eval_loss": "1.25",
    }
    # re-registering an older manifest returns its version, refreshes tags, moves the alias
    refreshed = {**prov_a, "signature_digest": "sha256:" + "5" * 64}
    assert register_model_version("m", "file:///ckpt/a", refreshed, registry_uri=registry) == (
        "m",
        1,
    )
    assert len(model_versions("m", registry_uri=registry)) == 2
    serving = version_by_alias("m", registry_uri=registry)
    assert serving.version == 1
    assert serving.tags["coco-ai.signature_digest"] == "sha256:" + "5" * 64


def test_lookups_of_absent_things_return_none(registry):
    assert version_by_alias("never-registered", registry_uri=registry) is None
    assert find_model_version("never-registered", DIGEST_A, registry_uri=registry) is None
    assert model_versions("never-registered", registry_uri=registry) == []


@pytest.mark.parametrize(
    ("name", "provenance", "message"),
    [
        ("m", {"run_id": "r"}, "needs manifest_digest"),
        ("m", {"manifest_digest": "sha256:abc"}, "needs manifest_digest"),
        ("m", {"manifest_digest": DIGEST_A, "bad key": "x"}, "not a plain identifier"),
        ("m", {"manifest_digest": DIGEST_A, "nested": {"a": 1}}, "not a structure"),
        ("m'; drop", {"manifest_digest": DIGEST_A}, "model name"),
    ],
)
def test_bad_input_is_refused_before_touching_the_registry(registry, name, provenance, message):
    before = model_versions("m", registry_uri=registry)
    with pytest.raises(RegistryError, match=message):
        register_model_version(name, "file:///x", provenance, registry_uri=registry)
    assert model_versions("m", registry_uri=registry) == before


def test_default_registry_uri_is_sqlite_under_coco_ai_home(monkeypatch, tmp_path):
    monkeypatch.delenv("COCO_AI_REGISTRY_URI", raising=False)
    monkeypatch.setenv("COCO_AI_HOME", str(tmp_path / "home"))
    assert default_registry_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    monkeypatch.setenv("COCO_AI_REGISTRY_URI", "sqlite:////elsewhere/mlflow.db")
    assert default_registry_uri() == "sqlite:////elsewhere/mlflow.db"
