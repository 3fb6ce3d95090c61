# CoCo AI Pipelines: attestation policy (policy id `default_gpu`) for NVIDIA confidential GPUs,
# for a real Trustee. Accepts claims from the NRAS (remote) verifier and from the local
# verifier. Reference-value ids: allowed_vbios_versions, allowed_driver_versions (both), and
# gpu_measurements (local verifier: an object {"<index>": "<hex sha384>"} of approved values).
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

##### NRAS (remote verifier) claims

hardware := 2 if {
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-status"] == "valid"
	input.nvidia["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] == "good"
	input.nvidia["x-nvidia-gpu-attestation-report-signature-verified"] == true
	input.nvidia["x-nvidia-gpu-arch-check"] == true
}

executables := 3 if {
	input.nvidia.measres == "success"
	input.nvidia["x-nvidia-gpu-driver-rim-signature-verified"] == true
	input.nvidia["x-nvidia-gpu-vbios-rim-signature-verified"] == true
}

configuration := 2 if {
	input.nvidia.secboot == true
	input.nvidia.dbgstat == "disabled"
	input.nvidia["x-nvidia-gpu-vbios-version"] in query_reference_value("allowed_vbios_versions")
	input.nvidia["x-nvidia-gpu-driver-version"] in query_reference_value("allowed_driver_versions")
}

##### Local verifier claims ({arch, uuid, measurements, config})
# The local verifier has already checked the SPDM signature and certificate chain to NVIDIA's
# device root; what is left is to compare every measurement with the approved values.

hardware := 2 if {
	input.nvidia.measurements
	input.nvidia.arch in {"HOPPER", "BLACKWELL"}
}

executables := 3 if {
	measurements := input.nvidia.measurements
	approved := query_reference_value("gpu_measurements")
	count(approved) > 0
	every index, value in approved {
		measurements[index] == value
	}
}

configuration := 2 if {
	input.nvidia.measurements
	input.nvidia.config.vbios_version in query_reference_value("allowed_vbios_versions")
	input.nvidia.config.driver_version in query_reference_value("allowed_driver_versions")
}
