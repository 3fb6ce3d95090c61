# CoCo AI Pipelines: attestation policy (policy id `default_cpu`) for AMD SEV-SNP guests, for a
# real Trustee. Reference-value ids: snp_launch_measurement, snp_bootloader, snp_microcode,
# snp_snp_svn, snp_tee_svn (uploaded through RVPS).
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

# 3: the launch measurement (firmware, kernel, initrd, command line) is approved.
executables := 3 if {
	input.snp
	input.snp.measurement in query_reference_value("snp_launch_measurement")
}

# 2: the reported TCB (ASP bootloader, microcode, SNP firmware, TEE) is approved.
hardware := 2 if {
	input.snp
	input.snp.reported_tcb_bootloader in query_reference_value("snp_bootloader")
	input.snp.reported_tcb_microcode in query_reference_value("snp_microcode")
	input.snp.reported_tcb_snp in query_reference_value("snp_snp_svn")
	input.snp.reported_tcb_tee in query_reference_value("snp_tee_svn")
}

# 2: no debugging and no migration agent. Anything else stays 36 (configuration unknown).
configuration := 2 if {
	input.snp
	input.snp.policy_debug_allowed == false
	input.snp.policy_migrate_ma == false
}
