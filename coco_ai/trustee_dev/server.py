"""Running the stand-in: uvicorn on a host/port, TLS rules, a background-thread helper.

A non-loopback address is refused unless TLS is configured, so a development broker can never
be reached in clear text from another machine. `insecure_http` is only honoured on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from coco_ai.net import is_loopback
from coco_ai.trustee_dev.admin import AdminConfig
from coco_ai.trustee_dev.app import TrusteeStandIn


class ServeConfigError(ValueError):
    """The requested listen configuration is unsafe or inconsistent."""


def check_listen(host: str, tls_cert: str | None, tls_key: str | None, insecure_http: bool) -> None:
    if bool(tls_cert) != bool(tls_key):
        raise ServeConfigError("--tls-cert and --tls-key go together")
    if tls_cert and insecure_http:
        raise ServeConfigError("choose either TLS (--tls-cert/--tls-key) or --insecure-http")
    if not tls_cert and not insecure_http:
        raise ServeConfigError("no TLS configured: pass --tls-cert/--tls-key or --insecure-http")
    if not tls_cert and not is_loopback(host):
        raise ServeConfigError(f"refusing to listen on non-loopback address {host!r} without TLS")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_tls_ca(state_dir: str | Path) -> Path:
    """The stand-in's TLS CA (created on first use): `<state-dir>/tls-ca/ca.pem`.

    Separate from the token CA (`<state-dir>/ca.pem`) on purpose: a relying party that trusts
    the token anchor must never accept a token signed with the TLS server key.
    """
    from cryptography.hazmat.primitives import serialization

    from coco_ai.trustee_dev.state import StateDir, write_atomic
    from coco_ai.trustee_dev.tokens import new_ca

    state = StateDir(state_dir)
    key_path = state.tls_ca_dir / "ca-key.pem"
    if not key_path.exists():
        key, cert = new_ca("coco-ai trustee stand-in TLS CA")
        write_atomic(
            state.tls_ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
        # The key last: its presence marks a complete CA.
        write_atomic(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return state.tls_ca_cert_path


def write_server_certificate(
    state_dir: str | Path, cert_path: Path, key_path: Path, hosts: tuple[str, ...]
) -> Path:
    """A P-256 TLS server certificate for `hosts`, issued by the stand-in's TLS CA.

    Returns the TLS CA certificate path, which clients pin. The token CA is not involved.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from coco_ai.trustee_dev.state import StateDir, write_atomic

    ca_path = ensure_tls_ca(state_dir)
    state = StateDir(state_dir)
    ca_key = serialization.load_pem_private_key(
        (state.tls_ca_dir / "ca-key.pem").read_bytes(), password=None
    )
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coco-ai trustee stand-in")])
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return ca_path


def uvicorn_config(
    standin: TrusteeStandIn,
    host: str,
    port: int,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    insecure_http: bool = False,
    log_level: str = "warning",
) -> uvicorn.Config:
    check_listen(host, tls_cert, tls_key, insecure_http)
    kwargs: dict[str, Any] = {}
    if tls_cert:
        kwargs.update(ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    return uvicorn.Config(
        standin.app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="asyncio",
        # Clients that keep connections alive must not hold a shutdown hostage.
        timeout_graceful_shutdown=2,
        **kwargs,
    )


@dataclass
class RunningServer:
    """A stand-in served by uvicorn on a background thread.

    `tls_ca_path` is what clients pin for TLS (None with plain HTTP); `token_anchor_path` is
    the EAR trust anchor and `token_signer_path` the signer certificate to pin. They are
    different CAs on purpose.
    """

    url: str
    tls_ca_path: Path | None
    token_anchor_path: Path
    token_signer_path: Path
    tls_cert_path: Path | None
    standin: TrusteeStandIn
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    state_dir: str | Path,
    admin: AdminConfig | bytes | str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: bool = True,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    startup_timeout: float = 15.0,
    **standin_kwargs: Any,
) -> RunningServer:
    """Start a real uvicorn server for the stand-in on a free loopback port.

    With `tls=True` and no certificate given, one issued by the stand-in's TLS CA is created in
    the state dir (`tls/server.pem`), and clients pin `tls_ca_path` (`<state-dir>/tls-ca/ca.pem`).
    With a given certificate, `tls_ca_path` is None: the caller knows its own CA. EAR tokens
    verify against `token_anchor_path` (`<state-dir>/ca.pem`), pinned to `token_signer_path`.
    `tls=False` serves plain HTTP, on loopback only. `admin` is an AdminConfig or one admin
    public key PEM (TrusteeStandIn). `standin_kwargs` go to TrusteeStandIn
    (`trustee_version`, `extensions`, `policy_set`, …).
    """
    standin = TrusteeStandIn(state_dir, admin, **standin_kwargs)
    cert_path: Path | None = None
    tls_ca: Path | None = None
    if tls:
        if tls_cert is None:
            cert_path = Path(state_dir) / "tls" / "server.pem"
            key_path = Path(state_dir) / "tls" / "server-key.pem"
            if not cert_path.exists():
                write_server_certificate(state_dir, cert_path, key_path, (host, "localhost"))
            tls_ca = ensure_tls_ca(state_dir)
            tls_cert, tls_key = cert_path, key_path
        cert_path = Path(tls_cert)
    port = port or free_port(host)
    config = uvicorn_config(
        standin,
        host,
        port,
        tls_cert=str(tls_cert) if tls else None,
        tls_key=str(tls_key) if tls else None,
        insecure_http=not tls,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve()), name=f"trustee-standin-{port}", daemon=True
    )
    thread.start()
    pause = threading.Event()
    for _ in range(int(startup_timeout / 0.02)):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError(f"stand-in failed to start on {host}:{port}")
        pause.wait(0.02)
    else:
        server.should_exit = True
        raise RuntimeError(f"stand-in did not start within {startup_timeout} s")
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(
        url=f"{scheme}://{shown}:{port}",
        tls_ca_path=tls_ca,
        token_anchor_path=standin.token_anchor_path,
        token_signer_path=standin.token_signer_path,
        tls_cert_path=cert_path,
        standin=standin,
        _server=server,
        _thread=thread,
    )
