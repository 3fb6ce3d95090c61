"""deploy/compose/load_policies.py against the Trustee stand-in: real HTTPS, real v0.20-style
Ed25519 admin authentication, the repository's policy files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed.harness import REPO_ROOT, init_env, load_deploy_script

from coco_ai import policies
from coco_ai.trustee_dev.server import serve_in_thread

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
            f"--reference-values={values}",
        )
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"sha256:{policies.digest('resource_prod')}" in out
    assert "reference value coco-test-measurement registered" in out


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
