"""install_confidential_kit refuses what is not a kit, or a party outside the federation."""

from __future__ import annotations

import json

import pytest

from coco_ai.federated.credentials import issue_federation
from coco_ai.federated.startup_kit import (
    AUTHORIZER_CLASS,
    CC_MANAGER_CLASS,
    DROPPED_SITE_GUARD_CLASS,
    StartupKitError,
    install_confidential_kit,
)


def test_install_into_a_kit_and_refusals(tmp_path) -> None:
    bundle = issue_federation("fed-kit", "server", ["dept-a"]).bundles[1]
    args = {"guest_api_url": "http://127.0.0.1:1", "trust_anchor_path": "/anchor.pem"}
    with pytest.raises(StartupKitError, match="not an NVFlare startup kit"):
        install_confidential_kit(tmp_path, bundle, cc_enabled_sites=["dept-a"], **args)
    (tmp_path / "startup").mkdir()
    (tmp_path / "local").mkdir()
    with pytest.raises(StartupKitError, match="not among the CC-enabled sites"):
        install_confidential_kit(tmp_path, bundle, cc_enabled_sites=["server"], **args)
    with pytest.raises(StartupKitError, match="cannot read"):
        install_confidential_kit(tmp_path, bundle, cc_enabled_sites=["server", "dept-a"], **args)
    (tmp_path / "local" / "resources.json.default").write_text(
        json.dumps({"class_allow_list": ["x.Y"], "components": [{"id": "keep", "path": "x.Y"}]})
    )
    target = install_confidential_kit(
        tmp_path, bundle, cc_enabled_sites=["server", "dept-a"], **args
    )
    resources = json.loads(target.read_text())
    assert [c["id"] for c in resources["components"]] == [
        "keep",
        "coco_ai_trustee_cc_authorizer",
        "coco_ai_cc_manager",
    ]
    assert {AUTHORIZER_CLASS, CC_MANAGER_CLASS, DROPPED_SITE_GUARD_CLASS, "x.Y"} == set(
        resources["class_allow_list"]
    )
    authorizer = resources["components"][1]["args"]
    assert authorizer["federation"] == "fed-kit"
    assert "run_id" not in authorizer  # no run pinned unless asked
    assert authorizer["accepted_participants"] == ["server", "dept-a"]
    assert authorizer["allow_development_evidence"] is False
    assert (tmp_path / "startup" / "client.key").read_bytes() == bundle.key_pem
    assert (tmp_path / "startup" / "rootCA.pem").read_bytes() == bundle.ca_pem
    pinned = install_confidential_kit(
        tmp_path, bundle, cc_enabled_sites=["server", "dept-a"], run_id="run-7", **args
    )
    assert json.loads(pinned.read_text())["components"][1]["args"]["run_id"] == "run-7"
