"""The confidential fine-tune workload: ``python -m coco_ai.workloads.finetune --config FILE``.

``config`` (stdlib) and ``train`` (torch/transformers/peft) are importable without the crypto and
guest stack; ``workload`` wires them to the guest API, the checkpoint format and storage.
"""
