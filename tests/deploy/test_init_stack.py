"""deploy/compose/init_stack.py registers `trustee_default` through the real Airflow CLI, from
the key files mounted as compose secrets, without putting them in any argument list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed.harness import REPO_ROOT, init_env, load_deploy_script

init_stack = load_deploy_script("init_stack")

# Compose mounts each secret under /run/secrets/<secret name>; reproduce that layout.
MOUNTED = {
    "kbs_ca": "kbs-ca.pem",
    "trustee_airflow_private_key": "trustee-airflow-private.pem",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trustee_connection_is_registered_from_mounted_secrets(tmp_path: Path) -> None:
    generated = tmp_path / "generated"
    init_env.generate_secret_files(generated)
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    for secret, file in MOUNTED.items():
        (run_secrets / secret).write_bytes((generated / file).read_bytes())

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": init_env.generate_env_values()["FERNET_KEY"],
            "COCO_AI_SECRETS_DIR": str(run_secrets),
            "COCO_AI_KBS_URL": "https://kbs:8080",
        }
    )
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    script = Path(init_stack.__file__)
    # Only the connection part: the buckets need MinIO, which the compose test covers statically.
    register = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u, sys; "
            f"s = u.spec_from_file_location('init_stack', {str(script)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.register_trustee_connection()",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert register.returncode == 0, register.stderr
    private_pem = (run_secrets / "trustee_airflow_private_key").read_text()
    assert private_pem not in register.stdout + register.stderr

    shown = subprocess.run(
        ["airflow", "connections", "get", "trustee_default", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (conn,) = json.loads(shown.stdout)
    assert conn["conn_type"] == "trustee"
    extra = conn["extra_dejson"]
    extra = json.loads(extra) if isinstance(extra, str) else extra
    assert extra["kbs_url"] == "https://kbs:8080"
    assert extra["admin_auth"] == "self-signed"
    # Airflow's own persona key (run grants only), never the data owner's.
    assert extra["admin_secret"] == private_pem
    assert extra["credential"] == "airflow"
    assert extra["admin_secret"] != (generated / "trustee-admin-private.pem").read_text()
    assert extra["ca_cert"] == (run_secrets / "kbs_ca").read_text()
    # The release the compose stack pins.
    assert extra["trustee_version"] == "0.20.0"
    # No trust in the connection: the EAR anchor and signer come from the owner policy, and the
    # hook refuses a connection that still carries them.
    assert not {"trust_anchor", "token_signer"} & set(extra)
    from operators.hooks.trustee import TrusteeSettings

    assert TrusteeSettings.from_extra(extra).credential == "airflow"
    # Stored Fernet-encrypted: the key is not in the metadata DB in clear.
    db = (tmp_path / "airflow" / "airflow.db").read_bytes()
    assert b"BEGIN PRIVATE KEY" not in db


def test_trustee_version_is_the_release_the_compose_stack_runs() -> None:
    compose = (REPO_ROOT / "docker-compose.yaml").read_text()
    for image in ("key-broker-service", "attestation-service", "reference-value-provider-service"):
        assert f"{image}:v{init_stack.TRUSTEE_VERSION}@" in compose
