"""Serving the loaded service: uvicorn (TLS with a certificate for the attested TEE key, or plain
HTTP on loopback), plus the periodic refresh of the callers' credentials (so a credential the
data owner revoked in Trustee stops working within ``credential_refresh_s``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.net import is_loopback
from coco_ai.workloads.rag_serve.config import ServeConfig
from coco_ai.workloads.rag_serve.service import LoadedService
from coco_ai.workloads.tee import EXIT_CONFIG, WorkloadError


@dataclass
class RunningService:
    url: str
    service: LoadedService
    #: the TLS certificate (PEM) of the attested TEE key; None when serving plain HTTP
    certificate_pem: bytes | None = field(repr=False)
    _server: Any = field(repr=False)
    _threads: list[threading.Thread] = field(repr=False)
    _stop: threading.Event = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._server.should_exit = True
        for thread in self._threads:
            thread.join(timeout)
        self.service.close()

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening_socket(host: str, port: int, *, tls: bool):
    import socket

    # Queries and answers are confidential: without TLS the service listens only where the pod
    # (or host) itself can reach it (docs/THREAT_MODEL.md, "The retrieval service").
    if not tls and not is_loopback(host):
        raise WorkloadError(
            f"refusing to listen on {host!r} without TLS: plain HTTP is for loopback only",
            EXIT_CONFIG,
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    except OSError as exc:
        sock.close()
        raise WorkloadError(
            f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_CONFIG
        ) from None
    sock.listen(128)
    return sock


def serve(service: LoadedService, config: ServeConfig, *, log=print) -> RunningService:
    """Serve ``service`` on a background thread; returns once it accepts connections."""
    import shutil

    import uvicorn

    from coco_ai.workloads.rag_serve.app import build_app, tee_key_certificate
    from coco_ai.workloads.tee import private_tmpdir

    tls: dict[str, str] = {}
    certificate = None
    if config.tls:
        # the TLS key is the attested TEE key; uvicorn reads the files once, when it starts
        _, tee_key_pem = service.attestation()
        certificate = tee_key_certificate(tee_key_pem)
        tls_dir = private_tmpdir("coco-ai-rag-serve-tls-")
        (tls_dir / "key.pem").write_bytes(tee_key_pem)
        (tls_dir / "cert.pem").write_bytes(certificate)
        tls = {"ssl_keyfile": str(tls_dir / "key.pem"), "ssl_certfile": str(tls_dir / "cert.pem")}
    app = build_app(service, config.limits, default_k=config.default_k, certificate_pem=certificate)
    sock = _listening_socket(config.host, config.port, tls=config.tls)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **tls)
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="rag-serve", daemon=True
    )

    def refresh_loop() -> None:
        while not stop.wait(config.credential_refresh_s):
            refused = service.gate.refresh()
            if refused:
                log(f"caller credentials not released (callers refused): {', '.join(refused)}")

    refresher = threading.Thread(target=refresh_loop, name="rag-serve-credentials", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise WorkloadError("the HTTP server did not start")
            time.sleep(0.01)
    finally:
        if tls:  # loaded (or failed): the key file goes
            shutil.rmtree(Path(tls["ssl_keyfile"]).parent, ignore_errors=True)
    refresher.start()
    host, port = sock.getsockname()[:2]
    netloc = f"[{host}]" if ":" in host else host
    scheme = "https" if config.tls else "http"
    url = f"{scheme}://{netloc}:{port}"
    return RunningService(url, service, certificate, server, [thread, refresher], stop)
