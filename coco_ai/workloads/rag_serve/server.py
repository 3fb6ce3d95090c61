"""Serving the loaded service: uvicorn on a loopback socket, plus the periodic refresh of the
callers' credentials (so a credential the data owner revoked in Trustee stops working within
``credential_refresh_s``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from coco_ai.net import is_loopback
from coco_ai.workloads.rag_serve.config import ServeConfig
from coco_ai.workloads.rag_serve.service import LoadedService
from coco_ai.workloads.tee import EXIT_CONFIG, WorkloadError


@dataclass
class RunningService:
    url: str
    service: LoadedService
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


def _listening_socket(host: str, port: int):
    import socket

    # The service speaks plain HTTP with signed responses; queries and answers are confidential,
    # so it listens where only the pod (or host) itself can reach it (docs/THREAT_MODEL.md).
    if not is_loopback(host):
        raise WorkloadError(
            f"refusing to listen on {host!r}: the service serves plain HTTP and listens on "
            "loopback only",
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
    import uvicorn

    from coco_ai.workloads.rag_serve.app import build_app

    app = build_app(service, config.limits, default_k=config.default_k)
    sock = _listening_socket(config.host, config.port)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
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
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise WorkloadError("the HTTP server did not start")
        time.sleep(0.01)
    refresher.start()
    host, port = sock.getsockname()[:2]
    netloc = f"[{host}]" if ":" in host else host
    return RunningService(f"http://{netloc}:{port}", service, server, [thread, refresher], stop)
