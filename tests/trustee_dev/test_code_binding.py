"""The shipped production resource policy releases keys only to the approved code.

EAR tokens are built as Trustee's attestation service builds them: each submod's annotated
evidence is the verifier's claims (TDX, SNP, NVIDIA NRAS / local verifier shapes, as in
test_policies.py) plus `init_data_claims` from Trustee's parse_init_data of the initdata the
guest sent (the stand-in's mirror of it), and its `ear.status` comes from the shipped
attestation policy's trust vector. Only the code binding (image approval, the agent policy in
initdata — image and launch —, the image policy URI) and the named cases vary.
"""

from __future__ import annotations

import copy
import json

import pytest

from coco_ai import policies
from coco_ai.digest import Digest
from coco_ai.guest.agent_policy import (
    IMAGE_PLACEHOLDER,
    LAUNCH_PLACEHOLDER,
    agent_policy_text,
    workload_launch,
)
from coco_ai.guest.initdata import Initdata, build_initdata
from coco_ai.kbs.resource_path import ResourcePath
from coco_ai.runs import RunInput, RunRefs
from coco_ai.trustee_dev.attestation import _initdata as trustee_parse_init_data
from coco_ai.trustee_dev.attestation import _status as ear_status
from coco_ai.trustee_dev.policy import AttestationPolicy, evaluate_resource_policy
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE
from tests.trustee_dev.test_policies import (
    LOCAL,
    NRAS,
    NV_RVS,
    SNP,
    SNP_RVS,
    TDX,
    TDX_RVS,
)

AE = "ear.veraison.annotated-evidence"
KBS = "https://kbs.example:8080"
OTHER_IMAGE = "registry.example/attacker/tool@sha256:" + "6" * 64
OTHER_MODULE = "coco_ai.workloads.unapproved"
DATASET_KEY = ("coco-ai", "dataset-key", "v1")
ROOT = ResourcePath("coco-ai", "run-key-root", "v1")
CPU = {"tdx": (TDX, "attestation_cpu_tdx", TDX_RVS), "snp": (SNP, "attestation_cpu_snp", SNP_RVS)}
GPU = {"h100-nras": NRAS, "h100-local": LOCAL}


def appraised(policy: str, evidence: dict, rvs: dict) -> dict:
    """A submod as Trustee's token broker writes it: status from the shipped policy's vector."""
    vector, _ = AttestationPolicy(policy, policies.load(policy), rvs).appraise(evidence)
    return {
        "ear.status": ear_status(vector),
        "ear.trustworthiness-vector": vector,
        "ear.appraisal-policy-id": "default",
        AE: evidence,
    }


def ear(initdata_toml: str | None, *, cpu="tdx", gpus=("h100-nras",), nv_rvs=NV_RVS) -> dict:
    evidence, policy, rvs = CPU[cpu]
    cpu_evidence = copy.deepcopy(evidence)
    claims = None
    if initdata_toml is not None:
        _, claims = trustee_parse_init_data({"format": "toml", "body": initdata_toml})
    cpu_evidence["init_data_claims"] = claims
    submods = {"cpu0": appraised(policy, cpu_evidence, rvs)}
    for index, gpu in enumerate(gpus):
        submods[f"gpu{index}"] = appraised("attestation_gpu_nvidia", GPU[gpu], nv_rvs)
    return {
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "submods": submods,
    }


def released(
    claims: dict, path=DATASET_KEY, *, kind="prod", approved=(APPROVED_IMAGE,), modules=None
) -> bool:
    request = {"plugin": "resource", "resource-path": list(path), "query": {}}
    text = policies.resource_policy_text(kind, approved, modules)
    return evaluate_resource_policy(text, claims, request)


def bound(
    image: str | None = APPROVED_IMAGE, claims: dict | None = None, module=APPROVED_MODULE
) -> Initdata:
    extra = {"io.coco-ai.run-id": "run-1", **(claims or {})}
    return build_initdata(KBS, None, extra, image=image, module=image and module)


@pytest.mark.parametrize("cpu", sorted(CPU))
@pytest.mark.parametrize("gpu", sorted(GPU))
def test_approved_code_on_affirming_hardware_is_released(cpu, gpu):
    claims = ear(bound().toml, cpu=cpu, gpus=(gpu,))
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    assert claims["submods"]["gpu0"]["ear.status"] == "affirming"
    assert released(claims)
    assert released(ear(bound().toml, cpu=cpu, gpus=(gpu, gpu)))


def test_nothing_is_released_before_the_data_owner_approves_an_image():
    claims = ear(bound().toml)
    assert not released(claims, approved=())
    request = {"plugin": "resource", "resource-path": list(DATASET_KEY), "query": {}}
    for name in ("resource_prod", "resource_dev"):
        assert not evaluate_resource_policy(policies.load(name), claims, request)  # as shipped


def test_an_unapproved_image_is_refused():
    assert not released(ear(bound(OTHER_IMAGE).toml))
    # Approving the other image too releases to it: the set is the approval.
    assert released(ear(bound(OTHER_IMAGE).toml), approved=(APPROVED_IMAGE, OTHER_IMAGE))


