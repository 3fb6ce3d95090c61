#!/usr/bin/env python3
"""One-shot set-up run by the compose `airflow-init` service after the DB migration.

- creates the object-store buckets the pipeline writes to (idempotent);
- registers the `trustee_default` Airflow connection from the mounted key files, so Airflow's
  admin key — persona `airflow`, which the KBS allows to write and delete run grants only
  (kbs-config.toml, coco_ai.kbs.admin_acl) — is stored Fernet-encrypted in the metadata DB
  instead of sitting in any environment. The data owner's admin key is never mounted here. It
  names the pinned Trustee release (`trustee_version`). It holds no trust anchor: the EAR token CA
  and signer reach Airflow only inside the data owner's signed policy (init_env.py writes the
  first one; docker-compose.yaml mounts it read-only).

Reads only files under /run/secrets and variables set by docker-compose.yaml; prints no secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SECRETS = Path(os.environ.get("COCO_AI_SECRETS_DIR", "/run/secrets"))
BUCKETS = ("coco-staging", "coco-checkpoints")
# The Trustee release docker-compose.yaml runs (kbs, as, rvps images): no version probe needed.
TRUSTEE_VERSION = "0.20.0"


def create_buckets() -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for bucket in BUCKETS:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            s3.create_bucket(Bucket=bucket)
            print(f"init-stack: created bucket {bucket}")


def register_trustee_connection() -> None:
    extra = {
        "kbs_url": os.environ["COCO_AI_KBS_URL"],
        "ca_cert": (SECRETS / "kbs_ca").read_text(),
        "admin_auth": "self-signed",
        "admin_secret": (SECRETS / "trustee_airflow_private_key").read_text(),
        "credential": "airflow",
        "trustee_version": TRUSTEE_VERSION,
    }
    payload = {"trustee_default": {"conn_type": "trustee", "extra": json.dumps(extra)}}
    # A private temporary file, not a command-line argument (visible in `ps`).
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        os.chmod(f.name, 0o600)
        json.dump(payload, f)
    try:
        subprocess.run(
            ["airflow", "connections", "import", "--overwrite", f.name],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        os.unlink(f.name)
    print("init-stack: registered connection trustee_default")


def main() -> int:
    create_buckets()
    register_trustee_connection()
    return 0


if __name__ == "__main__":
    sys.exit(main())
