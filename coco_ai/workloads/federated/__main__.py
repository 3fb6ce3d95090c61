"""``python -m coco_ai.workloads.federated --config FILE`` (or env ``COCO_AI_FEDERATED_CONFIG``).

One party of a federation run, the role from its config (which its attestation must name).
Exit 0 once the party's part is done (the aggregator's: the signed, encrypted global adapter
is in staging); otherwise one line on stderr, ``federated: error: <reason>``, and the exit code
of the failure class (coco_ai.workloads.tee; 9: below the run's quorum).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coco_ai.workloads.federated.config import CONFIG_ENV, load_config
from coco_ai.workloads.tee import workload_main


def _run(config) -> None:
    from coco_ai.workloads.federated.workload import FederatedParty

    FederatedParty(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    return workload_main(
        argv,
        name="federated",
        description="One party of a confidential federated LoRA fine-tune (NVFlare).",
        config_env=CONFIG_ENV,
        load_config=load_config,
        run=_run,
    )


if __name__ == "__main__":
    sys.exit(main())
