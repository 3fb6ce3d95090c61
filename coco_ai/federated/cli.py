"""`coco-ai federation`: the data owner's provisioning of a federation's credentials in Trustee.

Run by the data owner beside Trustee (never by Airflow): `provision` creates the federation CA
and each party's mTLS credentials and uploads them through Trustee's admin API as KBS
resources that the resource policy releases only to the attested party named in them; it
prints public facts only (URIs, fingerprints) and writes the CA certificate, which peers and
verifiers may pin. `revoke` deletes the credentials when the federation ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coco_ai.kbs.admin_cli import add_admin_arguments, admin_client


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "federation",
        help="provision or revoke a federation's Trustee-held mTLS credentials",
        description="The data owner's federation credentials in Trustee (admin API).",
    )
    sub = parser.add_subparsers(dest="federation_command", required=True)
    for name, helptext, func in (
        ("provision", "create the federation CA and upload each party's credentials", _provision),
        ("revoke", "delete each party's credentials from Trustee", _revoke),
    ):
        cmd = sub.add_parser(name, help=helptext, description=helptext + ".")
        add_admin_arguments(cmd)
        cmd.add_argument(
            "--federation",
            required=True,
            help="the federation id (the data owner's; each pipeline run has its own run id)",
        )
        cmd.add_argument("--aggregator", required=True, help="the aggregator's participant id")
        cmd.add_argument(
            "--participant", action="append", required=True, help="a participant id (repeatable)"
        )
        cmd.set_defaults(func=func)
    provision = sub.choices["provision"]
    provision.add_argument(
        "--aggregator-host",
        action="append",
        default=None,
        help="a host name or IP the participants dial (repeatable; default localhost, 127.0.0.1)",
    )
    provision.add_argument(
        "--ca-out", type=Path, required=True, help="where to write the federation CA (PEM)"
    )


def _provision(args: argparse.Namespace) -> int:
    from coco_ai.federated.credentials import CredentialError, issue_federation, provision
    from coco_ai.kbs.errors import KbsError

    try:
        federation = issue_federation(
            args.federation,
            args.aggregator,
            args.participant,
            aggregator_hosts=args.aggregator_host or ("localhost", "127.0.0.1"),
        )
        with admin_client(args) as admin:
            provision(admin, federation)
    except (CredentialError, ValueError, KbsError, OSError) as exc:
        print(f"coco-ai federation provision: {exc}", file=sys.stderr)
        return 2
    args.ca_out.write_bytes(federation.ca_pem)
    print(json.dumps(federation.summary(), indent=2))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from coco_ai.federated.credentials import revoke
    from coco_ai.federated.identity import AGGREGATOR, PARTICIPANT, FederationIdentity
    from coco_ai.kbs.errors import KbsError

    try:
        identities = [FederationIdentity(args.federation, AGGREGATOR, args.aggregator)] + [
            FederationIdentity(args.federation, PARTICIPANT, p) for p in args.participant
        ]
        with admin_client(args) as admin:
            unconfirmed = revoke(admin, identities)
    except (ValueError, KbsError, OSError) as exc:
        print(f"coco-ai federation revoke: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"revoked": len(identities), "unconfirmed": unconfirmed}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coco-ai")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
