"""The Kata agent policy of a run, evaluated by regopy on requests shaped as the Kata agent
sends them (kata-containers src/agent/policy, genpolicy rules.rego: `data.agent_policy.<Request>`
with the request as input; a request whose rule is not true is refused). CreateContainerRequest
inputs follow genpolicy's tests/policy/testdata/createcontainer/env_vars/testcases.json: OCI
Process Args/Env/Cwd, Mounts with destination/type_/source/options, storages, shared_mounts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from coco_ai.guest.agent_policy import (
    AGENT_POLICY_TEMPLATE,
    WORKLOAD_CWD,
    WORKLOAD_IMAGE_ENV,
    AgentPolicyError,
    agent_policy_text,
    workload_args,
    workload_launch,
)
from coco_ai.guest.image_policy import IMAGE_POLICY_URI, image_policy_json
from coco_ai.guest.initdata import AGENT_POLICY_KEY, InitdataError, build_initdata
from coco_ai.policies import load_regopy
from coco_ai.trustee_dev.attestation import _initdata as trustee_parse_init_data
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

OTHER_DIGEST = "registry.example/coco-ai/finetune@sha256:" + "6" * 64
OTHER_IMAGE = "registry.example/attacker/tool@sha256:" + "5" * 64
BUNDLE = "ab" * 32
ROOT = f"/run/kata-containers/{BUNDLE}/rootfs"
SHARED = f"/run/kata-containers/shared/containers/{BUNDLE}"
CONFIG = json.dumps({"run_id": "run-1", "staging_uri": "s3://staging/run-1"}, sort_keys=True)
RUN_ARGS = workload_args(APPROVED_MODULE, CONFIG)
DOCKERFILE = Path(__file__).parents[2] / "images" / "finetune" / "Dockerfile"
# What Kubernetes and the NVIDIA device plugin add to the image's environment.
KUBERNETES_ENV = [
    "HOSTNAME=finetune-run-1",
    "NVIDIA_VISIBLE_DEVICES=GPU-8d4c8f2e-0000-4000-8000-000000000001",
    "KUBERNETES_SERVICE_HOST=10.96.0.1",
    "KUBERNETES_SERVICE_PORT=443",
    "KUBERNETES_SERVICE_PORT_HTTPS=443",
    "KUBERNETES_PORT=tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO=tcp",
    "KUBERNETES_PORT_443_TCP_PORT=443",
    "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
]


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


def _mount(destination: str, type_: str, source: str, *options: str) -> dict:
    return {"destination": destination, "type_": type_, "source": source, "options": list(options)}


# The mounts containerd and the Kata runtime give a container without volumes (genpolicy
# containerd.rs default mounts, genpolicy-settings.json other_container.Mounts).
RUNTIME_MOUNTS = [
    _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
    _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
    _mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666"),
    _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
    _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
    _mount("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro"),
    _mount("/etc/hosts", "bind", f"{SHARED}-4a4c20d48254d738-hosts", "rbind", "rprivate", "rw"),
    _mount("/dev/termination-log", "bind", f"{SHARED}-72cfcc0e64a0d1af-termination-log", "rbind"),
    _mount("/etc/hostname", "bind", f"{SHARED}-89f0faae823d569c-hostname", "rbind", "rprivate"),
    _mount("/etc/resolv.conf", "bind", f"{SHARED}-8c0d97703dbbb30e-resolv.conf", "rbind"),
    _mount("/dev/shm", "bind", "/run/kata-containers/sandbox/shm", "rbind"),
]


def create_container(
    image: str, *, container_type: str = "container", args=None, env=None, cwd=None
) -> dict:
    """A CreateContainerRequest input for a guest-pulled image (fields the agent serialises)."""
    annotations = {
        "io.kubernetes.cri.container-type": container_type,
        "io.kubernetes.cri.sandbox-name": "finetune-run-1",
        "io.kubernetes.cri.sandbox-namespace": "coco-ai",
    }
    if container_type == "container":
        annotations["io.kubernetes.cri.image-name"] = image
    sandbox = container_type == "sandbox"
    if env is None:
        env = ["PATH=/usr/local/sbin:/usr/bin:/bin"] if sandbox else [*WORKLOAD_IMAGE_ENV]
        env = env + ([] if sandbox else KUBERNETES_ENV)
    return {
        "container_id": "c" * 64,
        "OCI": {
            "Version": "1.1.0",
            "Annotations": annotations,
            "Hooks": None,
            "Process": {
                "Args": args or RUN_ARGS,
                "Env": env,
                "Cwd": cwd or ("/" if sandbox else WORKLOAD_CWD),
                "Terminal": False,
            },
            "Mounts": copy.deepcopy(RUNTIME_MOUNTS[:1] if sandbox else RUNTIME_MOUNTS),
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
        "shared_mounts": [],
        "devices": [],
        "sandbox_pidns": False,
    }


@pytest.fixture(scope="module")
def policy() -> str:
    return agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)


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


def _with(request: dict, **process) -> dict:
    changed = copy.deepcopy(request)
    changed["OCI"]["Process"].update(process)
    return changed


def test_the_workload_runs_only_the_runs_launch(policy):
    run = create_container(APPROVED_IMAGE)
    assert decision(policy, "CreateContainerRequest", run)
    # Another config is the one argument the host chooses: the launch only writes it to a file.
    other_config = [*RUN_ARGS[:3], json.dumps({"run_id": "run-2"})]
    assert decision(policy, "CreateContainerRequest", _with(run, Args=other_config))
    launch = workload_launch(APPROVED_MODULE)
    refused = {
        "python -c": ["python", "-c", "print(open('/cdh/resource/coco-ai/dataset-key/v1').read())"],
        "shell": ["/bin/sh", "-c", "wget -qO- http://127.0.0.1:8006/cdh/resource/coco-ai/k/v1"],
        "extra argument": [*RUN_ARGS, "--debug"],
        "no config": RUN_ARGS[:3],
        "another module": workload_args("coco_ai.workloads.other", CONFIG),
        "launch with a suffix": ["/bin/sh", "-c", launch + "; cat /cdh/resource/x/y/z", CONFIG],
        "bash": ["/bin/bash", "-c", launch, CONFIG],
        "entrypoint": ["python", "-m", APPROVED_MODULE, "--config", "/tmp/x.json"],
        "config not a string": [*RUN_ARGS[:3], {"run_id": "run-1"}],
    }
    for why, args in refused.items():
        assert not decision(policy, "CreateContainerRequest", _with(run, Args=args)), why
    # `python -m` imports from the working directory first.
    assert not decision(policy, "CreateContainerRequest", _with(run, Cwd="/dev/shm"))


@pytest.mark.parametrize(
    "var",
    [
        "LD_PRELOAD=/dev/shm/hook.so",
        "LD_LIBRARY_PATH=/dev/shm",
        "LD_AUDIT=/dev/shm/audit.so",
        "PYTHONPATH=/dev/shm",
        "PYTHONSTARTUP=/dev/shm/x.py",
        "PYTHONWARNINGS=ignore::evil.Category",
        "PYTHONUNBUFFERED=0",
        "PATH=/dev/shm:/opt/venv/bin:/usr/bin:/bin",
        "GCONV_PATH=/dev/shm",
        "OPENSSL_CONF=/dev/shm/openssl.cnf",
        "CUDA_INJECTION64_PATH=/dev/shm/inject.so",
        "BASH_ENV=/dev/shm/x.sh",
        "MPLBACKEND=module://evil",
        "REDIS_SERVICE_HOST=10.0.0.7",  # another service's link: service links are off
        "HOSTNAME=$(id)",
        "KUBERNETES_SERVICE_HOST=10.96.0.1;id",
    ],
)
def test_an_environment_that_could_change_the_code_is_refused(policy, var):
    run = create_container(APPROVED_IMAGE)
    changed = _with(run, Env=[*run["OCI"]["Process"]["Env"], var])
    assert not decision(policy, "CreateContainerRequest", changed)
    # In place of the image's own value, too (the agent checks each entry).
    name = var.partition("=")[0] + "="
    replaced = [v for v in run["OCI"]["Process"]["Env"] if not v.startswith(name)] + [var]
    assert not decision(policy, "CreateContainerRequest", _with(run, Env=replaced))


def test_the_images_environment_and_what_kubernetes_adds_are_allowed(policy):
    run = create_container(APPROVED_IMAGE)
    assert decision(policy, "CreateContainerRequest", _with(run, Env=[]))
    assert decision(policy, "CreateContainerRequest", _with(run, Env=list(WORKLOAD_IMAGE_ENV)))
    assert decision(
        policy, "CreateContainerRequest", _with(run, Env=["NVIDIA_VISIBLE_DEVICES=all"])
    )


@pytest.mark.parametrize(
    "mount",
    [
        _mount("/opt/venv/lib/python3.11/site-packages", "bind", f"{SHARED}-0123-site", "rbind"),
        _mount("/opt/venv", "bind", "/run/kata-containers/shared/containers/venv", "rbind"),
        _mount("/usr/lib", "bind", f"{SHARED}-0123456789abcdef-lib", "rbind"),
        _mount("/tmp", "tmpfs", "tmpfs"),
        _mount("/tmp/coco-ai", "bind", f"{SHARED}-0123456789abcdef-cfg", "rbind"),
        _mount("/var/run/secrets/kubernetes.io/serviceaccount", "bind", f"{SHARED}-sa", "ro"),
        _mount("/etc/hosts", "bind", "/run/kata-containers/shared/containers/../x/etc", "rbind"),
        _mount("/etc/hosts", "bind", "/opt/venv/bin", "rbind"),
        _mount("/proc", "bind", f"{SHARED}-0123456789abcdef-proc", "rbind"),
        _mount("/dev/shm", "bind", f"{SHARED}-0123456789abcdef-shm", "rbind"),
        {"destination": "/opt/coco-ai", "type_": "virtiofs", "options": []},
    ],
    ids=lambda m: f"{m['destination']}:{m['type_']}",
)
def test_a_mount_that_is_not_the_runtimes_own_is_refused(policy, mount):
    run = create_container(APPROVED_IMAGE)
    run["OCI"]["Mounts"].append(mount)
    assert not decision(policy, "CreateContainerRequest", run)


def test_nothing_else_is_mounted_for_the_container_in_the_guest(policy):
    extra_storage = create_container(APPROVED_IMAGE)
    extra_storage["storages"].append(
        {"driver": "local", "source": "local", "fstype": "local", "mount_point": ROOT + "/opt"}
    )
    assert not decision(policy, "CreateContainerRequest", extra_storage)
    shared = create_container(APPROVED_IMAGE)
    shared["shared_mounts"] = [{"name": "m", "src_ctr": "x", "src_path": "/", "dst_path": "/opt"}]
    assert not decision(policy, "CreateContainerRequest", shared)


def test_the_pause_container_takes_no_mount_over_pause_and_no_ld_variable(policy):
    pause = create_container("pause", container_type="sandbox", args=["/pause"])
    assert decision(policy, "CreateContainerRequest", pause)
    over = copy.deepcopy(pause)
    over["OCI"]["Mounts"].append(_mount("/pause", "bind", f"{SHARED}-0123456789abcdef-p", "rbind"))
    assert not decision(policy, "CreateContainerRequest", over)
    preload = _with(pause, Env=["LD_PRELOAD=/dev/shm/x.so"])
    assert not decision(policy, "CreateContainerRequest", preload)


def _dockerfile_env() -> set[str]:
    """The entries of the image's ENV instructions (KEY=VALUE form, continuation lines)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    entries: set[str] = set()
    for line in text.splitlines():
        if line.startswith("ENV "):
            entries.update(line[len("ENV ") :].split())
    return entries


