"""The service refuses to start, with a clear error and a non-zero exit, on every index it must
not serve: tampered, truncated, another run's, signed by a key no token attests, not the
promoted one, or checked against another trust anchor than its initdata pins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.crypto.manifest import MANIFEST_FILE, SIGNATURE_FILE
from coco_ai.workloads.tee import (
    EXIT_CONFIG,
    EXIT_DATASET,
    WorkloadError,
)
from tests.rag_serve.conftest import SERVICE_RUN, service_kwargs

pytestmark = pytest.mark.timeout(600)


def _copy(index_uri: str, dst: Path) -> Path:
    shutil.copytree(index_uri.removeprefix("file://"), dst)
    return dst


def _largest_object(root: Path) -> Path:
    return max((root / "objects").iterdir(), key=lambda p: p.stat().st_size)


def _tampered(root: Path) -> None:
    obj = _largest_object(root)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))


def _truncated(root: Path) -> None:
    obj = _largest_object(root)
    obj.write_bytes(obj.read_bytes()[:-100])


def _signed_by_another_key(root: Path) -> None:
    """The manifest re-signed, unchanged, by a key that no attestation token vouches for."""
    from jwcrypto import jwk, jws

    key = jwk.JWK.generate(kty="EC", crv="P-256")
    sig = jws.JWS((root / MANIFEST_FILE).read_bytes())
    protected = {"alg": "ES256", "typ": "coco-ai-manifest+jws", "kid": key.thumbprint()}
    sig.add_signature(key, alg="ES256", protected=protected)
    (root / SIGNATURE_FILE).write_text(sig.serialize(compact=True))


def _start(tmp_path, stack, embedder, index_uri, manifest_digest, **override):
    from coco_ai.devstack.rag_service import start_rag_service
    from coco_ai.devstack.stack import local_image_reference

    kwargs = service_kwargs(stack, index_uri, manifest_digest, embedder, **override)
    return start_rag_service(tmp_path / "service", image=local_image_reference(), **kwargs)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_tampered, "IntegrityError: index.faiss: ciphertext BLAKE3 differs from the manifest"),
        (_truncated, "IntegrityError: index.faiss: ciphertext is "),
        (_signed_by_another_key, "does not verify with the attested TEE key"),
    ],
    ids=["tampered", "truncated", "signed-by-non-attested-key"],
)
def test_damaged_index_refused(
    tmp_path, stack, embedder, index_uri, manifest_digest, damage, message
) -> None:
    copy = _copy(index_uri, tmp_path / "index")
    damage(copy)
    with pytest.raises(WorkloadError) as err:
        _start(tmp_path, stack, embedder, f"file://{copy}", manifest_digest)
    assert err.value.exit_code == EXIT_DATASET
    assert err.value.reason.startswith(f"index file://{copy} refused")
    assert message in err.value.reason


def test_another_runs_index_refused(tmp_path, stack, embedder, index_uri, manifest_digest) -> None:
    # the service of run-other's index, pointed at (and pinning) this index: the token in it
    # was issued to another run
    with pytest.raises(WorkloadError) as err:
        _start(tmp_path, stack, embedder, index_uri, manifest_digest, index_run_id="run-other")
    assert err.value.exit_code == EXIT_DATASET
    assert "token was issued to run 'run-rag-serve-index', expected run 'run-other'" in str(
        err.value
    )


def test_unpromoted_index_refused(tmp_path, stack, embedder, index_uri) -> None:
    pinned = "sha256:" + "ab" * 32
    with pytest.raises(WorkloadError) as err:
        _start(tmp_path, stack, embedder, index_uri, pinned)
    assert err.value.exit_code == EXIT_DATASET
    assert f"initdata pins the promoted {pinned}" in err.value.reason


def test_other_trust_anchor_refused(tmp_path, stack, embedder, index_uri, manifest_digest) -> None:
    from coco_ai.workloads.rag_serve.config import ServeConfig
    from coco_ai.workloads.rag_serve.service import ServiceStartup

    (tmp_path / "other.pem").write_bytes(stack.tls_ca_pem)  # not the anchor the initdata pins
    with running_guest(stack, index_uri, manifest_digest, embedder) as guest:
        config = serve_config(guest.url, index_uri, embedder, tmp_path / "other.pem")
        with pytest.raises(WorkloadError) as err:
            ServiceStartup(ServeConfig.from_dict(config)).start()
    assert err.value.exit_code == EXIT_CONFIG
    assert "is not the one this TEE's initdata pins" in err.value.reason


def serve_config(guest_url: str, index_uri: str, embedder: Path, anchor: Path) -> dict:
    return {
        "run_id": SERVICE_RUN,
        "index_uri": index_uri,
        "embedder_path": str(embedder),
        "trust_anchor_file": str(anchor),
        "guest_api_url": guest_url,
        "port": 0,
        "store_attempts": 1,
    }


def running_guest(stack, index_uri, manifest_digest, embedder):
    """The service's TEE (an emulator with the service's initdata), without the service."""
    from coco_ai.devstack.rag_service import start_emulator
    from coco_ai.devstack.stack import local_image_reference
    from coco_ai.workloads.rag_serve.identity import SERVICE_MODULE, service_claims

    kw = service_kwargs(stack, index_uri, manifest_digest, embedder)
    image = local_image_reference()
    claims = service_claims(
        run_id=kw["run_id"],
        image=image,
        index_run_id=kw["index_run_id"],
        index_manifest_digest=manifest_digest,
        trust_anchor_pem=stack.trust_anchor_pem,
        callers=kw["callers"],
    )
    return start_emulator(
        stack.trustee_url, stack.tls_ca_pem, claims, image=image, module=SERVICE_MODULE
    )


def test_cli_exits_non_zero_with_one_line(
    tmp_path, stack, embedder, index_uri, manifest_digest
) -> None:
    copy = _copy(index_uri, tmp_path / "index")
    _tampered(copy)
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(stack.trust_anchor_pem)
    with running_guest(stack, index_uri, manifest_digest, embedder) as guest:
        config = tmp_path / "serve.json"
        config.write_text(json.dumps(serve_config(guest.url, f"file://{copy}", embedder, anchor)))
        proc = subprocess.run(
            [sys.executable, "-m", "coco_ai.cli", "rag", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            env={"OMP_NUM_THREADS": "2", **os.environ},
            timeout=240,
        )
    assert proc.returncode == EXIT_DATASET, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rag-serve: error: index file://{copy}")
    assert "serving on" not in proc.stdout


def test_plain_http_only_on_loopback() -> None:
    from coco_ai.workloads.rag_serve.server import _listening_socket

    with pytest.raises(WorkloadError) as err:
        _listening_socket("0.0.0.0", 0, tls=False)
    assert err.value.exit_code == EXIT_CONFIG
    assert "without TLS: plain HTTP is for loopback only" in err.value.reason
    _listening_socket("127.0.0.1", 0, tls=False).close()


def test_unreadable_store_credentials_refused(
    tmp_path, monkeypatch, stack, embedder, index_uri, manifest_digest
) -> None:
    """The seam for sealed secrets: the store credentials the launcher unsealed into
    COCO_AI_RAG_SERVE_CREDENTIALS_DIR must be a JSON object, or the service does not start."""
    from coco_ai.workloads.rag_serve.config import CREDENTIALS_DIR_ENV, ServeConfig
    from coco_ai.workloads.rag_serve.service import STORAGE_OPTIONS_FILE, ServiceStartup

    (tmp_path / STORAGE_OPTIONS_FILE).write_text('["not", "an", "object"]')
    monkeypatch.setenv(CREDENTIALS_DIR_ENV, str(tmp_path))
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(stack.trust_anchor_pem)
    with running_guest(stack, index_uri, manifest_digest, embedder) as guest:
        config = ServeConfig.from_dict(serve_config(guest.url, index_uri, embedder, anchor))
        with pytest.raises(WorkloadError) as err:
            ServiceStartup(config).start()
    assert err.value.exit_code == EXIT_CONFIG
    assert err.value.reason.endswith(f"{STORAGE_OPTIONS_FILE} must be a JSON object")


def test_no_service_starts_once_the_index_key_is_withdrawn(
    tmp_path, stack, embedder, index_uri, manifest_digest
) -> None:
    from coco_ai.workloads.rag_serve.identity import publish_index_key, withdraw_index_key
    from coco_ai.workloads.tee import EXIT_KEY_RELEASE
    from tests.rag_serve.conftest import INDEX_RUN

    withdraw_index_key(stack.admin, INDEX_RUN)
    try:
        with pytest.raises(WorkloadError) as err:
            _start(tmp_path, stack, embedder, index_uri, manifest_digest)
        assert err.value.exit_code == EXIT_KEY_RELEASE
        assert f"index key of run {INDEX_RUN}" in err.value.reason
    finally:
        publish_index_key(stack.admin, INDEX_RUN, stack.run_key)
