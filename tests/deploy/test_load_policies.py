"""deploy/compose/load_policies.py against the Trustee stand-in: real HTTPS, real v0.20-style
Ed25519 admin authentication, the repository's policy files."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from distributed.harness import REPO_ROOT, init_env, load_deploy_script

from coco_ai import policies
from coco_ai.guest.image_policy import IMAGE_POLICY_PATH, image_policy_json
from coco_ai.trustee_dev.server import serve_in_thread
from tests.code_binding import APPROVED_IMAGE

load_policies = load_deploy_script("load_policies")
POLICY_DIR = REPO_ROOT / "coco_ai" / "policies"


@pytest.fixture
def trustee(tmp_path: Path):
    secrets = tmp_path / "secrets"
    init_env.generate_secret_files(secrets, only={"trustee-admin-private.pem"})
    public = (secrets / "trustee-admin-public.pem").read_bytes()
    with serve_in_thread(tmp_path / "trustee", public, policy_set="dev") as server:
        yield server, secrets


def _args(server, admin_key: Path, *extra: str) -> list[str]:
    return [
        f"--kbs-url={server.url}",
        f"--kbs-ca={server.tls_ca_path}",
        f"--admin-key={admin_key}",
        *extra,
    ]


@pytest.mark.timeout(120)
def test_policy_set_is_loaded_and_served_unchanged(trustee, tmp_path: Path, capsys) -> None:
    server, secrets = trustee
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"coco-test-measurement": ["ab12"]}))
    rc = load_policies.main(
        _args(
            server,
            secrets / "trustee-admin-private.pem",
            f"--policy-dir={POLICY_DIR}",
            "--policy-set=prod",
            f"--approved-image={APPROVED_IMAGE}",
            f"--reference-values={values}",
        )
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    rendered = policies.resource_policy_text("prod", [APPROVED_IMAGE])
    assert f"sha256:{hashlib.sha256(rendered.encode()).hexdigest()}" in out
    assert server.standin.state.get_policy(policies.RESOURCE_POLICY_ID) == rendered
    assert (
        _stored(server, IMAGE_POLICY_PATH.url_path())
        == image_policy_json([APPROVED_IMAGE]).encode()
    )
    assert f"approving {APPROVED_IMAGE}" in out
    assert "reference value coco-test-measurement registered" in out


@pytest.mark.timeout(120)
def test_without_an_approved_image_nothing_is_approved(trustee, capsys) -> None:
    server, secrets = trustee
    args = _args(server, secrets / "trustee-admin-private.pem", f"--policy-dir={POLICY_DIR}")
    assert load_policies.main([*args, "--policy-set=dev", "--approved-image="]) == 0
    assert server.standin.state.get_policy(policies.RESOURCE_POLICY_ID) == (
        policies.resource_policy_text("dev", [])
    )
    assert _stored(server, IMAGE_POLICY_PATH.url_path()) == image_policy_json([]).encode()
    assert "no image (nothing is released)" in capsys.readouterr().out
    tag = "--approved-image=registry.example/coco-ai/finetune:latest"
    assert load_policies.main([*args, "--policy-set=dev", tag]) == 2
    assert "pinned by digest" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_unknown_admin_key_is_refused(trustee, tmp_path: Path, capsys) -> None:
    server, _ = trustee
    other = tmp_path / "other"
    init_env.generate_secret_files(other, only={"trustee-admin-private.pem"})
    rc = load_policies.main(
        _args(
            server,
            other / "trustee-admin-private.pem",
            f"--policy-dir={POLICY_DIR}",
            "--policy-set=prod",
        )
    )
    assert rc == 1
    assert "KBS refused" in capsys.readouterr().err


def test_missing_policy_file_is_reported_before_any_upload(trustee, tmp_path: Path, capsys) -> None:
    server, secrets = trustee
    rc = load_policies.main(
        _args(
            server,
            secrets / "trustee-admin-private.pem",
            f"--policy-dir={tmp_path}",
            "--policy-set=prod-tdx",
        )
    )
    assert rc == 2
    assert "resource_prod.rego is missing" in capsys.readouterr().err


def _stored(server, path: str) -> bytes | None:
    record = server.standin.state.get_resource(path)
    return None if record is None else record.data


@pytest.mark.timeout(120)
def test_run_key_root_is_stored_after_the_policies_and_never_printed(
    trustee, tmp_path: Path, capsys
) -> None:
    server, secrets = trustee
    init_env.generate_secret_files(secrets, only={"run-key-root.bin"})
    root_file = secrets / "run-key-root.bin"
    root = root_file.read_bytes()
    args = _args(
        server,
        secrets / "trustee-admin-private.pem",
        f"--policy-dir={POLICY_DIR}",
        "--policy-set=prod",
        f"--run-key-root={root_file}",
    )
    assert load_policies.main(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[-1] == "load-policies: run-key root stored at kbs:///coco-ai/run-key-root/v1"
    # After every policy upload (each printed with its digest once accepted).
    assert len(lines) >= 2 and all("sha256:" in line for line in lines[:-1])
    assert _stored(server, "coco-ai/run-key-root/v1") == root
    # Nothing derived from the root is printed: not its bytes, not its digest.
    for shown in (root.hex(), hashlib.sha256(root).hexdigest(), base64.b64encode(root).decode()):
        assert shown not in out + err

    # Idempotent: the same bytes again (a restarted trustee-init) succeed and change nothing.
    assert load_policies.main(args) == 0
    assert _stored(server, "coco-ai/run-key-root/v1") == root


@pytest.mark.timeout(120)
def test_run_key_root_path_can_name_another_version(trustee, capsys) -> None:
    server, secrets = trustee
    init_env.generate_secret_files(secrets, only={"run-key-root.bin"})
    root_file = secrets / "run-key-root.bin"
    rc = load_policies.main(
        _args(
            server,
            secrets / "trustee-admin-private.pem",
            f"--policy-dir={POLICY_DIR}",
            "--policy-set=prod",
            f"--run-key-root={root_file}",
            "--run-key-root-path=coco-ai/run-key-root/v2",
        )
    )
    assert rc == 0
    assert "stored at kbs:///coco-ai/run-key-root/v2" in capsys.readouterr().out
    assert _stored(server, "coco-ai/run-key-root/v2") == root_file.read_bytes()
    assert _stored(server, "coco-ai/run-key-root/v1") is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_wrong_size_run_key_root_is_refused_before_any_upload(
    trustee, tmp_path: Path, capsys, size: int
) -> None:
    server, secrets = trustee
    bad = tmp_path / "root.bin"
    bad.write_bytes(b"\x01" * size)
    rc = load_policies.main(
        _args(
            server,
            secrets / "trustee-admin-private.pem",
            f"--policy-dir={POLICY_DIR}",
            "--policy-set=prod",
            f"--run-key-root={bad}",
        )
    )
    out, err = capsys.readouterr()
    assert rc == 2
    assert f"is {size} bytes, not 32; refusing to upload anything" in err
    assert out == "", "no policy was uploaded either (each upload is printed)"
    assert _stored(server, "coco-ai/run-key-root/v1") is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--run-key-root=/nonexistent/run-key-root.bin"], "cannot read run-key root"),
        (["--run-key-root-path=coco-ai/../v1"], "--run-key-root-path"),
    ],
)
def test_unreadable_root_or_bad_path_is_refused_before_any_upload(
    trustee, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    server, secrets = trustee
    init_env.generate_secret_files(secrets, only={"run-key-root.bin"})
    if not extra[0].startswith("--run-key-root="):
        extra = [f"--run-key-root={secrets / 'run-key-root.bin'}", *extra]
    rc = load_policies.main(
        _args(
            server,
            secrets / "trustee-admin-private.pem",
            f"--policy-dir={POLICY_DIR}",
            "--policy-set=prod",
            *extra,
        )
    )
    out, err = capsys.readouterr()
    assert rc == 2
    assert message in err and out == ""
