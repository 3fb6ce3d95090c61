"""A real loopback HTTP(S) proxy that injects faults between a client and a real server.

It sits on its own port in front of the Trustee stand-in (terminating TLS with the stand-in's
own certificate and re-encrypting to it, so a client pinning the stand-in's CA accepts it) or in
front of moto's S3 server (plain HTTP). Each client connection carries one request (the proxy
answers ``Connection: close``), so a fault hits exactly the requests it is aimed at. Faults:

- ``down()`` / ``up()``: the listening socket is closed, so connects are refused (ECONNREFUSED),
  then reopened on the same port;
- ``delay``: seconds to wait before forwarding each request;
- ``fail(n, status)``: the next ``n`` matching requests get ``status`` without reaching the server;
- ``cut(n)``: the next ``n`` matching requests are dropped mid-body (the client's connection is
  reset after half of the request body has been read; nothing reaches the server);
- ``cut_response(n)``: the next ``n`` matching requests reach the server, and the connection is
  closed half-way through the answer (the server acted; the client never learns it).

Nothing of the client or server is patched: both see only sockets.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Match = Callable[[str, str], bool]  # (method, target) -> is this request aimed at?


def _any(_method: str, _target: str) -> bool:
    return True


@dataclass
class _Rule:
    kind: str  # "fail", "cut", "cut_response"
    remaining: int
    match: Match
    status: int = 503


@dataclass
class Seen:
    method: str
    target: str
    fault: str  # "" when forwarded untouched


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    server_tls: ssl.SSLContext | None = None  # terminate TLS towards the client
    upstream_tls: ssl.SSLContext | None = None  # TLS towards the real server
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.server_tls else 'http'}://127.0.0.1:{self.port}"

    # -- faults ------------------------------------------------------------------------------
    def fail(self, n: int, status: int = 503, match: Match = _any) -> None:
        with self._lock:
            self._rules.append(_Rule("fail", n, match, status))

    def cut(self, n: int, match: Match = _any) -> None:
        with self._lock:
            self._rules.append(_Rule("cut", n, match))

    def cut_response(self, n: int, match: Match = _any) -> None:
        with self._lock:
            self._rules.append(_Rule("cut_response", n, match))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
        self.delay = 0.0

    def down(self) -> None:
        if self._listener is not None:
            # shutdown() first: it wakes the thread blocked in accept() and stops listening
            # at once (a bare close() leaves the kernel socket listening until accept returns).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def up(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        self.down()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being handled (e.g. delayed ones still to reach the server)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} request(s) still in flight")

    # -- plumbing ----------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by down()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take_rule(self, method: str, target: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.match(method, target):
                    rule.remaining -= 1
                    return rule
        return None

    def _serve(self, raw: socket.socket) -> None:
        with self._lock:
            self._in_flight += 1
        try:
            self._handle(raw)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _handle(self, raw: socket.socket) -> None:
        conn = raw
        try:
            conn.settimeout(30)
            if self.server_tls is not None:
                conn = self.server_tls.wrap_socket(raw, server_side=True)
            reader = conn.makefile("rb")
            head = _read_head(reader)
            if head is None:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target = request_line.split(" ")[:2]
            rule = self._take_rule(method, target)
            self.seen.append(Seen(method, target, rule.kind if rule else ""))
            if rule is not None and rule.kind == "cut":
                _read_body(reader, head, limit_half=True)
                _reset(conn)
                return
            body = _read_body(reader, head)
            if rule is not None and rule.kind == "fail":
                text = f"injected {rule.status}".encode()
                conn.sendall(
                    f"HTTP/1.1 {rule.status} Injected\r\nContent-Length: {len(text)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + text
                )
                return
            if self.delay:
                time.sleep(self.delay)
            response = self._forward(_with_connection_close(head) + body)
            if rule is not None and rule.kind == "cut_response":
                conn.sendall(response[: len(response) // 2])
                _reset(conn)
                return
            conn.sendall(response)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _forward(self, request: bytes) -> bytes:
        upstream = socket.create_connection(self.upstream, timeout=60)
        if self.upstream_tls is not None:
            upstream = self.upstream_tls.wrap_socket(upstream, server_hostname=self.upstream[0])
        with upstream:
            upstream.sendall(request)
            chunks = []
            while chunk := upstream.recv(65536):
                chunks.append(chunk)
        response = b"".join(chunks)
        head, sep, rest = response.partition(b"\r\n\r\n")
        return _with_connection_close(head + sep) + rest


def _read_head(reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out


def _read_body(reader, head: bytes, *, limit_half: bool = False) -> bytes:
    headers = _headers(head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = []
        while True:
            size_line = reader.readline()
            body.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := reader.readline()) not in (b"\r\n", b"\n", b""):
                    body.append(trailer)
                body.append(b"\r\n")
                return b"".join(body)
            body.append(reader.read(size + 2))
            if limit_half:
                return b"".join(body)
    length = int(headers.get("content-length", "0"))
    return reader.read(length // 2 if limit_half else length)


def _with_connection_close(head: bytes) -> bytes:
    lines = [
        line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees a reset connection, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
