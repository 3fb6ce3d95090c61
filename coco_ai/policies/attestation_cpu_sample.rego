# CoCo AI Pipelines: attestation policy (policy id `default_cpu`) for Trustee's `sample` TEE.
# Development only. Produces the AR4SI trust vector `data.policy.trust_claims` from the sample
# verifier's claims and reference values (RVPS ids launch_digest, svn, major_version,
# minimum_minor_version, the ids Trustee's own default_cpu uses for sample).
package policy

import rego.v1

# Unrecognised until proven otherwise: contraindicated hardware, unknown executables.
default executables := 33

default hardware := 97

default configuration := 36

trust_claims := {
	"instance-identity": 0,
	"configuration": configuration,
	"executables": executables,
	"file-system": 0,
	"hardware": hardware,
	"runtime-opaque": 0,
	"storage-opaque": 0,
	"sourced-data": 0,
}

# 3: only approved executables were loaded.
executables := 3 if {
	input.sample
	input.sample.launch_digest in query_reference_value("launch_digest")
}

# 2: genuine, supported hardware/firmware.
hardware := 2 if {
	input.sample
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

# 2: known, approved configuration (no debug mode).
configuration := 2 if {
	input.sample
	input.sample.debug == false
}

# Workload identifiers from the Kata agent policy carried in initdata, as Trustee reports them.
extensions := [{
	"name": "ear.trustee.identifiers",
	"key": -18,
	"value": {"validated": validated_identifiers},
}]

container_images := [image |
	some container in input.init_data_claims.agent_policy_claims.containers
	image := container.OCI.Annotations["io.kubernetes.cri.image-name"]
]

validated_identifiers := {"container_images": container_images} if {
	count(container_images) > 0
} else := {}
