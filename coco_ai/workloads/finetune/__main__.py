"""``python -m coco_ai.workloads.finetune --config FILE`` (or env ``COCO_AI_FINETUNE_CONFIG``).

Exit 0 only once the signed, encrypted adapter is in staging; otherwise one line on stderr,
``finetune: error: <reason>``, and the exit code of the failure class (coco_ai.workloads.tee).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coco_ai.workloads.finetune.config import CONFIG_ENV, load_config
from coco_ai.workloads.tee import workload_main


def _run(config) -> None:
    from coco_ai.workloads.finetune.workload import FinetuneWorkload

    FinetuneWorkload(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    return workload_main(
        argv,
        name="finetune",
        description="Confidential LoRA fine-tune: encrypted data in, signed encrypted adapter out.",
        config_env=CONFIG_ENV,
        load_config=load_config,
        run=_run,
    )


if __name__ == "__main__":
    sys.exit(main())
