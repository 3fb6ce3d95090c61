# CoCo AI Pipelines: attestation policy (policy id `default_cpu`) for Intel TDX guests, for a
# real Trustee. Reference-value ids: mr_td, rtmr_1, rtmr_2, xfam (uploaded through RVPS).
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

# 3: the measured kernel, initrd and command line (RTMR1/RTMR2) are approved.
executables := 3 if {
	input.tdx
	input.tdx.quote.body.rtmr_1 in query_reference_value("rtmr_1")
	input.tdx.quote.body.rtmr_2 in query_reference_value("rtmr_2")
}

# 2: a TDX quote from Intel's quoting enclave, approved firmware (MRTD), TCB up to date and
# collateral not expired.
hardware := 2 if {
	input.tdx
	input.tdx.quote.header.tee_type == "81000000"
	input.tdx.quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	input.tdx.quote.body.mr_td in query_reference_value("mr_td")
	input.tdx.tcb_status == "UpToDate"
	input.tdx.collateral_expiration_status == "0"
}

# 2: debug off and the approved CPU feature set (XFAM).
configuration := 2 if {
	input.tdx
	input.tdx.td_attributes.debug == false
	input.tdx.quote.body.xfam in query_reference_value("xfam")
}
