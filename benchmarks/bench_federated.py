"""Federated LoRA fine-tuning: the cost of the CoCo steps per round, bytes on the wire, and
federated vs solo quality (issue 14).

**Overhead** (``--section overhead``): the same NVFlare 2.9 secure-mode POC federation (server
+ three clients as separate processes on loopback, FedAvg over the LoRA adapter, the same job,
model, data and rounds) in two arms, alternated and repeated:
- ``confidential``: each party's guest-components emulator fetches its mTLS bundle from the
  Trustee stand-in after attestation, ``install_confidential_kit`` adds the Trustee CC authorizer
  and the identity-bound CC manager (registration checks and a periodic cross-site re-check
  every ``--verify-frequency`` seconds, so re-checks fall inside the measured rounds); the job is
  submitted with the federation's admin credential;
- ``baseline``: NVFlare's own POC certificates, no CC components.
Round time is the interval between consecutive "Round r finished." lines of the server job's
log (rounds 1..R-1: round 0 holds the trainers' model loading and counts as start-up). Start-up
is from before the kits are installed (credential release included) to round 0's start. Bytes
on the wire are counted by a TCP relay on loopback between every client and the server's port,
over the same window as the round times, per round and as a multiple of the adapter's float32
size. Headline: ``overhead_fraction`` = confidential / baseline round time - 1 within each
repeat (goal <= 0.10).

**Quality** (``--section quality``): ``compare_federated_with_solo``
(global held-out eval loss of the federation, run in NVFlare's simulator, vs each participant
alone with the same trainer and steps).

``--model tiny`` (default; a 1M-parameter Llama built here) or ``--model smollm2`` (the demo's
SmolLM2-135M-Instruct, converted once into .cache/models).

    nice -n 5 .venv/bin/python benchmarks/bench_federated.py [--section overhead|quality|all]
        [--model tiny|smollm2] [--repeats 2] [--rounds N] [--local-steps N] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARTICIPANTS = ("dept-a", "dept-b", "dept-c")
ADMIN = "admin@nvidia.com"  # the POC admin kit's name
RUN_ID = "fl-bench"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Round (\d+) (started|finished)\.")
#: model -> (examples, rounds, local steps, learning rate) per section
SETTINGS = {
    "tiny": {"overhead": (120, 8, 4, 1e-2), "quality": (120, 6, 10, 1e-2)},
    "smollm2": {"overhead": (120, 4, 2, 2e-3), "quality": (120, 3, 4, 2e-3)},
}


class ByteCountingRelay:
    """A TCP relay on loopback: every accepted connection is forwarded to ``target_port``; each
    chunk forwarded is recorded as (wall time, direction, bytes)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.chunks: list[tuple[float, str, int]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:  # the server is not listening yet: the client retries
            client.close()
            return
        for src, dst, direction in ((client, server, "up"), (server, client, "down")):
            threading.Thread(target=self._pump, args=(src, dst, direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                with self._lock:
                    self.chunks.append((time.time(), direction, len(data)))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def bytes_between(self, start: float, end: float) -> dict[str, int]:
        with self._lock:
            window = [(d, n) for t, d, n in self.chunks if start <= t <= end]
        return {d: sum(n for dd, n in window if dd == d) for d in ("up", "down")}

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _trustee(root: Path):
    """The Trustee stand-in (TLS, development policy set) and its admin client."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.trustee_dev.server import serve_in_thread
    from tests.code_binding import APPROVED_IMAGE

    key = ed25519.Ed25519PrivateKey.generate()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = serve_in_thread(
        root / "trustee-state", public_pem, policy_set="dev", approved_images=[APPROVED_IMAGE]
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    auth = admin_auth_for(server.standin.trustee_version, private_pem)
    admin = KbsAdminClient(server.url, auth=auth, ca_cert=Path(server.tls_ca_path).read_bytes())
    return server, admin


def _parties(trustee, federation):
    """One guest-components emulator per party, its initdata naming the party's identity."""
    from coco_ai.guest.initdata import build_initdata
    from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE
    from tests.federated.conftest import Party

    ca = Path(trustee.tls_ca_path).read_bytes()
    parties = {}
    for bundle in federation.bundles:
        identity = bundle.identity
        initdata = build_initdata(
            trustee.url, ca, identity.claims(), image=APPROVED_IMAGE, module=APPROVED_MODULE
        )
        parties[identity.participant_id] = Party(identity, initdata, gpus=1)
    return parties


def _allow_job_classes(kit: Path) -> None:
    """The baseline kit's resources.json: NVFlare's default, admitting the installed job
    classes (install_confidential_kit does the same for the confidential kit)."""
    from coco_ai.workloads.federated.job import JOB_CLASSES

    local = kit / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    allowed = resources.get("class_allow_list")
    if isinstance(allowed, list):
        resources["class_allow_list"] = sorted({*allowed, *JOB_CLASSES})
    (local / "resources.json").write_text(json.dumps(resources, indent=2))


def _through_relay(kit: Path, relay: ByteCountingRelay) -> None:
    path = kit / "startup" / "fed_client.json"
    config = json.loads(path.read_text())
    for server in config["servers"]:
        host = server["service"]["target"].rsplit(":", 1)[0]
        server["service"]["target"] = f"{host}:{relay.port}"
    path.write_text(json.dumps(config, indent=2))


def _round_times(kit: Path, site_log: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(round -> started, round -> finished) wall times from the server's logs."""
    started: dict[int, float] = {}
    finished: dict[int, float] = {}
    logs = [site_log, *kit.rglob("log.txt")]
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if match:
                at = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                (started if match[3] == "started" else finished).setdefault(int(match[2]), at)
    return started, finished


def _wait_for(what: str, check, processes, logs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if processes[0].poll() is not None:
            break
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-2000:]}" for log in logs)
    raise RuntimeError(f"timed out waiting for {what}\n{tails}")


def run_arm(arm: str, root: Path, ctx: dict, args) -> dict:
    """One federation run of ``arm`` (``confidential`` or ``baseline``); its timings and bytes."""
    from coco_ai.federated.credentials import CredentialBundle
    from coco_ai.federated.identity import AGGREGATOR
    from coco_ai.federated.local import (
        POC_SERVER_NAME,
        prepare_kits,
        run_job,
        start_site,
        stop_site,
    )
    from coco_ai.federated.startup_kit import install_confidential_kit
    from coco_ai.trustee_dev.server import free_port
    from coco_ai.workloads.federated.job import trainer_args, write_fedavg_job

    sites = (POC_SERVER_NAME, *PARTICIPANTS)
    began = time.time()
    prod = prepare_kits(root / "poc", PARTICIPANTS, port=free_port())
    port = json.loads((prod / ADMIN / "startup" / "fed_admin.json").read_text())["admin"]["port"]
    if arm == "confidential":
        trustee, federation, parties = ctx["trustee"], ctx["federation"], ctx["parties"]
        federation.admin.write_startup_files(prod / ADMIN / "startup")
        for site in sites:
            party = parties[site]
            released = party.client.get_resource(party.identity.credential_path().uri())
            install_confidential_kit(
                prod / site,
                CredentialBundle.from_bytes(released, party.identity),
                guest_api_url=party.url,
                trust_anchor_path=str(trustee.token_anchor_path),
                token_signer_path=str(trustee.token_signer_path),
                cc_enabled_sites=sites,
                allow_development_evidence=True,
                verify_frequency_s=args.verify_frequency,
                extra_allowed_classes=ctx["job_classes"],
            )
    else:
        for site in sites:
            _allow_job_classes(prod / site)
    relay = ByteCountingRelay(port)
    for participant in PARTICIPANTS:
        _through_relay(prod / participant, relay)
    processes = []
    logs = {site: root / f"{site}.log" for site in sites}
    try:
        for site in sites:
            role = AGGREGATOR if site == POC_SERVER_NAME else "participant"
            processes.append(start_site(prod / site, site, role, logs[site]))
        server_log = logs[POC_SERVER_NAME]
        _wait_for(
            "every participant registered",
            lambda: all(
                f"client {p} registered" in server_log.read_text(errors="replace")
                for p in PARTICIPANTS
            ),
            processes,
            list(logs.values()),
            timeout=180,
        )
        job = write_fedavg_job(
            root / "job",
            name="lora-fedavg",
            model_dir=str(ctx["model"]),
            output_dir=str(root / "aggregator-output"),
            min_clients=len(PARTICIPANTS),
            rounds=args.rounds,
            trainer_args=trainer_args(
                ctx["model"], ctx["data"], args.local_steps, learning_rate=args.learning_rate
            ),
            # the baseline kit runs no CC manager
            guard_drops=arm == "confidential",
        )
        meta = run_job(prod / ADMIN, ADMIN, job, timeout_s=args.job_timeout)
    finally:
        for process in processes:
            stop_site(process)
        relay.close()
    if meta.get("status") != "FINISHED:COMPLETED":
        raise RuntimeError(f"{arm} job did not complete: {meta}")
    started, finished = _round_times(prod / POC_SERVER_NAME, logs[POC_SERVER_NAME])
    rounds = args.rounds
    if sorted(finished) != list(range(rounds)) or 0 not in started:
        raise RuntimeError(f"{arm}: server logs show rounds {sorted(finished)}, want {rounds}")
    per_round = [finished[r] - finished[r - 1] for r in range(1, rounds)]
    wire = relay.bytes_between(finished[0], finished[rounds - 1])
    adapter = ctx["adapter_bytes"]
    per_round_bytes = (wire["up"] + wire["down"]) / (rounds - 1)
    return {
        "arm": arm,
        "startup_s": started[0] - began,
        "round_s": per_round,
        "round_s_median": statistics.median(per_round),
        "round_s_mean": statistics.fmean(per_round),
        "bytes_per_round": per_round_bytes,
        "bytes_up_per_round": wire["up"] / (rounds - 1),
        "bytes_down_per_round": wire["down"] / (rounds - 1),
        "bytes_per_round_over_adapter": per_round_bytes / adapter,
        "bytes_per_round_over_ideal": per_round_bytes / (2 * len(PARTICIPANTS) * adapter),
    }


def section_overhead(args, work: Path, model: Path, examples) -> dict:
    from coco_ai.federated.credentials import issue_federation, provision, revoke
    from coco_ai.federated.local import POC_SERVER_NAME
    from coco_ai.workloads.federated.job import JOB_CLASSES
    from coco_ai.workloads.federated.quality import (
        global_split,
        initial_adapter,
        write_site_data,
    )

    data = write_site_data(global_split(examples, PARTICIPANTS), work / "data")
    adapter = initial_adapter(model)
    trustee, admin = _trustee(work)
    federation = issue_federation(RUN_ID, POC_SERVER_NAME, PARTICIPANTS, admin_name=ADMIN)
    provision(admin, federation)
    parties = _parties(trustee, federation)
    ctx = {
        "trustee": trustee,
        "federation": federation,
        "parties": parties,
        "model": model,
        "data": data,
        "adapter_bytes": sum(v.size * 4 for v in adapter.values()),
        "job_classes": list(JOB_CLASSES),
    }
    repeats = []
    try:
        for repeat in range(args.repeats):
            order = (
                ("baseline", "confidential") if repeat % 2 == 0 else ("confidential", "baseline")
            )
            arms = {}
            for arm in order:
                arms[arm] = run_arm(arm, work / f"{arm}-{repeat}", ctx, args)
                print(json.dumps(arms[arm]), file=sys.stderr, flush=True)
            base, conf = arms["baseline"], arms["confidential"]
            repeats.append(
                {
                    "order": list(order),
                    "arms": arms,
                    "overhead_fraction": conf["round_s_median"] / base["round_s_median"] - 1,
                    "overhead_fraction_mean": conf["round_s_mean"] / base["round_s_mean"] - 1,
                    "startup_extra_s": conf["startup_s"] - base["startup_s"],
                    "bytes_ratio": conf["bytes_per_round"] / base["bytes_per_round"],
                }
            )
    finally:
        revoke(admin, [b.identity for b in federation.bundles])
        for party in parties.values():
            party.close()
        admin.close()
        trustee.stop()
    overheads = [r["overhead_fraction"] for r in repeats]
    return {
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "verify_frequency_s": args.verify_frequency,
        "adapter_float32_bytes": ctx["adapter_bytes"],
        "repeats": repeats,
        "overhead_fraction_median": statistics.median(overheads),
        "goal_overhead_fraction": 0.10,
    }


def section_quality(args, work: Path, model: Path, examples) -> dict:
    from coco_ai.workloads.federated.quality import compare_federated_with_solo

    _, rounds, local_steps, learning_rate = SETTINGS[args.model]["quality"]
    report = compare_federated_with_solo(
        model,
        examples,
        PARTICIPANTS,
        work / "quality",
        rounds=rounds,
        local_steps=local_steps,
        learning_rate=learning_rate,
        seed=args.seed,
        timeout_s=3600,
    )
    return {"rounds": rounds, "local_steps": local_steps, "seed": args.seed, **report.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=("overhead", "quality", "all"), default="overhead")
    parser.add_argument("--model", choices=tuple(SETTINGS), default="tiny")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--local-steps", type=int)
    parser.add_argument("--verify-frequency", type=int, default=10)
    parser.add_argument("--job-timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out")
    args = parser.parse_args()
    n, rounds, local_steps, learning_rate = SETTINGS[args.model]["overhead"]
    args.rounds = args.rounds or rounds
    args.local_steps = args.local_steps or local_steps
    args.learning_rate = learning_rate
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 0 counts as start-up)")

    import torch

    from coco_ai.workloads.dataset import corpus_text, generate_examples
    from coco_ai.workloads.models import build_tiny_model, convert_smollm2

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the site processes: one thread each, side by side
    work = Path(tempfile.mkdtemp(prefix="bench-federated-"))
    examples = generate_examples(n, seed=args.seed)
    if args.model == "smollm2":
        model = convert_smollm2(REPO / ".cache" / "models")
    else:
        model = build_tiny_model(work / "tiny-1m", "1m", corpus_text(examples))
    result: dict = {"benchmark": "federated", "model": args.model}
    try:
        if args.section in ("overhead", "all"):
            result["overhead"] = section_overhead(args, work, model, examples)
        if args.section in ("quality", "all"):
            result["quality"] = section_quality(args, work, model, examples)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
