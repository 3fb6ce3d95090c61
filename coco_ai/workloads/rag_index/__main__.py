"""``python -m coco_ai.workloads.rag_index --config FILE`` (or env ``COCO_AI_RAG_INDEX_CONFIG``).

Exit 0 only once the signed, encrypted index is in staging; otherwise one line on stderr,
``rag-index: error: <reason>``, and the exit code of the failure class (coco_ai.workloads.tee).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coco_ai.workloads.rag_index.config import CONFIG_ENV, load_config
from coco_ai.workloads.tee import workload_main


def _run(config) -> None:
    from coco_ai.workloads.rag_index.workload import RagIndexWorkload

    RagIndexWorkload(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    return workload_main(
        argv,
        name="rag-index",
        description="Confidential RAG indexing: encrypted documents in, signed encrypted index out",
        config_env=CONFIG_ENV,
        load_config=load_config,
        run=_run,
    )


if __name__ == "__main__":
    sys.exit(main())
