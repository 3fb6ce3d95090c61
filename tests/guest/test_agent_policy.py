"""The Kata agent policy of a run, evaluated by regopy on requests shaped as the Kata agent
sends them (kata-containers src/agent/policy, genpolicy rules.rego: `data.agent_policy.<Request>`
with the request as input; a request whose rule is not true is refused)."""

from __future__ import annotations

import json

import pytest

from coco_ai.guest.agent_policy import (
    AGENT_POLICY_TEMPLATE,
    AgentPolicyError,
    agent_policy_text,
)
from coco_ai.guest.image_policy import IMAGE_POLICY_URI, image_policy_json
from coco_ai.guest.initdata import AGENT_POLICY_KEY, InitdataError, build_initdata
from coco_ai.policies import load_regopy
from coco_ai.trustee_dev.attestation import _initdata as trustee_parse_init_data
from tests.code_binding import APPROVED_IMAGE

OTHER_DIGEST = "registry.example/coco-ai/finetune@sha256:" + "6" * 64
OTHER_IMAGE = "registry.example/attacker/tool@sha256:" + "5" * 64
ROOT = "/run/kata-containers/" + "ab" * 32 + "/rootfs"


def decision(text: str, request: str, request_input: dict) -> bool:
    """The agent's answer: True only for a defined, true result (undefined or false refuse)."""
    interp = load_regopy().Interpreter()
    interp.add_module("agent_policy", text)
    interp.set_input_term(json.dumps(request_input))
    output = interp.query(f"decision := data.agent_policy.{request}")
    if not output.ok():
        return False
    parsed = json.loads(str(output)) if str(output) != "undefined" else {}
    return parsed.get("bindings", {}).get("decision") is True


def create_container(image: str, *, container_type: str = "container", args=None) -> dict:
    """A CreateContainerRequest input for a guest-pulled image (fields the agent serialises)."""
    annotations = {
        "io.kubernetes.cri.container-type": container_type,
        "io.kubernetes.cri.sandbox-name": "finetune-run-1",
        "io.kubernetes.cri.sandbox-namespace": "coco-ai",
    }
    if container_type == "container":
        annotations["io.kubernetes.cri.image-name"] = image
    return {
        "container_id": "c" * 64,
        "OCI": {
            "Version": "1.1.0",
            "Annotations": annotations,
            "Hooks": None,
            "Process": {"Args": args or ["/bin/sh", "-c", "exec python -m workload"]},
            "Root": {"Path": ROOT, "Readonly": False},
        },
        "storages": [
            {
                "driver": "image_guest_pull",
                "driver_options": ['image_guest_pull={"metadata":{}}'],
                "source": image,
                "fstype": "overlay",
                "options": [],
                "mount_point": ROOT,
            }
        ],
        "devices": [],
        "sandbox_pidns": False,
    }


@pytest.fixture(scope="module")
def policy() -> str:
    return agent_policy_text(APPROVED_IMAGE)


def test_the_approved_image_and_the_guest_pause_container_are_allowed(policy):
    assert decision(policy, "CreateContainerRequest", create_container(APPROVED_IMAGE))
    pause = create_container("pause", container_type="sandbox", args=["/pause"])
    assert decision(policy, "CreateContainerRequest", pause)


@pytest.mark.parametrize(
    "image",
    [OTHER_IMAGE, OTHER_DIGEST, "registry.example/coco-ai/finetune:latest"],
    ids=["other-image", "other-digest", "tag-only"],
)
def test_any_other_image_is_refused(policy, image):
    assert not decision(policy, "CreateContainerRequest", create_container(image))


def test_the_annotation_and_the_pulled_image_must_both_be_the_approved_one(policy):
    # The host names the approved image but has the guest pull another one.
    pulls_other = create_container(APPROVED_IMAGE)
    pulls_other["storages"][0]["source"] = OTHER_IMAGE
    assert not decision(policy, "CreateContainerRequest", pulls_other)
    # Or pulls the approved image while the container's root is a host-provided one.
    host_root = create_container(APPROVED_IMAGE)
    host_root["OCI"]["Root"]["Path"] = "/run/kata-containers/shared/containers/x/rootfs"
    assert not decision(policy, "CreateContainerRequest", host_root)
    no_pull = create_container(APPROVED_IMAGE)
    no_pull["storages"] = []
    assert not decision(policy, "CreateContainerRequest", no_pull)
    two_pulls = create_container(APPROVED_IMAGE)
    two_pulls["storages"].append(dict(two_pulls["storages"][0], source=OTHER_IMAGE))
    assert not decision(policy, "CreateContainerRequest", two_pulls)
    hooks = create_container(APPROVED_IMAGE)
    hooks["OCI"]["Hooks"] = {"Prestart": [{"Path": "/bin/sh"}]}
    assert not decision(policy, "CreateContainerRequest", hooks)


def test_the_pause_container_must_be_the_guest_pause_running_pause(policy):
    shell = create_container("pause", container_type="sandbox", args=["/bin/sh"])
    assert not decision(policy, "CreateContainerRequest", shell)
    pulled = create_container(OTHER_IMAGE, container_type="sandbox", args=["/pause"])
    assert not decision(policy, "CreateContainerRequest", pulled)


