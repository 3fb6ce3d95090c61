# CoCo AI Pipelines: DEVELOPMENT resource policy (KBS `data.policy.allow`). Never deploy to a
# production Trustee: it accepts Trustee's sample CPU and sample GPU evidence.
#
# input = the verified EAR token claims; data = {"plugin", "resource-path", "query"}.
# Releases a `resource` only when cpu0 and every other submod (each GPU, switch…) is
# affirming and at least `min_gpus` GPUs were attested (Trustee sample/sampledevice evidence
# is accepted), the requester's initdata binds it to an image the data owner approved
# (approved_code), and a per-run grant or the run-key root is named in the requester's initdata.
# A template: coco_ai.policies.resource_policy_text fills in the approval before upload.
package policy

import rego.v1

default allow := false

# Raise for multi-GPU jobs: a token with fewer gpuN submods is refused.
min_gpus := 1

# Resources in this repository are per-run grants, pinned to the run's initdata.
per_run_repository := "coco-ai-run"

# The data owner's approval, filled in by coco_ai.policies.resource_policy_text: the approved
# workload images (host/path@sha256:<hex>), the launches of the approved workload modules
# (coco_ai.guest.agent_policy.workload_launch), the Kata agent policy template that pins an image
# and a launch (coco_ai.guest.agent_policy) with its placeholders, and the image policy URI the
# guest's CDH must use (coco_ai.guest.image_policy). As shipped nothing is approved: nothing is
# released.
approved_images := set()

approved_launches := set()

agent_policy_template := ""

agent_policy_image_placeholder := ""

agent_policy_launch_placeholder := ""

image_security_policy_uri := ""

cpu0 := input.submods.cpu0

init_data_claims := cpu0["ear.veraison.annotated-evidence"].init_data_claims

gpu_submods := [name |
	some name
	input.submods[name]
	regex.match(`^gpu[0-9]+$`, name)
]

allow if {
	data.plugin == "resource"
	count(data["resource-path"]) == 3
	cpu0["ear.status"] == "affirming"
	count(gpu_submods) >= min_gpus
	not any_not_affirming
	per_run_binding_ok
	federation_binding_ok
	approved_code
}

any_not_affirming if {
	some _, submod in input.submods
	submod["ear.status"] != "affirming"
}

# Keys that exist for runs go only to a TEE whose initdata names them (coco_ai.run_keys): a
# run's grant (repository coco-ai-run) and the data owner's run-key root, from which the TEE of
# a granted run derives its checkpoint key.
bound_to_initdata if data["resource-path"][0] == per_run_repository

bound_to_initdata if {
	data["resource-path"][0] == "coco-ai"
	data["resource-path"][1] == "run-key-root"
}

# The retrieval service's caller credentials (coco_ai.workloads.rag_serve.identity,
# kbs:///coco-ai-rag/caller-credential/<caller id>) likewise go only to a TEE whose initdata
# names them: the caller the credential identifies, and the service that admits that caller.
bound_to_initdata if data["resource-path"][0] == "coco-ai-rag"

per_run_binding_ok if not bound_to_initdata

# The requested kbs:/// URI must be the value of one of the run's io.coco-ai.* initdata claims
# (e.g. io.coco-ai.run-grant), and the initdata must name a run, so another run's TEE cannot
# obtain this run's grant and no TEE outside a run obtains the root.
per_run_binding_ok if {
	bound_to_initdata
	init_data_claims["io.coco-ai.run-id"]
	uri := concat("", ["kbs:///", concat("/", data["resource-path"])])
	some key, value in init_data_claims
	startswith(key, "io.coco-ai.")
	value == uri
}

# A federation party's credentials (coco_ai.federated.credentials) live at
# kbs:///coco-ai-fl/<federation>/<role>.<participant-id> and go only to a TEE whose initdata
# names that federation (io.coco-ai.fl-federation), that role (io.coco-ai.fl-role) and that
# participant (io.coco-ai.fl-participant): another party's, or another federation's, TEE gets
# nothing.
federation_repository := "coco-ai-fl"

federation_roles := {"aggregator", "participant"}

bound_to_federation_identity if data["resource-path"][0] == federation_repository

federation_binding_ok if not bound_to_federation_identity

federation_binding_ok if {
	bound_to_federation_identity
	init_data_claims["io.coco-ai.fl-federation"] == data["resource-path"][1]
	role := init_data_claims["io.coco-ai.fl-role"]
	role in federation_roles
	participant := init_data_claims["io.coco-ai.fl-participant"]
	data["resource-path"][2] == concat(".", [role, participant])
}

# The TEE can run only approved code: its initdata names an approved image's digest, carries
# exactly the Kata agent policy that lets the guest start only that image, with an approved
# launch, the image's environment and no volume (Trustee keeps policy.rego verbatim because the
# template holds no policy_data), and points the guest's CDH at the data owner's image policy,
# which accepts only approved digests.
approved_code if {
	some image in approved_images
	split(image, "@")[1] == init_data_claims["io.coco-ai.image-digest"]
	some launch in approved_launches
	init_data_claims["policy.rego"] == agent_policy(image, launch)
	init_data_claims["cdh.toml"].image.image_security_policy_uri == image_security_policy_uri
}

# coco_ai.guest.agent_policy.agent_policy_text: the image first (a pinned reference cannot hold
# the launch placeholder), then the launch as the inside of a Rego string (launches are printable
# ASCII without backslash, so escaping the double quote is all it takes).
agent_policy(image, launch) := replace(
	replace(agent_policy_template, agent_policy_image_placeholder, image),
	agent_policy_launch_placeholder,
	replace(launch, "\"", "\\\""),
)
