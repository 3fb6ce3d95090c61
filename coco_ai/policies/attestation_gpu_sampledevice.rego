# CoCo AI Pipelines: attestation policy (policy id `default_gpu`) for Trustee's `sampledevice`
# GPU. Development only. Every device submod (gpu0..gpuN) is appraised with this policy; the
# device's svn must be one of the reference values under RVPS id `device_svn`.
package policy

import rego.v1

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

# A sample device has no measurements beyond its svn: a recognised svn stands for recognised
# firmware (hardware 2) and an approved device image (executables 3).
hardware := 2 if {
	input.sampledevice
	input.sampledevice.svn in query_reference_value("device_svn")
}

executables := 3 if {
	input.sampledevice
	input.sampledevice.svn in query_reference_value("device_svn")
}

# The sample device has no debug or configuration state to check.
configuration := 2 if {
	input.sampledevice
}
