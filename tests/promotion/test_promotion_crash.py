"""A promotion killed mid-step (the worker lost while it holds the registry lock) leaves the
served version alone, and its retry finishes it: one new version, the alias moved once."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coco_ai.promotion import model_versions, promote, sqlite_registry_uri, version_by_alias
from coco_ai.promotion.registry import ALIAS_PENDING_TAG

from .conftest import MODEL

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("crash_at", "registered_before_retry", "how"),
    [
        # record and signature written, nothing registered yet
        ("create_model_version", False, "kill"),
        # the version registered, the alias not yet moved to it
        ("set_registered_model_alias", True, "kill"),
        # ... and the same point reached by the task's execution_timeout instead of a kill
        ("set_registered_model_alias", True, "timeout"),
        # the alias moved, the pending mark not yet cleared
        ("delete_model_version_tag", True, "kill"),
    ],
)
def test_a_promotion_killed_mid_registration_is_finished_by_its_retry(
    crash_at,
    registered_before_retry,
    how,
    checkpoints,
    initdata,
    owner_policy,
    promotion_keys,
    tmp_path,
):
    registry = sqlite_registry_uri(tmp_path / "registry" / "mlflow.db")
    common = {
        "owner_policy": owner_policy,
        "initdata": initdata,
        "signing_key_path": promotion_keys[0],
        "registry_uri": registry,
    }
    first = promote(str(checkpoints.make("v1", created_at=time.time() - 120)), **common)
    challenger = str(checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0}))
    args = tmp_path / "promote-args.pickle"
    args.write_bytes(pickle.dumps({"checkpoint_uri": challenger, **common}))

    crashed = subprocess.run(
        [sys.executable, str(HERE / "crash_promote.py"), str(args), crash_at, how],
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = -signal.SIGKILL if how == "kill" else 3  # crash_promote.TIMED_OUT
    assert crashed.returncode == expected, crashed.stderr[-3000:]

    versions = {v.version: v for v in model_versions(MODEL, registry_uri=registry)}
    assert sorted(versions) == ([1, 2] if registered_before_retry else [1])
    served = version_by_alias(MODEL, registry_uri=registry)
    if crash_at == "delete_model_version_tag":
        assert served.version == 2 and versions[2].alias_pending
    else:
        # a half-done promotion never serves: the champion stays
        assert served.version == first.version == 1
        if registered_before_retry:
            assert versions[2].alias_pending

    retried = promote(challenger, **common)

    assert retried.version == 2
    versions = model_versions(MODEL, registry_uri=registry)
    assert sorted(v.version for v in versions) == [1, 2], "the retry registered a duplicate"
    assert not any(ALIAS_PENDING_TAG in v.tags for v in versions)
    assert version_by_alias(MODEL, registry_uri=registry).version == 2
    record = json.loads(Path(retried.record_uri).read_bytes())
    assert record["champion"]["version"] == 1
    assert record["champion"]["manifest_digest"] == first.evidence.manifest_digest


def test_a_version_served_and_replaced_is_still_a_refused_rollback(
    checkpoints, initdata, owner_policy, promotion_keys, tmp_path
):
    """The pending mark is what lets a retry finish; a version that was served (mark cleared)
    and then replaced cannot be re-served by replaying its promotion."""
    from coco_ai.promotion import PromotionRefused

    registry = sqlite_registry_uri(tmp_path / "registry" / "mlflow.db")
    common = {
        "owner_policy": owner_policy,
        "initdata": initdata,
        "signing_key_path": promotion_keys[0],
        "registry_uri": registry,
    }
    first = promote(str(checkpoints.make("v1", created_at=time.time() - 120)), **common)
    better = checkpoints.make("v2", metrics={"eval_loss": 1.0, "eval_loss_before": 3.0})
    promote(str(better), **common)
    with pytest.raises(PromotionRefused, match="rollback: this checkpoint is already version 1"):
        promote(first.evidence.checkpoint_uri, **common)
    assert version_by_alias(MODEL, registry_uri=registry).version == 2
