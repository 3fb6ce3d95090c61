# CoCo AI Pipelines: DEVELOPMENT resource policy (KBS `data.policy.allow`). Never deploy to a
# production Trustee: it accepts Trustee's sample CPU and sample GPU evidence.
#
# input = the verified EAR token claims; data = {"plugin", "resource-path", "query"}.
# Releases a `resource` only when cpu0 and every other submod (each GPU, switch…) is
# affirming and at least `min_gpus` GPUs were attested (Trustee sample/sampledevice evidence
# is accepted), and a per-run grant or the run-key root is named in the requester's initdata.
package policy

import rego.v1

default allow := false

# Raise for multi-GPU jobs: a token with fewer gpuN submods is refused.
min_gpus := 1

# Resources in this repository are per-run grants, pinned to the run's initdata.
per_run_repository := "coco-ai-run"

cpu0 := input.submods.cpu0

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

per_run_binding_ok if not bound_to_initdata

# The requested kbs:/// URI must be the value of one of the run's io.coco-ai.* initdata claims
# (e.g. io.coco-ai.run-grant), and the initdata must name a run, so another run's TEE cannot
# obtain this run's grant and no TEE outside a run obtains the root.
per_run_binding_ok if {
	bound_to_initdata
	claims := cpu0["ear.veraison.annotated-evidence"].init_data_claims
	claims["io.coco-ai.run-id"]
	uri := concat("", ["kbs:///", concat("/", data["resource-path"])])
	some key, value in claims
	startswith(key, "io.coco-ai.")
	value == uri
}
