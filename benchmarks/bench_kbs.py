"""Benchmark: RCAR handshake + resource fetch against the Trustee stand-in on loopback.

The stand-in runs in its own process (uvicorn, TLS by default) so client and server do not
share a GIL. Measured in one run:
- baseline: a bare HTTPS round trip to the same server (`GET /healthz`, kept-alive connection);
- full handshake (auth + attest with sample CPU + 1 sampledevice GPU + initdata) plus one
  resource fetch (JWE decrypt), with the real KbsClient: p50/p95 and the ratio to the baseline;
- attestations per second with 1, 8 and 32 concurrent clients (threads over client processes);
- where the server's time goes: the cost of each server-side step measured in isolation.

Prints one JSON object. `--quick` shortens every phase.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESOURCE = "coco-ai/bench/key"
TRUSTEE_VERSION = "0.21.0"
# The workload image the served stand-in's resource policy approves; the clients' initdata is
# bound to it, as a run's is.
BENCH_IMAGE = "registry.example/coco-ai/finetune@sha256:" + "b" * 64


def _admin_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _serve(state_dir: str, public_pem: bytes, port: int, tls: bool) -> None:
    import uvicorn

    from coco_ai.trustee_dev.app import TrusteeStandIn
    from coco_ai.trustee_dev.server import uvicorn_config

    # v0.21.0 mode: the baseline is a bare /healthz round trip, which v0.20.0 does not have.
    standin = TrusteeStandIn(
        state_dir, public_pem, trustee_version=TRUSTEE_VERSION, approved_images=[BENCH_IMAGE]
    )
    tls_dir = Path(state_dir) / "tls"
    config = uvicorn_config(
        standin,
        "127.0.0.1",
        port,
        tls_cert=str(tls_dir / "server.pem") if tls else None,
        tls_key=str(tls_dir / "server-key.pem") if tls else None,
        insecure_http=not tls,
    )
    uvicorn.Server(config).run()


def _client(url: str, ca: bytes | None, gpus: int = 1):
    from coco_ai.guest.attesters.sample import SampleAttester
    from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
    from coco_ai.guest.initdata import build_initdata
    from coco_ai.kbs.client import KbsClient
    from coco_ai.workloads.kinds import FINETUNE

    initdata = build_initdata(
        url, ca, {"io.coco-ai.run-id": "bench"}, image=BENCH_IMAGE, module=FINETUNE.module
    )
    return KbsClient(
        url,
        SampleAttester(init_data_digest=initdata.digest()),
        [SampleDeviceAttester(count=gpus)] if gpus else [],
        initdata_toml=initdata.toml,
        ca_cert=ca,
        handshake_retries=1,
    )


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _attest_worker(url: str, ca: bytes | None, threads: int, start_at: float, duration: float):
    """Runs in a client process: `threads` clients attesting in a loop for `duration` s."""
    clients = [_client(url, ca) for _ in range(threads)]
    for c in clients:  # warm the connection and TLS session outside the window
        c.attest()
    counts = [0] * threads
    errors = [0] * threads

    def loop(i: int) -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        while time.time() < end:
            try:
                clients[i].attest()
                counts[i] += 1
            except Exception:
                errors[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts), sum(errors)


def _throughput(url: str, ca: bytes | None, concurrency: int, duration: float) -> dict[str, Any]:
    procs = min(concurrency, 2)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    start_at = time.time() + 4.0 + 0.1 * concurrency
    with ctx.Pool(procs) as pool:
        results = pool.starmap(_attest_worker, [(url, ca, n, start_at, duration) for n in per])
    done = sum(r[0] for r in results)
    return {
        "concurrency": concurrency,
        "attestations": done,
        "errors": sum(r[1] for r in results),
        "attestations_per_s": round(done / duration, 1),
    }


def _breakdown(samples: int) -> dict[str, float]:
    """Server-side steps timed in isolation (ms per call)."""
    import base64

    from coco_ai import policies
    from coco_ai.guest.attesters.sample import SampleAttester
    from coco_ai.guest.attesters.sampledevice import SampleDeviceAttester
    from coco_ai.guest.initdata import build_initdata
    from coco_ai.kbs.evidence import tee_evidence
    from coco_ai.kbs.jwe import TeeKeyPair, encrypt_for_tee
    from coco_ai.trustee_dev.app import TrusteeStandIn
    from coco_ai.trustee_dev.attestation import Session
    from coco_ai.trustee_dev.policy import ResourcePolicyEvaluator
    from coco_ai.workloads.kinds import FINETUNE

    _, public = _admin_keys()
    standin = TrusteeStandIn(tempfile.mkdtemp(prefix="bench-kbs-"), public)
    key = TeeKeyPair.generate()
    nonce = base64.b64encode(os.urandom(32)).decode()
    pub = key.public_jwk()
    initdata = build_initdata("https://127.0.0.1", None, image=BENCH_IMAGE, module=FINETUNE.module)
    cpu = SampleAttester(init_data_digest=initdata.digest())
    body = json.dumps(
        {
            "runtime-data": {"nonce": nonce, "tee-pubkey": pub},
            "tee-evidence": tee_evidence(cpu, [SampleDeviceAttester()], nonce, pub),
            "init-data": {"format": "toml", "body": initdata.toml},
        }
    ).encode()

    def timed(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(samples):
            fn()
        return round((time.perf_counter() - t) * 1000 / samples, 3)

    session = Session("s", "sample", nonce, time.time() + 300)
    token = standin.attestation.attest(session, body)
    claims = standin.broker.verify(token, time.time()).raw
    submods = claims["submods"]
    cpu_policy = standin._attestation_policy("default_cpu")
    annotated = submods["cpu0"]["ear.veraison.annotated-evidence"]
    request = {"plugin": "resource", "resource-path": ["a", "b", "c"], "query": {}}
    resource_policy = policies.resource_policy_text("dev", [BENCH_IMAGE])
    evaluator = ResourcePolicyEvaluator()
    return {
        "attest_total_server_ms": timed(lambda: standin.attestation.attest(session, body)),
        "appraisal_policy_per_device_ms": timed(lambda: cpu_policy.appraise(annotated)),
        "ear_sign_ms": timed(lambda: standin.broker.issue(submods, time.time(), 300)),
        "ear_verify_ms": timed(lambda: standin.broker.verify(token, time.time())),
        "resource_policy_ms": timed(lambda: evaluator.allow(resource_policy, claims, request)),
        "jwe_encrypt_ms": timed(lambda: encrypt_for_tee(os.urandom(32), pub)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--insecure-http", action="store_true", help="plain HTTP instead of TLS")
    args = parser.parse_args()
    iterations = 30 if args.quick else 200
    duration = 2.0 if args.quick else 8.0
    tls = not args.insecure_http

    import httpx

    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.trustee_dev.server import free_port, write_server_certificate
    from coco_ai.trustee_dev.state import StateDir
    from coco_ai.trustee_dev.tokens import TokenBroker

    private, public = _admin_keys()
    state_dir = tempfile.mkdtemp(prefix="bench-kbs-state-")
    TokenBroker(StateDir(state_dir))  # create the token CA before the server process starts
    ca = b""
    if tls:
        tls_dir = Path(state_dir) / "tls"
        ca = write_server_certificate(
            state_dir, tls_dir / "server.pem", tls_dir / "server-key.pem", ("127.0.0.1",)
        ).read_bytes()  # the TLS CA (separate from the token CA)
    port = free_port()
    server = mp.get_context("spawn").Process(
        target=_serve, args=(state_dir, public, port, tls), daemon=True
    )
    server.start()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: Any = True
    if tls:
        import ssl

        verify = ssl.create_default_context(cadata=ca.decode())
    try:
        with httpx.Client(base_url=url, verify=verify, trust_env=False) as http:
            for _ in range(300):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            else:
                raise RuntimeError("stand-in did not come up")
            with KbsAdminClient(
                url, auth=admin_auth_for(TRUSTEE_VERSION, private), ca_cert=ca if tls else None
            ) as admin:
                admin.set_resource(RESOURCE, os.urandom(32))

            baseline: list[float] = []
            for _ in range(iterations * 3):
                t = time.perf_counter()
                http.get("/healthz")
                baseline.append((time.perf_counter() - t) * 1000)

        client = _client(url, ca if tls else None)
        client.get_resource(f"kbs:///{RESOURCE}")  # warm-up
        full: list[float] = []
        for _ in range(iterations):
            t = time.perf_counter()
            client.attest()
            client.get_resource(f"kbs:///{RESOURCE}")
            full.append((time.perf_counter() - t) * 1000)
        client.close()

        throughput = [_throughput(url, ca if tls else None, n, duration) for n in (1, 8, 32)]
    finally:
        server.terminate()
        server.join(5)

    p50, base50 = statistics.median(full), statistics.median(baseline)
    result = {
        "benchmark": "bench_kbs",
        "transport": "https (loopback, pinned CA)" if tls else "http (loopback)",
        "trustee_version": TRUSTEE_VERSION,
        "cpus": os.cpu_count(),
        "iterations": iterations,
        "baseline_healthz_ms": {"p50": round(base50, 3), "p95": round(_pct(baseline, 0.95), 3)},
        "handshake_plus_fetch_ms": {"p50": round(p50, 3), "p95": round(_pct(full, 0.95), 3)},
        "ratio_to_baseline_p50": round(p50 / base50, 1),
        "goal_p50_under_25ms": p50 < 25,
        "throughput": throughput,
        "goal_100_attestations_per_s": max(t["attestations_per_s"] for t in throughput) >= 100,
        "server_breakdown_ms": _breakdown(10 if args.quick else 50),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
