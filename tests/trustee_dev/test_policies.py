"""The shipped Rego policies, evaluated by regopy on synthetic claims (as Trustee would)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from coco_ai import policies
from coco_ai.guest.initdata import build_initdata
from coco_ai.trustee_dev.policy import AttestationPolicy, check_policy, evaluate_resource_policy
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

# the real Trustee token claims, copied from shared/fixtures (see tests/kbs/data/README.md)
FIXTURE = Path(__file__).resolve().parent.parent / "kbs" / "data" / "example.token.json"
AE = "ear.veraison.annotated-evidence"


def appraise(name: str, claims: dict, rvs: dict) -> dict[str, int]:
    vector, _ = AttestationPolicy(name, policies.load(name), rvs).appraise(claims)
    return vector


def test_accessors():
    names = policies.names()
    assert {
        "resource_prod",
        "resource_dev",
        "attestation_cpu_tdx",
        "attestation_gpu_nvidia",
    } <= set(names)
    for name in names:
        text = policies.load(name)
        assert text.startswith("# CoCo AI Pipelines")
        assert policies.digest(name) == hashlib.sha256(text.encode()).hexdigest()
        check_policy(name, text)  # every shipped file compiles
    for mapping in policies.POLICY_SETS.values():
        assert set(mapping) == {"resource-policy", "default_cpu", "default_gpu"}
        assert set(mapping.values()) <= set(names)
    with pytest.raises(KeyError):
        policies.load("../resource_prod")


# -- attestation policies ----------------------------------------------------------------

TDX = {
    "tdx": {
        "quote": {
            "header": {"tee_type": "81000000", "vendor_id": "939a7233f79c4ca9940a0db3957f0607"},
            "body": {"mr_td": "aa" * 48, "rtmr_1": "11" * 48, "rtmr_2": "22" * 48, "xfam": "e7"},
        },
        "tcb_status": "UpToDate",
        "collateral_expiration_status": "0",
        "td_attributes": {"debug": False},
    },
    "report_data": "00" * 64,
    "init_data": "00" * 48,
}
TDX_RVS = {"mr_td": ["aa" * 48], "rtmr_1": ["11" * 48], "rtmr_2": ["22" * 48], "xfam": ["e7"]}


def test_tdx_policy():
    good = appraise("attestation_cpu_tdx", TDX, TDX_RVS)
    assert (good["hardware"], good["executables"], good["configuration"]) == (2, 3, 2)
    assert appraise("attestation_cpu_tdx", TDX, {})["hardware"] == 97  # no RVs: contraindicated
    stale = copy.deepcopy(TDX)
    stale["tdx"]["tcb_status"] = "OutOfDate"
    assert appraise("attestation_cpu_tdx", stale, TDX_RVS)["hardware"] == 97
    debug = copy.deepcopy(TDX)
    debug["tdx"]["td_attributes"]["debug"] = True
    assert appraise("attestation_cpu_tdx", debug, TDX_RVS)["configuration"] == 36
    other_kernel = copy.deepcopy(TDX)
    other_kernel["tdx"]["quote"]["body"]["rtmr_2"] = "33" * 48
    assert appraise("attestation_cpu_tdx", other_kernel, TDX_RVS)["executables"] == 33
    assert appraise("attestation_cpu_tdx", {"sample": {"svn": "1"}}, TDX_RVS)["hardware"] == 97


SNP = {
    "snp": {
        "measurement": "ab" * 48,
        "reported_tcb_bootloader": 9,
        "reported_tcb_microcode": 72,
        "reported_tcb_snp": 23,
        "reported_tcb_tee": 0,
        "policy_debug_allowed": False,
        "policy_migrate_ma": False,
    }
}
SNP_RVS = {
    "snp_launch_measurement": ["ab" * 48],
    "snp_bootloader": [9],
    "snp_microcode": [72],
    "snp_snp_svn": [23],
    "snp_tee_svn": [0],
}


def test_snp_policy():
    good = appraise("attestation_cpu_snp", SNP, SNP_RVS)
    assert (good["hardware"], good["executables"], good["configuration"]) == (2, 3, 2)
    old_fw = copy.deepcopy(SNP)
    old_fw["snp"]["reported_tcb_microcode"] = 70
    assert appraise("attestation_cpu_snp", old_fw, SNP_RVS)["hardware"] == 97
    debug = copy.deepcopy(SNP)
    debug["snp"]["policy_debug_allowed"] = True
    assert appraise("attestation_cpu_snp", debug, SNP_RVS)["configuration"] == 36
    assert appraise("attestation_cpu_snp", SNP, {})["executables"] == 33


NRAS = {
    "nvidia": {
        "x-nvidia-gpu-attestation-report-cert-chain": {
            "x-nvidia-cert-status": "valid",
            "x-nvidia-cert-ocsp-status": "good",
        },
        "x-nvidia-gpu-attestation-report-signature-verified": True,
        "x-nvidia-gpu-arch-check": True,
        "measres": "success",
        "x-nvidia-gpu-driver-rim-signature-verified": True,
        "x-nvidia-gpu-vbios-rim-signature-verified": True,
        "secboot": True,
        "dbgstat": "disabled",
        "x-nvidia-gpu-vbios-version": "96.00.9f.00.04",
        "x-nvidia-gpu-driver-version": "570.124.06",
    }
}
LOCAL = {
    "nvidia": {
        "arch": "HOPPER",
        "uuid": "GPU-1",
        "measurements": {"0": "aa" * 48, "1": "bb" * 48},
        "config": {"vbios_version": "96.00.9f.00.04", "driver_version": "570.124.06"},
    }
}
NV_RVS = {
    "allowed_vbios_versions": ["96.00.9f.00.04"],
    "allowed_driver_versions": ["570.124.06"],
    "gpu_measurements": {"0": "aa" * 48, "1": "bb" * 48},
}


@pytest.mark.parametrize("claims", [NRAS, LOCAL], ids=["nras", "local"])
def test_nvidia_policy(claims):
    good = appraise("attestation_gpu_nvidia", claims, NV_RVS)
    assert (good["hardware"], good["executables"], good["configuration"]) == (2, 3, 2)
    old_driver = dict(NV_RVS, allowed_driver_versions=["535.0"])
    assert appraise("attestation_gpu_nvidia", claims, old_driver)["configuration"] == 36


def test_nvidia_local_measurement_mismatch_and_revoked_cert():
    tampered = copy.deepcopy(LOCAL)
    tampered["nvidia"]["measurements"]["1"] = "cc" * 48
    assert appraise("attestation_gpu_nvidia", tampered, NV_RVS)["executables"] == 33
    revoked = copy.deepcopy(NRAS)
    revoked["nvidia"]["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] = (
        "revoked"
    )
    assert appraise("attestation_gpu_nvidia", revoked, NV_RVS)["hardware"] == 97
    # No approved measurements registered: nothing is recognised.
    assert appraise("attestation_gpu_nvidia", LOCAL, {})["executables"] == 33


def test_sample_policies_and_identifiers_extension():
    sample = {
        "sample": {
            "svn": "1",
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        },
        "init_data_claims": {
            "agent_policy_claims": {
                "containers": [
                    {"OCI": {"Annotations": {"io.kubernetes.cri.image-name": "reg/img@sha256:1"}}}
                ]
            }
        },
    }
    rvs = policies.DEV_SAMPLE_REFERENCE_VALUES
    policy = AttestationPolicy(
        "attestation_cpu_sample", policies.load("attestation_cpu_sample"), rvs
    )
    vector, extensions = policy.appraise(sample)
    assert (vector["hardware"], vector["executables"], vector["configuration"]) == (2, 3, 2)
    assert extensions == [
        {
            "name": "ear.trustee.identifiers",
            "key": -18,
            "value": {"validated": {"container_images": ["reg/img@sha256:1"]}},
        }
    ]
    assert appraise("attestation_cpu_sample", sample, dict(rvs, svn=["2"]))["hardware"] == 97
    device = {"sampledevice": {"svn": "2"}}
    assert appraise("attestation_gpu_sampledevice", device, rvs)["hardware"] == 2
    assert (
        appraise("attestation_gpu_sampledevice", {"sampledevice": {"svn": "3"}}, rvs)["hardware"]
        == 97
    )


# -- resource policies -------------------------------------------------------------------


def submod(status: str, tee: str, **evidence) -> dict:
    return {"ear.status": status, AE: {tee: {}, **evidence}}


# init_data_claims of a guest bound to the approved image (tests/trustee_dev/test_code_binding.py
# varies the binding itself); `token(claims=…)` adds a run's io.coco-ai.* claims to them.
BOUND = build_initdata(
    "https://kbs.example", None, image=APPROVED_IMAGE, module=APPROVED_MODULE
).claims()


def token(*, cpu="affirming", gpus=("affirming",), cpu_tee="tdx", gpu_tee="nvidia", claims=None):
    subs = {"cpu0": submod(cpu, cpu_tee, init_data_claims={**BOUND, **(claims or {})})}
    for i, status in enumerate(gpus):
        subs[f"gpu{i}"] = submod(status, gpu_tee)
    return {"submods": subs}


def allowed(policy: str, claims: dict, path=("coco-ai", "dataset-key", "d"), plugin="resource"):
    request = {"plugin": plugin, "resource-path": list(path), "query": {}}
    text = policies.policy_text(policy, [APPROVED_IMAGE])
    return evaluate_resource_policy(text, claims, request)


@pytest.mark.parametrize("policy", ["resource_prod", "resource_dev"])
def test_resource_policy_common_rules(policy):
    assert allowed(policy, token())
    assert allowed(policy, token(gpus=("affirming", "affirming")))
    assert not allowed(policy, token(gpus=()))  # no GPU evidence
    assert not allowed(policy, token(cpu="warning"))
    assert not allowed(policy, token(gpus=("affirming", "contraindicated")))
    assert not allowed(policy, token(), plugin="nebula-ca")
    assert not allowed(policy, token(), path=("a", "b"))
    assert not allowed(policy, {})
    cpu_only_switch = token()
    cpu_only_switch["submods"]["switch0"] = submod("warning", "nvidia")
    assert not allowed(policy, cpu_only_switch)


@pytest.mark.parametrize("policy", ["resource_prod", "resource_dev"])
def test_per_run_keys_pinned_to_initdata(policy):
    path = ("coco-ai-run", "key", "abc")
    named = {"io.coco-ai.run-id": "r1", "io.coco-ai.checkpoint-key": "kbs:///coco-ai-run/key/abc"}
    assert allowed(policy, token(claims=named), path=path)
    other = dict(named, **{"io.coco-ai.checkpoint-key": "kbs:///coco-ai-run/key/xyz"})
    assert not allowed(policy, token(claims=other), path=path)
    assert not allowed(policy, token(claims=None), path=path)
    # Only io.coco-ai.* claims count: an upstream key cannot name a per-run key.
    upstream = {"aa.toml": "kbs:///coco-ai-run/key/abc"}
    assert not allowed(policy, token(claims=upstream), path=path)


@pytest.mark.parametrize("policy", ["resource_prod", "resource_dev"])
def test_run_key_root_only_to_a_run_that_names_it(policy):
    path = ("coco-ai", "run-key-root", "v1")
    named = {"io.coco-ai.run-id": "r1", "io.coco-ai.run-key-root": "kbs:///coco-ai/run-key-root/v1"}
    assert allowed(policy, token(claims=named), path=path)
    assert not allowed(policy, token(claims=named, gpus=()), path=path)  # still attested in full
    no_run = {"io.coco-ai.run-key-root": "kbs:///coco-ai/run-key-root/v1"}
    assert not allowed(policy, token(claims=no_run), path=path)
    other_root = dict(named, **{"io.coco-ai.run-key-root": "kbs:///coco-ai/run-key-root/v2"})
    assert not allowed(policy, token(claims=other_root), path=path)
    assert not allowed(policy, token(claims=None), path=path)
    # a plain resource of the data owner is not bound this way (the data-set key)
    assert allowed(policy, token(claims=None), path=("coco-ai", "dataset-key", "v1"))


def test_prod_denies_sample_and_dev_accepts_it():
    sample = token(cpu_tee="sample", gpu_tee="sampledevice")
    assert not allowed("resource_prod", sample)
    assert allowed("resource_dev", sample)
    mixed = token(gpu_tee="sampledevice")  # real CPU, sample GPU
    assert not allowed("resource_prod", mixed)


def test_real_trustee_token_claims_are_refused():
    claims = json.loads(FIXTURE.read_text())  # contraindicated SGX cpu0, no GPU
    assert not allowed("resource_prod", claims)
    assert not allowed("resource_dev", claims)
    affirmed = copy.deepcopy(claims)
    affirmed["submods"]["cpu0"]["ear.status"] = "affirming"
    affirmed["submods"]["gpu0"] = submod("affirming", "nvidia")
    assert not allowed("resource_prod", affirmed)  # null init_data_claims: no code binding
    affirmed["submods"]["cpu0"][AE]["init_data_claims"] = BOUND
    assert allowed("resource_prod", affirmed)  # the real token shape is what the rules read


def test_cached_interpreters_do_not_carry_decisions_across_requests():
    from coco_ai.trustee_dev.policy import ResourcePolicyEvaluator

    evaluator = ResourcePolicyEvaluator()
    text = policies.resource_policy_text("prod", [APPROVED_IMAGE])
    request = {"plugin": "resource", "resource-path": ["coco-ai", "k", "x"], "query": {}}
    other = {"plugin": "resource", "resource-path": ["coco-ai-run", "key", "x"], "query": {}}
    for _ in range(5):
        assert evaluator.allow(text, token(), request)
        assert not evaluator.allow(text, token(gpus=()), request)
        assert not evaluator.allow(text, token(), other)  # per-run path, not named
        assert evaluator.allow(text, token(), request)
    policy = AttestationPolicy("attestation_cpu_tdx", policies.load("attestation_cpu_tdx"), TDX_RVS)
    debug = copy.deepcopy(TDX)
    debug["tdx"]["td_attributes"]["debug"] = True
    for _ in range(5):
        assert policy.appraise(TDX)[0]["configuration"] == 2
        assert policy.appraise(debug)[0]["configuration"] == 36


@pytest.mark.timeout(120)
def test_torch_imports_after_policy_evaluation():
    """regopy loaded first used to abort a later `import torch` (double free)."""
    import subprocess
    import sys

    code = (
        "from coco_ai import policies\n"
        "from coco_ai.trustee_dev.policy import evaluate_resource_policy\n"
        "request = {'plugin': 'resource', 'resource-path': ['a', 'b', 'c'], 'query': {}}\n"
        "assert evaluate_resource_policy(policies.load('resource_dev'), {}, request) is False\n"
        "import torch\n"
        "print(int(torch.ones(3).sum()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "3"