def test_exec_policy_replacement_and_unknown_requests_are_refused(policy):
    exec_input = {"container_id": "c" * 64, "process": {"Args": ["/bin/sh"]}}
    assert not decision(policy, "ExecProcessRequest", exec_input)
    permissive = "package agent_policy\n\ndefault ExecProcessRequest := true\n"
    assert not decision(policy, "SetPolicyRequest", {"policy": permissive})
    assert not decision(policy, "WriteStreamRequest", {"data": "aWQK"})
    assert not decision(policy, "NoSuchRequest", {})
    # Life-cycle requests stay allowed, or the pod could not run at all.
    assert decision(policy, "StartContainerRequest", {"container_id": "c" * 64})
    assert decision(policy, "ReadStreamRequest", {})


def test_copied_files_stay_in_the_shared_directory(policy):
    shared = "/run/kata-containers/shared/containers/" + "ab" * 32 + "-0123456789abcdef-hosts"
    assert decision(policy, "CopyFileRequest", {"path": shared})
    assert not decision(policy, "CopyFileRequest", {"path": ROOT + "/usr/bin/python"})
    escape = "/run/kata-containers/shared/containers/../" + "ab" * 32 + "/rootfs/x"
    assert not decision(policy, "CopyFileRequest", {"path": escape})


def test_the_text_is_deterministic_and_refuses_unpinned_references():
    assert agent_policy_text(APPROVED_IMAGE) == agent_policy_text(APPROVED_IMAGE)
    assert agent_policy_text(APPROVED_IMAGE) != agent_policy_text(OTHER_DIGEST)
    assert f'approved_image := "{APPROVED_IMAGE}"' in agent_policy_text(APPROVED_IMAGE)
    for bad in (
        "registry.example/coco-ai/finetune:latest",
        "registry.example/coco-ai/finetune",
        "coco-ai/finetune@sha256:" + "5" * 64,  # not qualified: docker.io/ expansion
        "registry.example/coco-ai/finetune@sha256:" + "5" * 63,
        'registry.example/x"@sha256:' + "5" * 64,
        None,
    ):
        with pytest.raises(AgentPolicyError, match="pinned by digest"):
            agent_policy_text(bad)  # type: ignore[arg-type]


def test_trustee_keeps_the_policy_text_as_the_claim():
    """No `policy_data := {` in the text, so Trustee's parse_init_data keeps `policy.rego`
    verbatim (the stand-in mirrors it) instead of replacing it with agent_policy_claims."""
    assert "policy_data := {" not in AGENT_POLICY_TEMPLATE
    initdata = build_initdata("https://kbs.example", None, image=APPROVED_IMAGE)
    _, claims = trustee_parse_init_data({"format": "toml", "body": initdata.toml})
    assert claims[AGENT_POLICY_KEY] == agent_policy_text(APPROVED_IMAGE)
    assert "agent_policy_claims" not in claims
    assert claims["cdh.toml"]["image"]["image_security_policy_uri"] == IMAGE_POLICY_URI
    assert claims["io.coco-ai.image-digest"] == APPROVED_IMAGE.partition("@")[2]
    # A genpolicy-style policy, policy_data last, would lose its rules in the claim.
    end = "}\n" + "'" * 3  # the end of policy.rego's TOML literal string
    assert initdata.toml.count(end) == 1
    with_data = initdata.toml.replace(end, '}\npolicy_data := {"a": 1}\n' + "'" * 3)
    _, replaced = trustee_parse_init_data({"format": "toml", "body": with_data})
    assert AGENT_POLICY_KEY not in replaced and replaced["agent_policy_claims"] == {"a": 1}


def test_initdata_refuses_an_image_digest_claim_of_another_image():
    with pytest.raises(InitdataError, match="is not the digest of"):
        build_initdata(
            "https://kbs.example",
            None,
            {"io.coco-ai.image-digest": OTHER_DIGEST.partition("@")[2]},
            image=APPROVED_IMAGE,
        )
    with pytest.raises(InitdataError, match="pinned by digest"):
        build_initdata("https://kbs.example", None, image="registry.example/x:latest")


def test_image_policy_rejects_by_default_and_accepts_only_approved_digests():
    document = json.loads(image_policy_json([OTHER_DIGEST, APPROVED_IMAGE, APPROVED_IMAGE]))
    assert document["default"] == [{"type": "reject"}]
    assert document["transports"] == {
        "docker": {
            APPROVED_IMAGE: [{"type": "insecureAcceptAnything"}],
            OTHER_DIGEST: [{"type": "insecureAcceptAnything"}],
        }
    }
    assert image_policy_json([APPROVED_IMAGE, OTHER_DIGEST]) == image_policy_json(
        [OTHER_DIGEST, APPROVED_IMAGE]
    )
    nothing = json.loads(image_policy_json([]))
    assert nothing == {"default": [{"type": "reject"}], "transports": {"docker": {}}}
    with pytest.raises(AgentPolicyError):
        image_policy_json(["registry.example/coco-ai/finetune:latest"])
