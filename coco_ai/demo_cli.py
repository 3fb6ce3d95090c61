"""`coco-ai demo`: the pipeline end to end on this machine; `coco-ai demo stop` ends it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run confidential_finetune end to end on the embedded default (Trustee stand-in, "
        "guest emulator, real Airflow on loopback)",
        description="Set up and start the embedded default, trigger confidential_finetune "
        "through the Airflow REST API, follow it and print a summary. Without --keep-running "
        "everything is stopped at the end.",
    )
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave Airflow (UI) and Trustee running afterwards; stop with `coco-ai demo stop`",
    )
    demo.add_argument(
        "--model",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="base model: tiny (built from config, seconds) or smollm2 (SmolLM2-135M-Instruct)",
    )
    demo.add_argument(
        "--epochs",
        type=int,
        help="training epochs (default: 1 for tiny, 3 for smollm2, enough for it to learn the "
        "facts' format and many of the facts)",
    )
    demo.add_argument(
        "--no-rag",
        action="store_true",
        help="skip the RAG half (index the documents, ask the attested retrieval service)",
    )
    demo.add_argument(
        "--federated",
        action="store_true",
        help="run confidential_federated_finetune instead: three departments and an aggregator, "
        "each in its own emulated TEE, fine-tune one adapter together",
    )
    demo.add_argument("--dir", type=Path, help="state directory (default: <repo>/.demo)")
    demo.add_argument("--port", type=int, help="Airflow API/UI port (default: a free port)")
    demo.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for the run (default 1800)"
    )
    demo.set_defaults(func=_run)
    sub = demo.add_subparsers(dest="demo_command", metavar="SUBCOMMAND")
    stop = sub.add_parser("stop", help="stop every service the demo left running")
    stop.add_argument("--dir", type=Path, help="state directory (default: <repo>/.demo)")
    stop.set_defaults(func=_stop)
    status = sub.add_parser("status", help="show whether the demo stack is running, and where")
    status.add_argument("--dir", type=Path, help="state directory (default: <repo>/.demo)")
    status.set_defaults(func=_status)


DEFAULT_EPOCHS = {"tiny": 1, "smollm2": 3}


def _progress(message: str) -> None:
    print(f"coco-ai demo: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from coco_ai.devstack import (
        DevStack,
        default_state_dir,
        format_summary,
        load_state,
        run_pipeline,
        stop_stack,
    )
    from coco_ai.devstack.demo import to_json
    from coco_ai.devstack.processes import ServiceError

    root = (args.dir or default_state_dir()).resolve()
    info = load_state(root)
    started_here = False
    if info is not None and info.alive():
        if info.model != args.model:
            _progress(f"a stack with model {info.model} is running; `coco-ai demo stop` first")
            return 2
        _progress(f"reusing the running stack in {root}")
    else:
        try:
            # a federation runs its aggregator and every participant at once: a slot each
            slots = {"parallelism": 6} if args.federated else {}
            info = DevStack(
                root, model=args.model, api_port=args.port, progress=_progress, **slots
            ).start()
        except (ServiceError, ValueError, OSError) as exc:
            _progress(f"could not start the stack: {exc}")
            return 1
        started_here = True
    from coco_ai.devstack.demo import ProgressRelay

    relay = ProgressRelay(sys.stderr)

    def progress(message: str) -> None:
        relay.finish()  # a task's state change starts on its own line, below the bar
        _progress(message)

    if args.federated:
        from coco_ai.devstack.federated_demo import format_federated, run_federated_demo

        def follow() -> dict:
            return run_federated_demo(info, progress=progress, timeout_s=args.timeout)

        def succeeded(summary: dict) -> bool:
            return summary["state"] == "success"

        formatted = format_federated
    else:

        def follow() -> dict:
            epochs = args.epochs or DEFAULT_EPOCHS[args.model]
            summary = run_pipeline(
                info,
                {"epochs": epochs},
                progress=progress,
                training=relay.show,
                timeout_s=args.timeout,
            )
            if not args.no_rag:
                from coco_ai.devstack.rag_demo import run_rag_demo

                summary["rag"] = run_rag_demo(info, progress=progress, timeout_s=args.timeout)
            return summary

        def succeeded(summary: dict) -> bool:
            rag_ok = args.no_rag or summary["rag"]["state"] == "success"
            return summary["state"] == "success" and rag_ok

        formatted = format_summary
    try:
        summary = follow()
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130
    except Exception as exc:  # the stack is stopped below; say what failed
        _progress(f"the run could not be followed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if started_here and not args.keep_running:
            _progress("stopping the stack (use --keep-running to keep the UI)")
            stop_stack(root)
    print(to_json(summary) if args.json else formatted(summary))
    if args.keep_running or not started_here:
        _progress(f"UI at {info.api_url} stays up; stop everything with `coco-ai demo stop`")
    return 0 if succeeded(summary) else 1


def _stop(args: argparse.Namespace) -> int:
    from coco_ai.devstack import default_state_dir, stop_stack

    root = (args.dir or default_state_dir()).resolve()
    stopped = stop_stack(root)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {root}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from coco_ai.devstack import default_state_dir, load_state

    root = (args.dir or default_state_dir()).resolve()
    info = load_state(root)
    if info is None or not info.alive():
        print(f"not running ({root})")
        return 1
    print(f"running: UI {info.api_url} (login {info.username}), Trustee {info.trustee_url}")
    for s in info.services:
        print(f"  {s.name:<22} pid {s.pid}  log {s.log}")
    return 0
