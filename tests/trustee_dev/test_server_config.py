"""Listening rules and the CLI: no plain HTTP off loopback, no insecure defaults."""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys

import pytest

from coco_ai.trustee_dev.cli import register
from coco_ai.trustee_dev.server import ServeConfigError, check_listen

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "kbs.example.com"])
def test_non_loopback_without_tls_is_refused(host):
    with pytest.raises(ServeConfigError, match="non-loopback"):
        check_listen(host, None, None, insecure_http=True)
    check_listen(host, "cert.pem", "key.pem", insecure_http=False)


def test_tls_or_explicit_insecure_http_required():
    with pytest.raises(ServeConfigError):
        check_listen("127.0.0.1", None, None, insecure_http=False)
    with pytest.raises(ServeConfigError):
        check_listen("127.0.0.1", "cert.pem", None, insecure_http=False)
    with pytest.raises(ServeConfigError):
        check_listen("127.0.0.1", "cert.pem", "key.pem", insecure_http=True)
    check_listen("127.0.0.1", None, None, insecure_http=True)
    check_listen("::1", None, None, insecure_http=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import argparse, sys\n"
        "from coco_ai.trustee_dev.cli import register\n"
        "p = argparse.ArgumentParser(prog='coco-ai'); s = p.add_subparsers(required=True)\n"
        "register(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_cli_keygen_and_refusal(tmp_path):
    done = _cli(
        "trustee", "keygen", "--out-dir", str(tmp_path / "keys"),
        "--tls-for-state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys" / "admin-key.pem").stat().st_mode & 0o077 == 0
    ctx = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.pem"))
    ctx.load_verify_locations(cafile=str(tmp_path / "keys" / "tls.pem"))  # parses as a cert
    refused = _cli(
        "trustee", "serve", "--host", "0.0.0.0", "--port", "1", "--insecure-http",
        "--state-dir", str(tmp_path / "state"),
        "--admin-public-key", str(tmp_path / "keys" / "admin-public.pem"),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "non-loopback" in refused.stderr


def test_register_adds_one_command():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    assert list(sub.choices) == ["trustee"]
    args = parser.parse_args(
        ["trustee", "serve", "--state-dir", "d", "--admin-public-key", "k", "--insecure-http"]
    )
    assert args.port == 8080 and args.host == "127.0.0.1" and callable(args.func)
