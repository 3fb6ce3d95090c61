"""The Kata agent policy of a confidential run: the guest starts only the approved image.

The policy travels in the run's initdata as ``policy.rego``; the Kata agent enforces it on every
request the (untrusted) host sends, and Trustee hands its exact text to the resource policies as
the ``policy.rego`` init-data claim. Those compare it with `agent_policy_text` of an image the
data owner approved, so a key reaches only a guest that can run nothing but that image.

Input shapes (kata-containers ``src/agent/policy``, ``src/tools/genpolicy/rules.rego``): the
agent evaluates ``data.agent_policy.<Request>`` with the request as ``input``; a request without
a rule, or whose rule is not ``true``, is refused. For ``CreateContainerRequest`` the container's
OCI spec is ``input.OCI`` (annotations ``io.kubernetes.cri.container-type`` and
``io.kubernetes.cri.image-name``) and a guest-pulled image is the one ``input.storages[]`` entry
with ``driver == "image_guest_pull"``: the agent pulls its ``source`` through the confidential
data hub and mounts it at ``mount_point``, the container's root. The pod's pause container has
the source ``pause``: the agent unpacks the guest's own pause bundle, nothing is pulled.

The workload container is pinned beyond its image: its process (``input.OCI.Process.Args``,
``Env``, ``Cwd``), its mounts (``input.OCI.Mounts``, entries ``destination`` / ``type_`` /
``source``) and its storages, field names as genpolicy's rules.rego reads them (``allow_args``,
``allow_env``, ``allow_mount``, ``check_mount``) and as the agent serialises a request (genpolicy
tests/policy/testdata/createcontainer/env_vars/testcases.json). Otherwise the host could start the
approved image as ``python -c`` that prints ``/cdh/resource/…`` to the log it reads, or inject code
with ``LD_PRELOAD``/``PYTHONPATH``/another ``PATH`` or a volume over the installed packages.

- Args are exactly `workload_args`: ``/bin/sh -c <launch> <config JSON>``. The launch (per workload
  module, `workload_launch`) is part of the measured policy; the config JSON is the one argument
  the host chooses. It is per run and built after the initdata (from the workload operator's
  settings), so it cannot be pinned in it; the launch only writes it to a file (``"$0"``, never
  evaluated) and the workload validates it as untrusted input, as it must anything from Airflow.
- Env is an allow-list: the image's own ``ENV`` (`WORKLOAD_IMAGE_ENV`, exactly the values
  images/finetune/Dockerfile sets, ``PATH`` and ``LD_LIBRARY_PATH`` included) plus what Kubernetes
  adds by value shape (``HOSTNAME``, the API server's ``KUBERNETES_*`` service link, which kubelet
  adds even with service links off, ``NVIDIA_VISIBLE_DEVICES``). Anything else — ``LD_PRELOAD``,
  ``PYTHONPATH``, another ``PATH``, a variable of another service — refuses the container. An
  allow-list, because the variables that change what code runs are open-ended (``GCONV_PATH``,
  ``OPENSSL_CONF``, ``CUDA_INJECTION64_PATH``, ``PYTHONWARNINGS`` …).
- Cwd is the image's ``WORKDIR`` (`WORKLOAD_CWD`): ``python -m`` puts the working directory first
  on ``sys.path``.
- Mounts are an allow-list of what the runtime adds to every container (genpolicy's
  ``containerd.rs`` default mounts and ``genpolicy-settings.json`` ``other_container.Mounts``):
  the kernel file systems by type and source, ``/dev/shm`` from the sandbox, and ``/etc/hosts``,
  ``/etc/hostname``, ``/etc/resolv.conf``, ``/dev/termination-log`` bound from the shared
  directory. No volume, no service-account token, nothing over the image's code; an allow-list
  because a mount's destination can replace code anywhere (``/opt/venv``, ``/usr``, ``/tmp``…).
- Storages: exactly the one guest pull, so nothing else is mounted in the guest for the container.

The text is one template (`AGENT_POLICY_TEMPLATE`) with the image in place of `IMAGE_PLACEHOLDER`
and the launch, as the inside of a Rego string (`rego_string_body`), in place of
`LAUNCH_PLACEHOLDER`; the resource policies embed the same template and substitute with Rego's
``replace``, so both sides render byte-identical text. It must never contain ``policy_data := {``:
Trustee would then replace the claim by that JSON alone and the resource policy could no longer
tell a strict rule set from a permissive one.
"""

