"""Emulator of the CoCo guest components (attestation agent + confidential data hub) for hosts
without a TEE: the api-server-rest routes on loopback, backed by Trustee's ``sample`` CPU evidence
and ``sampledevice`` GPU evidence.

Routes as guest-components ``api-server-rest/src/router.rs`` (feature ``all``):

- ``/cdh/resource/<repo>/<type>/<tag>`` (any method): attest to the KBS from the initdata and
  return the plaintext resource, 200 ``application/octet-stream``; any failure is 500 with the
  error text (a policy denial names ``PolicyDeny``).
- ``GET /aa/token?token_type=kbs``: 200 octet-stream JSON ``{"token", "tee_keypair"}``.
- ``GET /aa/evidence?runtime_data=…[&encoding=base64]``: primary evidence over runtime_data
  (at most 64 bytes, else 500); undecodable input is 400.
- ``GET /aa/additional-evidence?runtime_data=…``: the ``{tee: evidence}`` device map.
- ``GET /info``: ``{"version", "tee", "additional_tees", "feature"}``.

Sealed secrets: api-server-rest has no unseal route (the CDH's ``UnsealSecret`` is ttrpc, called
by the Kata agent), so neither has this surface. ``unseal_secret`` is the in-process counterpart;
the agent's unsealing of ``sealed.`` env values and Secret volume files before the workload starts
is ``coco-ai guest exec`` (coco_ai.guest.sealed).

Every peer that is not a loopback address gets 403 before any routing, like the real server.
The emulator holds one TEE key pair for its lifetime (the workload's identity in the EAR) and
re-attests when its token is about to expire.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from coco_ai.guest.attesters import SampleAttester, SampleDeviceAttester
from coco_ai.guest.initdata import Initdata
from coco_ai.kbs.client import KbsClient
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.kbs.resource_path import to_resource_path
from coco_ai.net import is_loopback

EMULATOR_VERSION = "coco-ai-guest-emulator 0.1.0"
OCTET_STREAM = "application/octet-stream"
# Re-attest this long before the token's exp, so a token handed out is still usable.
TOKEN_REFRESH_MARGIN_S = 30
# base64url without padding, and never a length no encoder produces (1 mod 4).
_B64URL_NOPAD = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?")


class EmulatorConfigError(ValueError):
    """The emulator cannot be set up as asked (no KBS URL, bad GPU count, non-loopback bind)."""


class GuestComponentsEmulator:
    """The guest side of one confidential pod: one initdata, one TEE key, N sample GPUs."""

    def __init__(
        self,
        initdata: Initdata,
        *,
        kbs_url: str | None = None,
        kbs_ca: bytes | str | None = None,
        gpus: int = 0,
        tee_key: TeeKeyPair | None = None,
        kbs_transport: httpx.BaseTransport | None = None,
        handshake_retries: int = 5,
        retry_delay: float = 1.0,
        clock: Callable[[], float] = time.time,
        token_refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S,
    ) -> None:
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
            raise EmulatorConfigError(f"gpus must be a non-negative integer, got {gpus!r}")
        url = kbs_url or initdata.kbs_url
        if not url:
            raise EmulatorConfigError("no KBS URL: pass --kbs-url or put it in cdh.toml [kbc] url")
        self.initdata = initdata
        self.kbs_url = url
        self.token_refresh_margin_s = token_refresh_margin_s
        self.gpus = gpus
        self.cpu = SampleAttester(init_data_digest=initdata.digest())
        self.devices: list[Any] = [SampleDeviceAttester(count=gpus)] if gpus else []
        self._kbs = KbsClient(
            url,
            self.cpu,
            self.devices,
            tee_key=tee_key or TeeKeyPair.generate(),
            initdata_toml=initdata.toml,
            ca_cert=kbs_ca if kbs_ca is not None else initdata.kbs_cert,
            transport=kbs_transport,
            handshake_retries=handshake_retries,
            retry_delay=retry_delay,
        )
        self._clock = clock
        # KbsClient keeps one RCAR session (cookie, token); requests arrive on a thread pool.
        self._lock = threading.Lock()
        self.app: ASGIApp = _LoopbackOnly(self._build_app())

    def __repr__(self) -> str:
        return f"GuestComponentsEmulator(kbs_url={self.kbs_url!r}, gpus={self.gpus})"

    def close(self) -> None:
        """Drop the KBS connection (the broker would otherwise wait on it when it shuts down)."""
        self._kbs.close()

    # -- operations (also usable in-process) -------------------------------------------------

    def get_resource(self, path: str) -> bytes:
        with self._lock:
            return self._kbs.get_resource("kbs:///" + path)

    def unseal_secret(self, sealed: str | bytes, expected_resource: str | None = None) -> bytes:
        """The CDH's ``UnsealSecret`` (a ttrpc call upstream, no api-server-rest route, so none
        here either): verify a sealed vault secret and fetch its resource over this guest's
        attested KBS session. Raises coco_ai.guest.sealed.SealedSecretError."""
        from coco_ai.guest.sealed import unseal_secret

        return unseal_secret(
            sealed,
            lambda uri: self.get_resource(to_resource_path(uri).url_path()),
            expected_resource=expected_resource,
        )

    def get_token(self) -> tuple[str, bytes]:
        """A valid EAR token for this TEE key, attesting again only when it is about to expire."""
        with self._lock:
            token = self._kbs.token
            # The token may have been renewed by a resource fetch; its own exp is the truth.
            exp = _token_expiry(token) if token else None
            if exp is None or self._clock() > exp - self.token_refresh_margin_s:
                token = self._kbs.attest()
            return token, self._kbs.tee_key.private_pem()

    def evidence(self, runtime_data: bytes) -> dict[str, Any]:
        return self.cpu.evidence(runtime_data)

    def additional_evidence(self, runtime_data: bytes) -> dict[str, Any]:
        return {d.tee: d.evidence(runtime_data) for d in self.devices}

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"version": EMULATOR_VERSION, "tee": self.cpu.tee}
        if self.devices:
            info["additional_tees"] = [d.tee for d in self.devices]
        info["feature"] = "all"
        return info

    # -- HTTP --------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
        return Starlette(
            routes=[
                Route("/info", self._info_route, methods=methods),
                Route("/cdh/resource/{path:path}", self._resource_route, methods=methods),
                Route("/aa/token", self._token_route, methods=methods),
                Route("/aa/evidence", self._evidence_route, methods=methods),
                Route("/aa/additional-evidence", self._additional_route, methods=methods),
                Route("/{rest:path}", _not_found, methods=methods),
            ]
        )

    async def _info_route(self, request: Request) -> Response:
        if request.method != "GET":
            return PlainTextResponse("Method Not Allowed", status_code=405)
        return JSONResponse(self.info())

    async def _resource_route(self, request: Request) -> Response:
        path = request.path_params["path"]
        try:
            data = await run_in_threadpool(self.get_resource, path)
        except Exception as exc:  # CDH answers every failure with 500 and the error text
            return PlainTextResponse(_error_text(exc), status_code=500)
        return Response(data, media_type=OCTET_STREAM)

    async def _token_route(self, request: Request) -> Response:
        if request.method != "GET":
            return _not_found_response()
        token_type = request.query_params.get("token_type")
        if token_type is None:
            return PlainTextResponse("BAD REQUEST", status_code=400)
        if token_type != "kbs":  # noqa: S105 - a token kind, not a secret
            return PlainTextResponse(f"Unsupported token type {token_type}", status_code=500)
        try:
            token, pem = await run_in_threadpool(self.get_token)
        except Exception as exc:
            return PlainTextResponse(_error_text(exc), status_code=500)
        body = json.dumps({"token": token, "tee_keypair": pem.decode("ascii")})
        return Response(body.encode(), media_type=OCTET_STREAM)

    async def _evidence_route(self, request: Request) -> Response:
        return await self._evidence_common(request, self.evidence)

    async def _additional_route(self, request: Request) -> Response:
        return await self._evidence_common(request, self.additional_evidence)

    async def _evidence_common(
        self, request: Request, produce: Callable[[bytes], dict[str, Any]]
    ) -> Response:
        if request.method != "GET":
            return _not_found_response()
        runtime_data = _runtime_data(request)
        if runtime_data is None:
            return PlainTextResponse("BAD REQUEST", status_code=400)
        try:
            ev = produce(runtime_data)
        except Exception as exc:
            return PlainTextResponse(_error_text(exc), status_code=500)
        return Response(json.dumps(ev).encode(), media_type=OCTET_STREAM)


def _runtime_data(request: Request) -> bytes | None:
    """``runtime_data`` as api-server-rest decodes it: raw UTF-8, or base64url-nopad."""
    raw = request.query_params.get("runtime_data")
    if raw is None:
        return None
    encoding = request.query_params.get("encoding")
    if encoding is None:
        return raw.encode("utf-8")
    if encoding != "base64" or not _B64URL_NOPAD.fullmatch(raw):
        return None
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None


def _token_expiry(token: str) -> float | None:
    """``exp`` of a JWT, read without verification: only to decide when to attest again."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _not_found_response() -> Response:
    return PlainTextResponse("URL NOT FOUND", status_code=404)


