"""The workload image the test suites approve: the stand-ins' resource policies release keys
only to initdata bound to it (coco_ai.policies.resource_policy_text, build_initdata(image=…,
module=…)), running the fine-tune's launch."""

from __future__ import annotations

from coco_ai.workloads.kinds import FINETUNE

APPROVED_IMAGE = "registry.example/coco-ai/finetune@sha256:" + "5" * 64
APPROVED_MODULE = FINETUNE.module