def test_initdata_without_the_agent_policy_is_refused():
    digest = APPROVED_IMAGE.partition("@")[2]
    claims = ear(bound(None, {"io.coco-ai.image-digest": digest}).toml)
    assert not released(claims)
    assert not released(ear(None))  # no initdata at all


def _with_agent_policy(initdata: Initdata, policy: str) -> str:
    """The initdata TOML with its policy.rego replaced (the rest, image claim included, kept)."""
    original = agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)
    assert initdata.toml.count(original) == 1
    return initdata.toml.replace(original, policy)


def test_a_permissive_agent_policy_with_the_right_image_claim_is_refused():
    allow_all = "package agent_policy\n\ndefault ExecProcessRequest := true\n"
    assert not released(ear(_with_agent_policy(bound(), allow_all)))
    # The approved policy with exec turned on, or one space changed: not the approved text.
    exec_on = agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE).replace(
        "default ExecProcessRequest := false", "default ExecProcessRequest := true"
    )
    assert not released(ear(_with_agent_policy(bound(), exec_on)))
    spaced = agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE).replace(
        "package agent_policy", "package  agent_policy"
    )
    assert not released(ear(_with_agent_policy(bound(), spaced)))
    # The agent policy of another image under the approved image's digest claim.
    other = agent_policy_text(OTHER_IMAGE, APPROVED_MODULE)
    assert not released(ear(_with_agent_policy(bound(), other)))


def test_an_agent_policy_that_does_not_pin_the_approved_launch_is_refused():
    """The process is part of the binding: a policy admitting another launch, any argv, any
    environment or any mount for the approved image gets no key."""
    assert released(ear(bound().toml))
    approved = agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)
    # The launch of a module the data owner did not approve, with every other byte the same.
    assert not released(ear(bound(module=OTHER_MODULE).toml))
    assert released(ear(bound(module=OTHER_MODULE).toml), modules=[APPROVED_MODULE, OTHER_MODULE])
    assert not released(ear(bound().toml), modules=[OTHER_MODULE])
    weakened = {
        "any argv": approved.replace("\tapproved_process\n", ""),
        "python -c": approved.replace(
            "args[2] == approved_launch", 'args[2] == "import os; print(os.environ)"'
        ),
        "any env": approved.replace("\t\tallowed_env(var)\n", "\t\tis_string(var)\n"),
        "LD_PRELOAD": approved.replace(
            "image_env := {\n", 'image_env := {\n\t"LD_PRELOAD=/x.so",\n'
        ),
        "any mount": approved.replace(
            "\truntime_mounts_only\n\tguest_pulled_root(approved", "\tguest_pulled_root(approved"
        ),
    }
    for why, text in weakened.items():
        assert text != approved, why
        assert not released(ear(_with_agent_policy(bound(), text))), why


def test_a_policy_trustee_reduces_to_policy_data_is_refused():
    genpolicy_like = (
        agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE) + 'policy_data := {"containers": []}\n'
    )
    claims = ear(_with_agent_policy(bound(), genpolicy_like))
    assert "policy.rego" not in claims["submods"]["cpu0"][AE]["init_data_claims"]
    assert not released(claims)


@pytest.mark.parametrize(
    "cdh_image",
    ['image_security_policy_uri = "kbs:///attacker/image-policy/v1"', ""],
    ids=["other-uri", "no-image-policy"],
)
def test_a_guest_not_using_the_owners_image_policy_is_refused(cdh_image):
    initdata = bound()
    owner = 'image_security_policy_uri = "kbs:///coco-ai/image-policy/v1"'
    assert initdata.toml.count(owner) == 1
    assert released(ear(initdata.toml))
    assert not released(ear(initdata.toml.replace(owner, cdh_image)))


def _run(run_id: str) -> RunRefs:
    dataset = RunInput(
        "s3://data/set.enc",
        Digest("sha256", "ab" * 32),
        ResourcePath("coco-ai", "dataset-key", "v1"),
    )
    return RunRefs.plan(
        workload="finetune",
        module="coco_ai.workloads.finetune",
        run_id=run_id,
        image=APPROVED_IMAGE,
        run_key_root=ROOT,
        inputs={"dataset": dataset},
        staging_root="s3://staging",
        kbs_url=KBS,
        kbs_ca_pem=None,
    )


def test_run_grant_and_root_go_only_to_the_run_that_names_them():
    run_a, run_b = _run("run-a"), _run("run-b")
    grant_a = tuple(run_a.grant.url_path().split("/"))
    claims_a, claims_b = ear(run_a.initdata().toml), ear(run_b.initdata().toml)
    assert released(claims_a, grant_a)
    assert not released(claims_b, grant_a)  # approved code, but another run's initdata
    assert released(claims_b, tuple(ROOT.url_path().split("/")))
    assert released(claims_a, DATASET_KEY)