async def _not_found(request: Request) -> Response:
    return _not_found_response()


class _LoopbackOnly:
    """ASGI wrapper: 403 "Forbidden" for any peer that is not loopback (or is unknown)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if not client or not is_loopback(client[0]):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await PlainTextResponse("Forbidden", status_code=403)(scope, receive, send)
                return
        await self._app(scope, receive, send)


@dataclass
class RunningServer:
    """An emulator served by uvicorn on a background thread; ``stop()`` also closes it."""

    url: str
    emulator: GuestComponentsEmulator
    _server: Any
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.emulator.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    emulator: GuestComponentsEmulator, host: str = "127.0.0.1", port: int = 0
) -> RunningServer:
    """Serve ``emulator`` with uvicorn on a background thread; ``port=0`` picks a free port."""
    import uvicorn

    sock = bind_loopback(host, port)
    config = uvicorn.Config(emulator.app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="guest-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("guest-components emulator did not start")
        time.sleep(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningServer(
        url=f"http://{netloc}:{bound_port}", emulator=emulator, _server=server, _thread=thread
    )


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening socket on a loopback address; anything else is refused (fail closed)."""
    if not is_loopback(host):
        raise EmulatorConfigError(
            f"refusing to bind the guest-components emulator to {host!r}: it releases plaintext "
            "keys and TEE private keys, so it listens on loopback only"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1" if host == "localhost" else host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
