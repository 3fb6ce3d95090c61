"""Network rules shared by the clients and the development servers."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """True for `localhost`, 127.0.0.0/8, ::1 and IPv4-mapped loopback; False otherwise.

    The development servers refuse non-loopback binding and peers without TLS, and the clients
    refuse plain HTTP beyond loopback, all by this one rule.
    """
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; another process may take it
    before the caller binds it, so callers bind soon after)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