def test_sample_evidence_is_refused_in_prod_and_accepted_in_dev():
    sample = ear(bound().toml)
    sample["submods"]["cpu0"][AE] = {
        "sample": {"svn": "1"},
        "init_data_claims": sample["submods"]["cpu0"][AE]["init_data_claims"],
    }
    assert not released(sample)
    assert released(sample, kind="dev")
    assert not released(sample, kind="dev", approved=())  # dev binds the code all the same


def test_a_gpu_in_warning_or_too_few_gpus_are_refused():
    old_driver = dict(NV_RVS, allowed_driver_versions=["535.0"])
    warning = ear(bound().toml, gpus=("h100-nras",), nv_rvs=old_driver)
    assert warning["submods"]["gpu0"]["ear.status"] == "warning"
    assert not released(warning)
    mixed = ear(bound().toml, gpus=("h100-nras",))
    mixed["submods"]["gpu1"] = warning["submods"]["gpu0"]
    assert not released(mixed)
    assert not released(ear(bound().toml, gpus=()))


def test_the_rego_render_of_the_agent_policy_is_the_python_render():
    """The resource policy builds the expected agent policy from the template it embeds; it
    must be byte-identical to agent_policy_text, or no guest would ever match."""
    from coco_ai.policies import load_regopy

    for image in (APPROVED_IMAGE, OTHER_IMAGE, "localhost/coco-ai-finetune@sha256:" + "0" * 64):
        for module in (APPROVED_MODULE, OTHER_MODULE):
            text = policies.resource_policy_text("prod", [image], [module])
            interp = load_regopy().Interpreter()
            interp.add_module("resource-policy", text)
            interp.set_input_term("{}")
            output = interp.query(
                "some image in data.policy.approved_images; "
                "some launch in data.policy.approved_launches; "
                "text := data.policy.agent_policy(image, launch)"
            )
            bindings = json.loads(str(output))["bindings"]
            assert (bindings["image"], bindings["launch"]) == (image, workload_launch(module))
            assert bindings["text"] == agent_policy_text(image, module)
    text = policies.resource_policy_text("dev", [APPROVED_IMAGE])
    assert IMAGE_PLACEHOLDER in text and LAUNCH_PLACEHOLDER in text


def test_the_render_fills_each_approval_line_and_refuses_bad_templates():
    text = policies.resource_policy_text("prod", [OTHER_IMAGE, APPROVED_IMAGE, APPROVED_IMAGE])
    assert f'approved_images := {{"{OTHER_IMAGE}", "{APPROVED_IMAGE}"}}' in text  # sorted
    assert 'image_security_policy_uri := "kbs:///coco-ai/image-policy/v1"' in text
    # Every workload kind's and service's launch by default; the data owner may approve fewer.
    launches = {workload_launch(module) for module in policies.launchable_modules()}
    assert APPROVED_MODULE in policies.workload_modules()
    assert set(policies.SERVICE_MODULES) < set(policies.launchable_modules())
    assert f"approved_launches := {{{', '.join(json.dumps(x) for x in sorted(launches))}}}" in text
    assert "approved_launches := set()" in policies.resource_policy_text("prod", [], [])
    assert text == policies.resource_policy_text("prod", [APPROVED_IMAGE, OTHER_IMAGE])
    with pytest.raises(ValueError, match="pinned by digest"):
        policies.resource_policy_text("prod", ["registry.example/coco-ai/finetune:latest"])
    with pytest.raises(KeyError):
        policies.resource_policy_text("staging", [APPROVED_IMAGE])
    with pytest.raises(ValueError, match="approved_images := set"):
        policies.render_resource_policy("package policy\n", [APPROVED_IMAGE])
    # Dev differs from prod only in the ban on sample evidence.
    prod, dev = (policies.resource_policy_text(k, [APPROVED_IMAGE]) for k in ("prod", "dev"))
    assert "development_evidence" in prod and "development_evidence" not in dev


def test_the_policy_cli_prints_what_the_data_owner_uploads(capsys):
    from coco_ai.cli import main
    from coco_ai.guest.image_policy import image_policy_json

    assert main(["policy", "render", "--kind", "prod", "--image", APPROVED_IMAGE]) == 0
    assert capsys.readouterr().out == policies.resource_policy_text("prod", [APPROVED_IMAGE])
    only = [
        "policy",
        "render",
        "--kind",
        "prod",
        "--image",
        APPROVED_IMAGE,
        "--module",
        OTHER_MODULE,
    ]
    assert main(only) == 0
    out = capsys.readouterr().out
    assert out == policies.resource_policy_text("prod", [APPROVED_IMAGE], [OTHER_MODULE])
    assert json.dumps(workload_launch(APPROVED_MODULE)) not in out
    assert main([*only[:-1], "os; id"]) == 2
    assert "not a Python module name" in capsys.readouterr().err
    assert main(["policy", "image-policy", "--image", APPROVED_IMAGE]) == 0
    assert capsys.readouterr().out == image_policy_json([APPROVED_IMAGE])
    tagged = "registry.example/coco-ai/finetune:latest"
    assert main(["policy", "render", "--kind", "dev", "--image", tagged]) == 2
    assert "pinned by digest" in capsys.readouterr().err
