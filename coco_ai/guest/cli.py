"""``coco-ai guest``: the guest-components emulator, the initdata builder, and ``exec`` (the Kata
agent's unsealing of sealed secrets before the workload starts)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    guest = subparsers.add_parser(
        "guest",
        help="CoCo guest side: emulator and initdata",
        description="Emulate the CoCo guest components (attestation agent + confidential data "
        "hub behind api-server-rest) with sample evidence, or build a run's initdata.",
    )
    sub = guest.add_subparsers(dest="guest_command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the guest-components emulator (api-server-rest routes on loopback)",
    )
    serve.add_argument("--kbs-url", help="KBS URL (default: cdh.toml [kbc] url in the initdata)")
    serve.add_argument(
        "--kbs-ca", type=Path, help="PEM CA of the KBS (default: cdh.toml kbs_cert in the initdata)"
    )
    serve.add_argument("--initdata", type=Path, required=True, help="initdata TOML file")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    serve.add_argument("--port", type=int, default=8006, help="port (default 8006)")
    serve.add_argument("--gpus", type=int, default=0, help="number of sampledevice GPUs")
    serve.set_defaults(func=_serve)

    init = sub.add_parser(
        "initdata", help="write initdata TOML and print its digest and pod annotation"
    )
    init.add_argument("--kbs-url", required=True, help="KBS URL for aa.toml and cdh.toml")
    init.add_argument("--kbs-ca", type=Path, help="PEM CA of the KBS to pin")
    init.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="custom [data] entry, key prefixed io.coco-ai. (repeatable)",
    )
    init.add_argument(
        "--algorithm", default="sha384", choices=["sha256", "sha384", "sha512"], help="digest"
    )
    init.add_argument("--out", type=Path, required=True, help="where to write the TOML")
    init.set_defaults(func=_initdata)

    run = sub.add_parser(
        "exec",
        help="unseal sealed. env values and Secret volume files, then exec the workload",
        description="What the Kata agent does with the CDH before a container starts: replace "
        "every environment value and every file in --sealed-dir that starts with 'sealed.' by "
        "its plaintext, then exec COMMAND. Unlike the agent, any failure stops here (exit 2) "
        "and COMMAND never starts.",
    )
    run.add_argument(
        "--guest-url",
        default="http://127.0.0.1:8006",
        help="guest components REST API (default http://127.0.0.1:8006)",
    )
    run.add_argument(
        "--sealed-dir", type=Path, action="append", default=[], help="mounted Secret volume"
    )
    run.add_argument(
        "--expect-env",
        action="append",
        default=[],
        metavar="NAME=KBS_URI",
        help="variable NAME must hold a sealed secret for KBS_URI (repeatable)",
    )
    run.add_argument(
        "--expect-file",
        action="append",
        default=[],
        metavar="PATH=KBS_URI",
        help="file PATH in a --sealed-dir must hold a sealed secret for KBS_URI (repeatable)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    run.set_defaults(func=_exec)


def _serve(args: argparse.Namespace) -> int:
    from coco_ai.guest.emulator import EmulatorConfigError, GuestComponentsEmulator, bind_loopback
    from coco_ai.guest.initdata import Initdata, InitdataError

    try:
        initdata = Initdata.parse(args.initdata.read_bytes())
        ca = args.kbs_ca.read_bytes() if args.kbs_ca else None
        emulator = GuestComponentsEmulator(
            initdata, kbs_url=args.kbs_url, kbs_ca=ca, gpus=args.gpus
        )
        sock = bind_loopback(args.host, args.port)
    except (OSError, InitdataError, EmulatorConfigError) as exc:
        print(f"coco-ai guest serve: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    print(
        f"guest-components emulator on http://{args.host}:{args.port} "
        f"(KBS {emulator.kbs_url}, {args.gpus} sample GPU(s))",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(emulator.app, log_level="info", access_log=False, lifespan="off")
    )
    server.run(sockets=[sock])
    return 0


def _initdata(args: argparse.Namespace) -> int:
    from coco_ai.guest.initdata import InitdataError, build_initdata

    claims: dict[str, str] = {}
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"coco-ai guest initdata: --claim {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        claims[key] = value
    try:
        ca = args.kbs_ca.read_bytes() if args.kbs_ca else None
        initdata = build_initdata(args.kbs_url, ca, claims, algorithm=args.algorithm)
        args.out.write_bytes(initdata.toml_bytes())  # the digest is over these exact bytes
    except (OSError, InitdataError) as exc:
        print(f"coco-ai guest initdata: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "path": str(args.out),
                "algorithm": initdata.algorithm,
                "digest": initdata.digest().hex(),
                "annotation": initdata.annotation(),
            }
        )
    )
    return 0


def _exec(args: argparse.Namespace) -> int:
    from coco_ai.guest.client import GuestClient
    from coco_ai.guest.sealed import SealedSecretError, unseal_environment, unseal_mounted_files

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("coco-ai guest exec: no COMMAND after --", file=sys.stderr)
        return 2
    try:
        env_pins = _pins(args.expect_env, "--expect-env")
        file_pins: dict[Path, dict[str, str]] = {}
        for path, uri in _pins(args.expect_file, "--expect-file").items():
            file_pins.setdefault(Path(path).parent.resolve(), {})[Path(path).name] = uri
        dirs = [d.resolve() for d in args.sealed_dir]
        stray = sorted(str(d) for d in file_pins if d not in dirs)
        if stray:
            raise SealedSecretError(f"--expect-file outside every --sealed-dir: {stray}")
        with GuestClient(args.guest_url) as guest:
            env = unseal_environment(os.environ, guest.unseal_secret, env_pins)
            for directory in dirs:
                unseal_mounted_files(directory, guest.unseal_secret, file_pins.get(directory))
    except (OSError, SealedSecretError) as exc:
        print(f"coco-ai guest exec: workload not started: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    try:
        # The workload replaces this process, as the agent starts the container's own argv.
        os.execvpe(command[0], command, env)  # noqa: S606
    except OSError as exc:
        print(f"coco-ai guest exec: cannot start {command[0]!r}: {exc}", file=sys.stderr)
    return 127


def _pins(items: list[str], flag: str) -> dict[str, str]:
    from coco_ai.guest.sealed import SealedSecretError

    pins: dict[str, str] = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not name:
            raise SealedSecretError(f"{flag} {item!r} is not NAME=KBS_URI")
        pins[name] = uri
    return pins
