"""Execution modes of `ConfidentialWorkloadOperator`, one module per mode (like astronomer-cosmos).

``[coco_ai] execution_mode`` (env ``AIRFLOW__COCO_AI__EXECUTION_MODE``) picks the module:

- ``kubernetes``: a CoCo pod (Kata + TDX/SNP + confidential GPUs), built by the operator itself.
- ``local``: the same workload as a local process beside the guest-components emulator.
"""

EXECUTION_MODES = ("kubernetes", "local")
