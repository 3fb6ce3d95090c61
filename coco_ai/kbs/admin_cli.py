"""The command-line options of the data owner's Trustee admin connection, for every `coco-ai`
command that writes to Trustee's admin API (federation credentials, RAG caller credentials)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kbs-url", required=True, help="Trustee KBS URL (https://…)")
    parser.add_argument("--kbs-ca", type=Path, help="PEM CA to pin for the KBS's TLS")
    parser.add_argument(
        "--admin-key", type=Path, required=True, help="Ed25519 admin private key (PEM)"
    )
    parser.add_argument(
        "--trustee-version", required=True, help="0.20.0, 0.21.0 or main (admin auth style)"
    )


def admin_client(args: argparse.Namespace):
    """A KbsAdminClient from the options :func:`add_admin_arguments` added."""
    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.kbs.client import KbsAdminClient

    auth = admin_auth_for(args.trustee_version, args.admin_key.read_bytes())
    ca = args.kbs_ca.read_bytes() if args.kbs_ca else None
    return KbsAdminClient(args.kbs_url, auth=auth, ca_cert=ca, trustee_version=args.trustee_version)
