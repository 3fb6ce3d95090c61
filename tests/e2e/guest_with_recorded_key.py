"""The guest-components emulator, with its TEE private key recorded for the secret-hygiene test.

Plugged into the local execution mode through ``[coco_ai] local_guest_command`` (the operator
appends ``--initdata F --port P --gpus N``). It serves exactly what ``coco-ai guest serve``
serves; the only difference is that the TEE key pair is generated here and its private PEM is
written to ``--record-dir`` (0600), so the test knows which bytes must never appear anywhere
in Airflow. Test-only: real deployments must never export a TEE key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record-dir", required=True, type=Path)
    parser.add_argument("--initdata", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--gpus", type=int, default=0)
    args = parser.parse_args()

    import uvicorn

    from coco_ai.guest.emulator import GuestComponentsEmulator, bind_loopback
    from coco_ai.guest.initdata import Initdata
    from coco_ai.kbs.jwe import TeeKeyPair

    initdata = Initdata.parse(args.initdata.read_bytes())
    run_id = initdata.claim("io.coco-ai.run-id") or "unknown"
    key = TeeKeyPair.generate()
    args.record_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.record_dir / f"{run_id}.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_pem())
    emulator = GuestComponentsEmulator(initdata, gpus=args.gpus, tee_key=key)
    sock = bind_loopback("127.0.0.1", args.port)
    config = uvicorn.Config(emulator.app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