def test_the_policy_pins_what_the_image_sets():
    """The env allow-list is the Dockerfile's ENV, PATH spelled out; the working directory is its
    last WORKDIR: the guest would refuse a container of the image otherwise."""
    env = _dockerfile_env()
    assert env == set(WORKLOAD_IMAGE_ENV)
    assert not any("$" in entry for entry in env)  # nothing inherited unpinned (PATH=…:$PATH)
    assert any(entry.startswith("PATH=/opt/venv/bin:") for entry in env)
    workdirs = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert workdirs[-1] == WORKLOAD_CWD


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
    text = agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)
    assert text == agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)
    assert text != agent_policy_text(OTHER_DIGEST, APPROVED_MODULE)
    assert text != agent_policy_text(APPROVED_IMAGE, "coco_ai.workloads.other")
    assert f'approved_image := "{APPROVED_IMAGE}"' in text
    for bad in (
        "registry.example/coco-ai/finetune:latest",
        "registry.example/coco-ai/finetune",
        "coco-ai/finetune@sha256:" + "5" * 64,  # not qualified: docker.io/ expansion
        "registry.example/coco-ai/finetune@sha256:" + "5" * 63,
        'registry.example/x"@sha256:' + "5" * 64,
        None,
    ):
        with pytest.raises(AgentPolicyError, match="pinned by digest"):
            agent_policy_text(bad, APPROVED_MODULE)  # type: ignore[arg-type]
    for module in ("os; rm -rf /", "coco_ai..x", "", None):
        with pytest.raises(AgentPolicyError, match="not a Python module name"):
            agent_policy_text(APPROVED_IMAGE, module)  # type: ignore[arg-type]


def test_trustee_keeps_the_policy_text_as_the_claim():
    """No `policy_data := {` in the text, so Trustee's parse_init_data keeps `policy.rego`
    verbatim (the stand-in mirrors it) instead of replacing it with agent_policy_claims."""
    assert "policy_data := {" not in AGENT_POLICY_TEMPLATE
    initdata = build_initdata(
        "https://kbs.example", None, image=APPROVED_IMAGE, module=APPROVED_MODULE
    )
    _, claims = trustee_parse_init_data({"format": "toml", "body": initdata.toml})
    assert claims[AGENT_POLICY_KEY] == agent_policy_text(APPROVED_IMAGE, APPROVED_MODULE)
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
            module=APPROVED_MODULE,
        )
    with pytest.raises(InitdataError, match="pinned by digest"):
        build_initdata(
            "https://kbs.example", None, image="registry.example/x:latest", module=APPROVED_MODULE
        )
    with pytest.raises(InitdataError, match="both the image and the workload module"):
        build_initdata("https://kbs.example", None, image=APPROVED_IMAGE)


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
