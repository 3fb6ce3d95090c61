"""The service's own credentials arrive as a CoCo sealed secret: the pod's launcher
(`coco-ai guest exec`, the Kata agent's step) unseals the mounted file through the guest's
attested KBS client, and only then does `coco-ai rag serve` start — reading the index from an
S3 store it can reach with nothing but those credentials."""

from __future__ import annotations

import io
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
BUCKET_POD = "rag-sealed-pod"
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
    env = {"OMP_NUM_THREADS": "2", **os.environ, CREDENTIALS_DIR_ENV: str(sealed_dir)}
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


def _pod_guest(stack, index_uri, manifest_digest, embedder, store_options_uri):
    """The service's TEE as a Kata pod has it: the initdata pins the store credentials' resource."""
    from coco_ai.devstack.rag_service import start_emulator
    from coco_ai.devstack.stack import local_image_reference
    from coco_ai.workloads.rag_serve.identity import SERVICE_MODULE, service_claims
    from tests.rag_serve.conftest import service_kwargs

    kw = service_kwargs(stack, index_uri, manifest_digest, embedder)
    image = local_image_reference()
    claims = service_claims(
        run_id=kw["run_id"],
        image=image,
        index_run_id=kw["index_run_id"],
        index_manifest_digest=manifest_digest,
        trust_anchor_pem=stack.trust_anchor_pem,
        callers=kw["callers"],
        store_options_uri=store_options_uri,
    )
    return start_emulator(
        stack.trustee_url, stack.tls_ca_pem, claims, image=image, module=SERVICE_MODULE
    )


def test_pod_config_carries_the_sealed_credentials_and_the_cdh_unseals_them(
    tmp_path, stack, embedder, index_uri, manifest_digest, moto_endpoint, s3_admin, monkeypatch
):
    """Kubernetes mode: the agent policy admits no volume and no env, so the sealed string and
    the trust anchor travel in the config (the container's one argument; public), the initdata
    pins the resource the sealed secret may name, and start-up unseals it through the CDH."""
    from coco_ai.workloads.rag_serve.config import ServeConfig
    from coco_ai.workloads.rag_serve.service import ServiceStartup
    from coco_ai.workloads.tee import EXIT_ATTESTATION, EXIT_KEY_RELEASE, WorkloadError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the sealed secret is the only way in
    monkeypatch.delenv(CREDENTIALS_DIR_ENV, raising=False)
    s3_admin.create_bucket(Bucket=BUCKET_POD)
    root = Path(index_uri.removeprefix("file://"))
    for path in root.rglob("*"):
        if path.is_file():
            s3_admin.put_object(
                Bucket=BUCKET_POD, Key=f"index/{path.relative_to(root)}", Body=path.read_bytes()
            )
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
    }
    jwk = generate_signing_jwk(KID)
    stack.admin.set_resource("coco-ai/sealed-signing/owner", json.dumps(public_jwk(jwk)).encode())
    stack.admin.set_resource("coco-ai/rag-store/pod-options", json.dumps(options).encode())
    key = signing_key_from_jwk(json.dumps(jwk).encode(), "test key")
    pod_uri = "kbs:///coco-ai/rag-store/pod-options"
    sealed = seal_vault_secret(VaultSecret(name=pod_uri), key, KID)

    def config(guest_url: str, sealed_options: str) -> ServeConfig:
        return ServeConfig.from_dict(
            {
                "run_id": "run-rag-serve-1",
                "index_uri": f"s3://{BUCKET_POD}/index",
                "embedder_path": str(embedder),
                "trust_anchor_pem": stack.trust_anchor_pem.decode(),
                "guest_api_url": guest_url,
                "port": 0,
                "store_attempts": 1,
                "sealed_storage_options": sealed_options,
            }
        )

    def start(guest_url: str, sealed_options: str):
        out = io.StringIO()
        loaded = ServiceStartup(config(guest_url, sealed_options), out=out).start()
        return loaded, out.getvalue()

    with _pod_guest(stack, index_uri, manifest_digest, embedder, pod_uri) as guest:
        loaded, log = start(guest.url, sealed)
        try:
            assert loaded.manifest_digest == manifest_digest and loaded.retriever.size > 0
        finally:
            loaded.close()
        assert f"store credentials unsealed from {pod_uri}" in log
        assert "testing" not in log and moto_endpoint not in log

        other = seal_vault_secret(VaultSecret(name="kbs:///coco-ai/rag-store/options"), key, KID)
        head, payload, signature = sealed.removeprefix("sealed.").split(".")
        tampered = f"sealed.{head}.{payload}.{signature[:-4]}AAAA"
        unknown_kid = seal_vault_secret(
            VaultSecret(name=pod_uri), key, "kbs:///coco-ai/sealed-signing/nobody"
        )
        for bad, message in (
            (other, "not the expected resource kbs:///coco-ai/rag-store/pod-options"),
            (tampered, "sealed_storage_options:"),
            (unknown_kid, "sealed_storage_options:"),
        ):
            with pytest.raises(WorkloadError) as err:
                start(guest.url, bad)
            assert err.value.exit_code == EXIT_KEY_RELEASE
            assert message in err.value.reason
            assert "testing" not in err.value.reason

    # a TEE whose initdata pins no store credentials: the sealed config is refused
    with (
        _pod_guest(stack, index_uri, manifest_digest, embedder, None) as guest,
        pytest.raises(WorkloadError) as err,
    ):
        start(guest.url, sealed)
    assert err.value.exit_code == EXIT_ATTESTATION
    assert "pins no io.coco-ai.rag-store-options" in err.value.reason
