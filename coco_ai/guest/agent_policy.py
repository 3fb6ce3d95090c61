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

The text is one template (`AGENT_POLICY_TEMPLATE`) with the image in place of
`IMAGE_PLACEHOLDER`; the resource policies embed the same template and substitute with Rego's
``replace``, so both sides render byte-identical text. It must never contain ``policy_data := {``:
Trustee would then replace the claim by that JSON alone and the resource policy could no longer
tell a strict rule set from a permissive one.
"""

from __future__ import annotations

import re

#: Where the approved image reference goes in the template.
IMAGE_PLACEHOLDER = "$(approved-image)"

# A fully qualified reference pinned by digest: registry host (with a dot or port, or
# "localhost") / path @sha256:<64 hex>. Pinned so the guest pulls exactly the approved bytes;
# qualified so the Kubernetes image-name annotation and the image policy's scope cannot differ
# by docker.io/library/ expansion.
_QUALIFIED_PINNED = re.compile(
    r"^(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+|[a-z0-9.-]+:[0-9]+)"
    r"(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+@sha256:[0-9a-f]{64}$"
)

AGENT_POLICY_TEMPLATE = """\
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

# The pod's pause container: the guest's own pause bundle, running /pause.
CreateContainerRequest if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
	input.OCI.Process.Args == ["/pause"]
	no_hooks
	guest_pulled_root("pause")
}

# The workload: exactly the approved image, pulled by the guest as the container's root.
CreateContainerRequest if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
	input.OCI.Annotations["io.kubernetes.cri.image-name"] == approved_image
	no_hooks
	guest_pulled_root(approved_image)
}

# OCI hooks would run guest binaries the host chooses.
no_hooks if object.get(input.OCI, "Hooks", null) == null

# One guest pull, of the given image, mounted as the root: no host-provided root file system.
guest_pulled_root(image) if {
	pulls := [storage | some storage in input.storages; storage.driver == "image_guest_pull"]
	count(pulls) == 1
	pulls[0].source == image
	pulls[0].mount_point == input.OCI.Root.Path
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


def agent_policy_text(image: str) -> str:
    """The Kata agent policy (Rego) that lets the guest start only ``image``; deterministic."""
    return AGENT_POLICY_TEMPLATE.replace(IMAGE_PLACEHOLDER, qualified_pinned_image(image))


def _check_template(template: str) -> None:
    # Trustee would swap the claim for its policy_data; TOML ''' and Rego ` would end the
    # strings that carry the text in the initdata and in the resource policies.
    for forbidden in ("policy_data := {", "'''", "`"):
        if forbidden in template:
            raise AgentPolicyError(f"agent policy template contains {forbidden!r}")
    if template.count(IMAGE_PLACEHOLDER) != 1:
        raise AgentPolicyError(f"agent policy template must hold {IMAGE_PLACEHOLDER} once")


_check_template(AGENT_POLICY_TEMPLATE)
