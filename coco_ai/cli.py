"""`coco-ai`: the single entry point for the project's own services and tools.

Each area registers one top-level command from its own `cli` module; the modules import nothing
heavy at import time, so `coco-ai --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from coco_ai import __version__

_COMMAND_MODULES = (
    "coco_ai.trustee_dev.cli",
    "coco_ai.policies.cli",
    "coco_ai.guest.cli",
    "coco_ai.guest.secret_cli",
    "coco_ai.crypto.cli",
    "coco_ai.workloads.cli",
    "coco_ai.demo_cli",
    "coco_ai.owner_report",
    "coco_ai.promotion.cli",
    "coco_ai.federated.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coco-ai",
        description="CoCo AI Pipelines: Trustee stand-in, guest-components emulator, "
        "checkpoint and data-set tools, and the embedded demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real import error inside the module must surface
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a command group without a subcommand: show its help rather than doing nothing
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