from __future__ import annotations

import re

#: Where the approved image reference goes in the template.
IMAGE_PLACEHOLDER = "$(approved-image)"
#: Where the approved launch (the body of a Rego string) goes in the template.
LAUNCH_PLACEHOLDER = "$(approved-launch)"

#: The workload's config file, written by the launch in the container's own /tmp.
WORKLOAD_CONFIG_PATH = "/tmp/coco-ai/workload.json"  # noqa: S108 - the container's own file system
WORKLOAD_SHELL = ("/bin/sh", "-c")
#: The image's WORKDIR (images/finetune/Dockerfile); ``python -m`` imports from it first.
WORKLOAD_CWD = "/tmp"  # noqa: S108 - the container's own file system
#: The image's ENV, exactly as images/finetune/Dockerfile sets it (tests compare the two). The
#: base image's variables are set again there so that their values are pinned too.
WORKLOAD_IMAGE_ENV = (
    "PATH=/opt/venv/bin:/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:"
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    "LANG=C.UTF-8",
    "LC_ALL=C.UTF-8",
    "PYTORCH_VERSION=2.13.0",
    # Output unbuffered and no .pyc writes: neither selects code.
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
    "HF_HUB_OFFLINE=1",
    "TRANSFORMERS_OFFLINE=1",
    "MPLBACKEND=Agg",
    "MPLCONFIGDIR=/tmp/matplotlib",
)

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# A fully qualified reference pinned by digest: registry host (with a dot or port, or
# "localhost") / path @sha256:<64 hex>. Pinned so the guest pulls exactly the approved bytes;
# qualified so the Kubernetes image-name annotation and the image policy's scope cannot differ
# by docker.io/library/ expansion.
_QUALIFIED_PINNED = re.compile(
    r"^(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|[a-z0-9.-]+:[0-9]+)"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+@sha256:[0-9a-f]{64}$"
)

