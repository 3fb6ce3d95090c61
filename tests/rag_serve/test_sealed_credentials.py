"""The service's own credentials arrive as a CoCo sealed secret: the pod's launcher
(`coco-ai guest exec`, the Kata agent's step) unseals the mounted file through the guest's
attested KBS client, and only then does `coco-ai rag serve` start — reading the index from an
S3 store it can reach with nothing but those credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coco_ai.guest.sealed import (
    VaultSecret,
    generate_signing_jwk,
    public_jwk,
    seal_vault_secret,
    signing_key_from_jwk,
)
from coco_ai.workloads.rag_serve.config import CREDENTIALS_DIR_ENV
from coco_ai.workloads.rag_serve.service import STORAGE_OPTIONS_FILE
from tests.rag_serve.test_startup import running_guest, serve_config

pytestmark = pytest.mark.timeout(300)

KID = "kbs:///coco-ai/sealed-signing/owner"
OPTIONS_URI = "kbs:///coco-ai/rag-store/options"
BUCKET = "rag-sealed"


def _index_in_s3(s3_admin, index_uri: str) -> str:
    s3_admin.create_bucket(Bucket=BUCKET)
    root = Path(index_uri.removeprefix("file://"))
    for path in root.rglob("*"):
        if path.is_file():
            s3_admin.put_object(
                Bucket=BUCKET, Key=f"index/{path.relative_to(root)}", Body=path.read_bytes()
            )
    return f"s3://{BUCKET}/index"


def _serve(guest_url: str, config: Path, sealed_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "coco_ai.cli", "guest", "exec", "--guest-url", guest_url]
    command += ["--sealed-dir", str(sealed_dir)]
    command += ["--expect-file", f"{sealed_dir / STORAGE_OPTIONS_FILE}={OPTIONS_URI}", "--"]
    command += [sys.executable, "-m", "coco_ai.cli", "rag", "serve", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", CREDENTIALS_DIR_ENV: str(sealed_dir)}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(name, None)  # the sealed secret is the only way to the store
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _first_line_or_exit(proc: subprocess.Popen, timeout: float = 180) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if "serving on" in line:
            return line
        if not line and proc.poll() is not None:
            return None
    raise AssertionError("the service neither served nor exited")


def test_service_starts_only_with_its_unsealed_store_credentials(
    tmp_path, stack, embedder, index_uri, manifest_digest, moto_endpoint, s3_admin
):
    s3_uri = _index_in_s3(s3_admin, index_uri)
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    # The data owner: a signing key (its public JWK is the kid resource), the credentials as a
    # KBS resource, and the sealed string that points at them — public, safe in a K8s Secret.
    jwk = generate_signing_jwk(KID)
    stack.admin.set_resource("coco-ai/sealed-signing/owner", json.dumps(public_jwk(jwk)).encode())
    stack.admin.set_resource("coco-ai/rag-store/options", json.dumps(options).encode())
    key = signing_key_from_jwk(json.dumps(jwk).encode(), "test key")
    sealed = seal_vault_secret(VaultSecret(name=OPTIONS_URI), key, KID)
    assert "testing" not in sealed and moto_endpoint not in sealed

    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(stack.trust_anchor_pem)
    config = tmp_path / "serve.json"
    with running_guest(stack, index_uri, manifest_digest, embedder) as guest:
        config.write_text(json.dumps(serve_config(guest.url, s3_uri, embedder, anchor)))

        # sealed for another resource than the one the pod pins: the service never starts
        other = tmp_path / "other"
        other.mkdir()
        (other / STORAGE_OPTIONS_FILE).write_text(
            seal_vault_secret(VaultSecret(name="kbs:///coco-ai/rag-store/other"), key, KID)
        )
        proc = _serve(guest.url, config, other)
        assert _first_line_or_exit(proc) is None
        assert proc.wait(30) == 2
        assert b"workload not started" in proc.stderr.read()
        assert not (other / f"{STORAGE_OPTIONS_FILE}.unsealed").exists()

        sealed_dir = tmp_path / "sealed"
        sealed_dir.mkdir()
        (sealed_dir / STORAGE_OPTIONS_FILE).write_text(sealed)
        proc = _serve(guest.url, config, sealed_dir)
        try:
            line = _first_line_or_exit(proc)
            assert line is not None, proc.stderr.read().decode()
        finally:
            proc.terminate()
            proc.wait(30)
    # the plaintext lives only where the agent step put it (in the pod's tmpfs volume), 0600
    unsealed = sealed_dir / f"{STORAGE_OPTIONS_FILE}.unsealed"
    assert json.loads(unsealed.read_text()) == options
    assert unsealed.stat().st_mode & 0o077 == 0
