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


def test_cli_version_and_extension_flags():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    base = ["trustee", "serve", "--state-dir", "d", "--admin-public-key", "k", "--insecure-http"]
    args = parser.parse_args(base)
    assert (args.trustee_version, args.extension) == ("0.20.0", [])  # the compose pin
    args = parser.parse_args(
        [*base, "--trustee-version", "main", "--extension", "multi-gpu-sampledevice",
         "--extension", "sample-initdata-check"]
    )  # fmt: skip
    assert args.trustee_version == "main"
    assert args.extension == ["multi-gpu-sampledevice", "sample-initdata-check"]
    for bad in (["--trustee-version", "0.19.0"], ["--extension", "anything-goes"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])


def test_keygen_tls_certificate_comes_from_the_tls_ca_not_the_token_ca(tmp_path):
    from cryptography import x509

    done = _cli(
        "trustee", "keygen", "--out-dir", str(tmp_path / "keys"),
        "--tls-for-state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    tls = x509.load_pem_x509_certificate((tmp_path / "keys" / "tls.pem").read_bytes())
    tls_ca = x509.load_pem_x509_certificate((tmp_path / "state" / "tls-ca" / "ca.pem").read_bytes())
    token_ca = x509.load_pem_x509_certificate((tmp_path / "state" / "ca.pem").read_bytes())
    tls.verify_directly_issued_by(tls_ca)
    with pytest.raises(Exception):  # noqa: B017 - any verification failure will do
        tls.verify_directly_issued_by(token_ca)
    assert "tls-ca" in done.stdout


def test_cli_serves_the_chosen_version_with_its_extensions(tmp_path):
    import time

    import httpx

    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.trustee_dev.server import free_port

    keys = _cli("trustee", "keygen", "--out-dir", str(tmp_path / "keys"))
    assert keys.returncode == 0, keys.stderr
    port = free_port()
    code = (
        "import argparse, sys\n"
        "from coco_ai.trustee_dev.cli import register\n"
        "p = argparse.ArgumentParser(prog='coco-ai'); s = p.add_subparsers(required=True)\n"
        "register(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, "trustee", "serve", "--port", str(port), "--insecure-http",
         "--state-dir", str(tmp_path / "state"),
         "--admin-public-key", str(tmp_path / "keys" / "admin-public.pem"),
         "--trustee-version", "main", "--extension", "sample-initdata-check",
         "--extension", "multi-gpu-sampledevice"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail("the CLI stand-in did not start")
        auth = admin_auth_for("main", (tmp_path / "keys" / "admin-key.pem").read_bytes())
        headers = {"Authorization": auth.authorization()}
        main_shape = httpx.post(
            f"{url}/kbs/v0/provisioner/provision", json={"vm_name": "vm"}, headers=headers
        )
        assert main_shape.status_code == 200 and main_shape.json()["resource_path"].endswith(
            "/root"
        )
        # main's plugin takes only {vm_name, namespace}: no extension adds another shape.
        bind = {"initdata_key": "io.coco-ai.run-id", "value": "r"}
        other_shape = httpx.post(
            f"{url}/kbs/v0/provisioner/provision", json={"bind": bind}, headers=headers
        )
        assert other_shape.status_code == 401
        assert other_shape.json()["type"].endswith("/PluginInternalError")
    finally:
        server.terminate()
        stderr = server.communicate(timeout=20)[1]
    # Named in any order, reported sorted.
    assert (
        "Trustee main stand-in; extensions: multi-gpu-sampledevice, sample-initdata-check" in stderr
    )


def test_cli_serves_an_admin_config_and_mints_airflows_token(tmp_path):
    """The data owner's steps on v0.21.0: a key pair, the [admin] table naming it (relative to
    the config file), Airflow's token minted from it; the token writes a grant, nothing else."""
    import stat
    import time

    import httpx

    from coco_ai.kbs.admin_acl import admin_config_toml
    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.trustee_dev.server import free_port

    assert _cli("trustee", "keygen", "--out-dir", str(tmp_path)).returncode == 0
    (tmp_path / "kbs-admin.toml").write_text(admin_config_toml("0.21.0", "admin-public.pem"))
    token_file = tmp_path / "airflow.jwt"
    minted = _cli(
        "trustee", "airflow-token", "--owner-key", str(tmp_path / "admin-key.pem"),
        "--out", str(token_file), "--lifetime-days", "1",
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    token = token_file.read_text()
    assert token not in minted.stdout + minted.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    port = free_port()
    code = (
        "import argparse, sys\n"
        "from coco_ai.trustee_dev.cli import register\n"
        "p = argparse.ArgumentParser(prog='coco-ai'); s = p.add_subparsers(required=True)\n"
        "register(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, "trustee", "serve", "--port", str(port), "--insecure-http",
         "--state-dir", str(tmp_path / "state"), "--trustee-version", "0.21.0",
         "--admin-config", str(tmp_path / "kbs-admin.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail("the CLI stand-in did not start")
        airflow = {"Authorization": f"Bearer {token}"}
        grant = f"{url}/kbs/v0/resource/coco-ai-run/grant/run-1"
        assert httpx.post(grant, content=b"g", headers=airflow).status_code == 200
        refused = httpx.get(f"{url}/kbs/v0/resource-policy", headers=airflow)
        assert refused.status_code == 401
        assert "Role airflow not allowed for path /kbs/v0/resource-policy" in refused.text
        owner = admin_auth_for("0.21.0", (tmp_path / "admin-key.pem").read_bytes())
        ok = httpx.get(
            f"{url}/kbs/v0/resource-policy", headers={"Authorization": owner.authorization()}
        )
        assert ok.status_code == 200
    finally:
        server.terminate()
        server.communicate(timeout=20)


def test_cli_refuses_a_bad_admin_config(tmp_path):
    (tmp_path / "kbs-admin.toml").write_text('[admin]\ntype = "InsecureAllowAll"\n')
    done = _cli(
        "trustee", "serve", "--insecure-http", "--state-dir", str(tmp_path / "state"),
        "--admin-config", str(tmp_path / "kbs-admin.toml"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "never InsecureAllowAll" in done.stderr
