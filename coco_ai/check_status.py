"""The status of one check in a verification report (the provenance view, `coco-ai verify`)."""

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