_TEMPLATE = """\
# CoCo AI Pipelines: Kata agent policy of one confidential run (coco_ai.guest.agent_policy).
# The guest starts its own pause container and the approved image, pulled in the guest by
# digest; it refuses exec, a replacement policy and every request not allowed below.
package agent_policy

import future.keywords.every
import future.keywords.if
import future.keywords.in

approved_image := "$(approved-image)"

# Life-cycle requests of the pod; they act only on containers admitted by CreateContainerRequest.
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default StatsContainerRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := true
default TtyWinResizeRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true

# Pod networking, which the host configures (traffic is untrusted in any case).
default AddARPNeighborsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true

# Container output is readable by the host: the workload never writes a secret to it.
default ReadStreamRequest := true

# Refused: running anything else in a container, feeding it input, replacing this policy,
# changing a container's limits, memory or devices, host-chosen time or randomness, tracing,
# metrics, swap and diagnostics.
default ExecProcessRequest := false
default WriteStreamRequest := false
default CloseStdinRequest := false
default SetPolicyRequest := false
default PullImageRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default PauseContainerRequest := false
default ResumeContainerRequest := false
default ResizeVolumeRequest := false
default VolumeStatsRequest := false
default MemHotplugByProbeRequest := false
default MemAgentMemcgConfig := false
default MemAgentCompactConfig := false
default SetGuestDateTimeRequest := false
default ReseedRandomDevRequest := false
default GetIPTablesRequest := false
default SetIPTablesRequest := false
default GetMetricsRequest := false
default StartTracingRequest := false
default StopTracingRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default GetDiagnosticDataRequest := false
default AllowRequestsFailingPolicy := false

# Files the runtime copies into the guest (hosts, resolv.conf, service-account tokens) land in
# the shared directory only, never in a container's root file system.
default CopyFileRequest := false

CopyFileRequest if {
	startswith(input.path, "/run/kata-containers/shared/containers/")
	not contains(input.path, "/../")
}

default CreateContainerRequest := false

# The pod's pause container: the guest's own pause bundle, running /pause (statically linked;
# no LD_ variable is accepted all the same).
CreateContainerRequest if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
	input.OCI.Process.Args == ["/pause"]
	every var in input.OCI.Process.Env {
		not_ld(var)
	}
	no_hooks
	runtime_mounts_only
	guest_pulled_root("pause")
}

# The workload: exactly the approved image, pulled by the guest as the container's root, running
# exactly the approved launch with the image's environment and working directory.
CreateContainerRequest if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
	input.OCI.Annotations["io.kubernetes.cri.image-name"] == approved_image
	approved_process
	no_hooks
	runtime_mounts_only
	guest_pulled_root(approved_image)
}

approved_launch := "$(approved-launch)"

# /bin/sh -c <launch> <config JSON>: the launch writes its one argument ("$0") to a file and
# execs the workload module on it; the shell never evaluates that argument.
approved_process if {
	args := input.OCI.Process.Args
	count(args) == 4
	args[0] == "/bin/sh"
	args[1] == "-c"
	args[2] == approved_launch
	is_string(args[3])
	input.OCI.Process.Cwd == "@WORKLOAD_CWD@"
	every var in input.OCI.Process.Env {
		allowed_env(var)
	}
}

# The image's own ENV, exactly (images/finetune/Dockerfile).
image_env := {
@IMAGE_ENV@
}

# What Kubernetes adds, by value shape: the pod's host name, the API server's service link
# (kubelet adds it even with enableServiceLinks off; IPv4 only) and the GPUs to expose.
kubernetes_env := [
	"^HOSTNAME=[A-Za-z0-9][A-Za-z0-9.-]*$",
	"^KUBERNETES_SERVICE_HOST=[0-9.]+$",
	"^KUBERNETES_SERVICE_PORT(_HTTPS)?=[0-9]+$",
	"^KUBERNETES_PORT=tcp://[0-9.]+:[0-9]+$",
	"^KUBERNETES_PORT_[0-9]+_TCP=tcp://[0-9.]+:[0-9]+$",
	"^KUBERNETES_PORT_[0-9]+_TCP_PROTO=tcp$",
	"^KUBERNETES_PORT_[0-9]+_TCP_PORT=[0-9]+$",
	"^KUBERNETES_PORT_[0-9]+_TCP_ADDR=[0-9.]+$",
	"^NVIDIA_VISIBLE_DEVICES=[A-Za-z0-9,:-]+$",
]

allowed_env(var) if var in image_env

allowed_env(var) if {
	some pattern in kubernetes_env
	regex.match(pattern, var)
}

# A helper: regopy (the tests' engine) mis-evaluates "not" directly inside "every".
not_ld(var) if not startswith(var, "LD_")

# OCI hooks would run guest binaries the host chooses.
no_hooks if object.get(input.OCI, "Hooks", null) == null

# Only the mounts the runtime gives every container: kernel file systems by type and source, the
# sandbox's /dev/shm, and the files the runtime copies into the shared directory at their fixed
# destinations. No volume: nothing can be mounted over the image's code.
runtime_mounts_only if {
	every mount in input.OCI.Mounts {
		runtime_mount(mount)
	}
}

kernel_mounts := {
	["/proc", "proc", "proc"],
	["/dev", "tmpfs", "tmpfs"],
	["/dev/pts", "devpts", "devpts"],
	["/dev/mqueue", "mqueue", "mqueue"],
	["/dev/shm", "tmpfs", "shm"],
	["/dev/shm", "bind", "/run/kata-containers/sandbox/shm"],
	["/sys", "sysfs", "sysfs"],
	["/sys/fs/cgroup", "cgroup", "cgroup"],
}

copied_files := {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"}

runtime_mount(mount) if [mount.destination, mount.type_, mount.source] in kernel_mounts

runtime_mount(mount) if {
	mount.destination in copied_files
	mount.type_ == "bind"
	startswith(mount.source, "/run/kata-containers/shared/containers/")
	not contains(mount.source, "/../")
}

# One storage, the guest pull of the given image mounted as the root: no host-provided root file
# system and nothing else mounted in the guest for this container.
guest_pulled_root(image) if {
	count(input.storages) == 1
	pull := input.storages[0]
	pull.driver == "image_guest_pull"
	pull.source == image
	pull.mount_point == input.OCI.Root.Path
	count(object.get(input, "shared_mounts", [])) == 0
}
"""


