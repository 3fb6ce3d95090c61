"""``python -m coco_ai.workloads.finetune --config FILE`` (or env ``COCO_AI_FINETUNE_CONFIG``).

Exit 0 only once the signed, encrypted adapter is in staging; otherwise one line on stderr,
``finetune: error: <reason>``, and the exit code of the failure class (see workload.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from coco_ai.workloads.finetune.config import CONFIG_ENV, ConfigError, load_config

DEBUG_ENV = "COCO_AI_FINETUNE_DEBUG"  # "1": print the traceback of an internal error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coco_ai.workloads.finetune",
        description="Confidential LoRA fine-tune: encrypted data in, signed encrypted adapter out.",
    )
    parser.add_argument(
        "--config", default=os.environ.get(CONFIG_ENV), help=f"config file (or env {CONFIG_ENV})"
    )
    args = parser.parse_args(argv)
    from coco_ai.workloads.finetune.workload import (
        EXIT_CONFIG,
        EXIT_INTERNAL,
        FinetuneWorkload,
        WorkloadError,
    )

    if not args.config:
        return _fail(f"no config: pass --config FILE or set {CONFIG_ENV}", EXIT_CONFIG)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"bad config: {exc}", EXIT_CONFIG)
    try:
        FinetuneWorkload(config).run()
    except WorkloadError as exc:
        return _fail(exc.reason, exc.exit_code)
    except (
        Exception
    ) as exc:  # a bug or an unforeseen failure: still one line, still nothing uploaded
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        return _fail(f"internal error: {type(exc).__name__}: {first}", EXIT_INTERNAL)
    return 0


def _fail(reason: str, code: int) -> int:
    print(f"finetune: error: {reason}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
