"""``python -m coco_ai.workloads.rag_serve --config FILE`` (or env ``COCO_AI_RAG_SERVE_CONFIG``).

Starts only when every start-up check passes (coco_ai.workloads.rag_serve.service); otherwise
one line on stderr, ``rag-serve: error: <reason>``, and the exit code of the failure class
(coco_ai.workloads.tee). Once serving, prints ``[rag-serve] serving on <url>`` and runs until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from coco_ai.workloads.rag_serve.config import CONFIG_ENV, load_config
from coco_ai.workloads.tee import workload_main


def _run(config) -> None:
    from coco_ai.workloads.rag_serve.server import serve
    from coco_ai.workloads.rag_serve.service import ServiceStartup

    startup = ServiceStartup(config)
    loaded = startup.start()
    running = serve(loaded, config, log=startup.log)
    startup.log(f"serving on {running.url}")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    running.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return workload_main(
        argv,
        name="rag-serve",
        description="Attested retrieval service over a verified, encrypted RAG index",
        config_env=CONFIG_ENV,
        load_config=load_config,
        run=_run,
    )


if __name__ == "__main__":
    sys.exit(main())