class AgentPolicyError(ValueError):
    """An image reference the agent policy cannot pin (the message says why)."""


def qualified_pinned_image(image: object) -> str:
    """``image`` if it is a fully qualified reference pinned by ``@sha256:<64 hex>``."""
    if not isinstance(image, str) or not _QUALIFIED_PINNED.match(image):
        raise AgentPolicyError(
            f"image {image!r} must be a fully qualified reference pinned by digest "
            "(registry.host/path@sha256:<64 hex>): a tag can be re-pointed, and an "
            "unqualified name is expanded differently by Kubernetes and the guest"
        )
    return image


def workload_launch(module: str) -> str:
    """The shell launch of workload ``module``: write the config argument (``$0``) to the
    container's own file and exec ``python -m module --config FILE``. One definition for the pod
    (operators/execution/kubernetes.py), the agent policy and the resource policies."""
    if not isinstance(module, str) or not _MODULE.match(module):
        raise AgentPolicyError(f"workload module {module!r} is not a Python module name")
    return (
        f'mkdir -p "$(dirname {WORKLOAD_CONFIG_PATH})" && '
        f'printf "%s" "$0" > {WORKLOAD_CONFIG_PATH} && '
        f"exec python -m {module} --config {WORKLOAD_CONFIG_PATH}"
    )


def workload_args(module: str, config_json: str) -> list[str]:
    """The container's full argv, the only one the agent policy of ``module`` admits."""
    return [*WORKLOAD_SHELL, workload_launch(module), config_json]


def rego_string_body(text: str) -> str:
    """``text`` as the inside of a Rego (JSON) string. Only printable ASCII without backslash or
    single quote is accepted, so escaping ``"`` is all it takes; the resource policies do the
    same with one ``replace``."""
    if any(not " " <= ch <= "~" or ch in "\\'`" for ch in text):
        raise AgentPolicyError(f"{text!r} must be printable ASCII without \\, ' or `")
    return text.replace('"', '\\"')


def agent_policy_text(image: str, module: str) -> str:
    """The Kata agent policy (Rego) that lets the guest start only ``image`` running the launch
    of workload ``module``; deterministic."""
    launch = rego_string_body(workload_launch(module))
    text = AGENT_POLICY_TEMPLATE.replace(IMAGE_PLACEHOLDER, qualified_pinned_image(image))
    return text.replace(LAUNCH_PLACEHOLDER, launch)


def _template() -> str:
    # The image's env and working directory are constants of the template (not placeholders):
    # every approved image shares them, and the Dockerfile test keeps them true.
    env = ",\n".join(f'\t"{rego_string_body(var)}"' for var in WORKLOAD_IMAGE_ENV)
    return _TEMPLATE.replace("@IMAGE_ENV@", env).replace("@WORKLOAD_CWD@", WORKLOAD_CWD)


def _check_template(template: str) -> None:
    # Trustee would swap the claim for its policy_data; TOML ''' and Rego ` would end the
    # strings that carry the text in the initdata and in the resource policies.
    for forbidden in ("policy_data := {", "'''", "`", "@"):
        if forbidden in template:
            raise AgentPolicyError(f"agent policy template contains {forbidden!r}")
    # The image goes in first: a pinned reference cannot hold the launch placeholder.
    for placeholder in (IMAGE_PLACEHOLDER, LAUNCH_PLACEHOLDER):
        if template.count(placeholder) != 1:
            raise AgentPolicyError(f"agent policy template must hold {placeholder} once")


AGENT_POLICY_TEMPLATE = _template()
_check_template(AGENT_POLICY_TEMPLATE)
