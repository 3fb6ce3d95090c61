"""The resource policies release a retrieval-service caller credential only to an attested TEE
running approved code whose initdata names that credential: the caller it identifies, or the
service that admits the caller (regopy, the shipped Rego, as Trustee evaluates it)."""

from __future__ import annotations

import pytest

from coco_ai import policies
from coco_ai.guest.initdata import build_initdata
from coco_ai.trustee_dev.policy import evaluate_resource_policy
from coco_ai.workloads.rag_serve.identity import (
    SERVICE_MODULE,
    caller_claims,
    credential_path,
    service_claims,
)
from tests.code_binding import APPROVED_IMAGE

AE = "ear.veraison.annotated-evidence"
ALICE = ("coco-ai-rag", "caller-credential", "alice")
CALLER_MODULE = "coco_ai.workloads.rag_serve.client"


def token(claims: dict, *, module: str, gpus: int = 1, image: str = APPROVED_IMAGE) -> dict:
    initdata = build_initdata("https://kbs.example", None, claims, image=image, module=module)
    subs = {
        "cpu0": {"ear.status": "affirming", AE: {"tdx": {}, "init_data_claims": initdata.claims()}}
    }
    for i in range(gpus):
        subs[f"gpu{i}"] = {"ear.status": "affirming", AE: {"nvidia": {}}}
    return {"submods": subs}


def allowed(policy: str, claims: dict, path=ALICE) -> bool:
    request = {"plugin": "resource", "resource-path": list(path), "query": {}}
    return evaluate_resource_policy(policies.policy_text(policy, [APPROVED_IMAGE]), claims, request)


def caller(caller_id: str, **kw) -> dict:
    claims = caller_claims(run_id="run-c1", image=APPROVED_IMAGE, caller_id=caller_id)
    return token(claims, module=CALLER_MODULE, **kw)


def service(callers: list[str]) -> dict:
    claims = service_claims(
        run_id="run-s1",
        image=APPROVED_IMAGE,
        index_run_id="run-i1",
        index_manifest_digest="sha256:" + "0" * 64,
        trust_anchor_pem=b"anchor",
        callers=callers,
    )
    return token(claims, module=SERVICE_MODULE)


@pytest.mark.parametrize("policy", ["resource_prod", "resource_dev"])
def test_caller_credential_only_to_the_tee_that_names_it(policy) -> None:
    assert credential_path("alice").uri() == "kbs:///" + "/".join(ALICE)
    assert allowed(policy, caller("alice"))
    assert not allowed(policy, caller("bob"))  # another identity
    assert not allowed(policy, caller("alice", gpus=0))  # still attested in full
    assert allowed(policy, service(["alice", "bob"]))  # the service that admits alice
    assert not allowed(policy, service(["bob"]))  # a service that does not
    # approved code only: the same claims under a launch the data owner did not approve
    claims = caller_claims(run_id="run-c1", image=APPROVED_IMAGE, caller_id="alice")
    assert not allowed(policy, token(claims, module="coco_ai.not_approved"))


@pytest.mark.parametrize("policy", ["resource_prod", "resource_dev"])
def test_a_service_gets_its_index_key_and_never_the_run_key_root(policy) -> None:
    from coco_ai.run_keys import DEFAULT_ROOT
    from coco_ai.workloads.rag_serve.identity import index_key_path

    own = tuple(index_key_path("run-i1").uri().removeprefix("kbs:///").split("/"))
    other = tuple(index_key_path("run-i2").uri().removeprefix("kbs:///").split("/"))
    root = tuple(DEFAULT_ROOT.uri().removeprefix("kbs:///").split("/"))
    assert allowed(policy, service(["alice"]), path=own)
    assert not allowed(policy, service(["alice"]), path=other)  # another index's key
    assert not allowed(policy, service(["alice"]), path=root)  # the root: not named, not released
    assert not allowed(policy, caller("alice"), path=own)  # a caller never gets an index key
