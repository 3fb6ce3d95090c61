"""`coco-ai trustee …`: run the development Trustee stand-in, make admin key pairs, and mint
Airflow's admin token for Trustee v0.21.0+ (a data-owner action, for the stand-in and real
Trustee alike)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coco_ai.kbs.versions import DEFAULT_TRUSTEE_VERSION, TRUSTEE_VERSIONS
from coco_ai.trustee_dev.extensions import EXTENSIONS as EXTENSION_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trustee",
        help="development stand-in of Trustee (KBS + attestation service)",
        description="Run the development Trustee stand-in (KBS protocol 0.4.0) or make its keys.",
    )
    sub = parser.add_subparsers(dest="trustee_command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve the Trustee stand-in with uvicorn",
        description="Serve the Trustee stand-in as one Trustee release behaves. Plain HTTP only "
        "on loopback. The EAR trust anchor for relying parties is <state-dir>/ca.pem and the "
        "signer to pin <state-dir>/token-signer/signer-cert.pem; TLS has its own CA.",
    )
    serve.add_argument(
        "--trustee-version",
        default=DEFAULT_TRUSTEE_VERSION,
        choices=TRUSTEE_VERSIONS,
        help=f"Trustee release to reproduce (default {DEFAULT_TRUSTEE_VERSION}, the one "
        "docker-compose.yaml pins): endpoints, admin auth, error shapes, token encoding",
    )
    serve.add_argument(
        "--extension",
        action="append",
        default=[],
        choices=sorted(EXTENSION_NAMES),
        help="opt into a behaviour no Trustee has (repeatable): "
        + "; ".join(f"{name}: {EXTENSION_NAMES[name]}" for name in sorted(EXTENSION_NAMES)),
    )
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    serve.add_argument("--state-dir", required=True, type=Path, help="state directory")
    admin = serve.add_mutually_exclusive_group(required=True)
    admin.add_argument(
        "--admin-public-key",
        type=Path,
        help="one Ed25519 admin public key (PEM) with every right (0.20.0: one persona, no "
        "roles; 0.21.0+: role admin)",
    )
    admin.add_argument(
        "--admin-config",
        type=Path,
        help="a kbs-config.toml (or its [admin] table alone) in the emulated version's syntax: "
        "0.20.0 type=Simple personas and roles; 0.21.0+ AuthenticatedAuthorization with "
        "bearer_jwt identity_providers and regex_acl acls. Relative key paths are read from "
        "the file's directory",
    )
    serve.add_argument("--tls-cert", help="TLS server certificate chain (PEM)")
    serve.add_argument("--tls-key", help="TLS server private key (PEM)")
    serve.add_argument(
        "--insecure-http", action="store_true", help="plain HTTP (loopback addresses only)"
    )
    serve.add_argument(
        "--policy-set",
        default="dev",
        choices=("dev", "prod"),
        help="policies installed when the state dir has none: dev (accepts sample evidence), "
        "prod (refuses it)",
    )
    serve.add_argument(
        "--approved-image",
        action="append",
        default=[],
        metavar="HOST/PATH@sha256:HEX",
        help="an image the installed resource policy approves (repeatable; none: it releases "
        "nothing until the data owner uploads one that approves an image)",
    )
    serve.set_defaults(func=_serve)

    keygen = sub.add_parser(
        "keygen",
        help="create an Ed25519 admin key pair (and optionally a loopback TLS cert)",
        description="Write admin-key.pem (0600) and admin-public.pem for --admin-public-key.",
    )
    keygen.add_argument("--out-dir", required=True, type=Path, help="where to write the files")
    keygen.add_argument(
        "--tls-for-state-dir",
        type=Path,
        help="also write tls.pem/tls-key.pem for 127.0.0.1, issued by this state dir's TLS CA "
        "(<state-dir>/tls-ca/ca.pem; never the token CA)",
    )
    keygen.set_defaults(func=_keygen)

    token = sub.add_parser(
        "airflow-token",
        help="mint Airflow's admin token for Trustee v0.21.0+ (data owner)",
        description="Trustee v0.21.0+ takes the admin role from the token, so Airflow holds no "
        "key: the data owner signs it a token for role `airflow` (run grants only, "
        "coco_ai.kbs.admin_acl) with their own admin key, and re-mints it before it expires. "
        "The token is written to --out (0600), never printed.",
    )
    token.add_argument(
        "--owner-key", required=True, type=Path, help="the data owner's Ed25519 admin key (PEM)"
    )
    token.add_argument("--out", required=True, type=Path, help="where to write the token")
    token.add_argument(
        "--lifetime-days",
        type=float,
        default=30.0,
        help="validity; a stolen token works this long (default 30)",
    )
    token.set_defaults(func=_airflow_token)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from coco_ai.trustee_dev.admin import AdminConfig
    from coco_ai.trustee_dev.app import TrusteeStandIn
    from coco_ai.trustee_dev.server import ServeConfigError, uvicorn_config

    try:
        if args.admin_config is not None:
            admin = AdminConfig.from_toml(
                args.admin_config.read_text(),
                args.trustee_version,
                base_dir=args.admin_config.resolve().parent,
            )
        else:
            admin = args.admin_public_key.read_bytes()
        standin = TrusteeStandIn(
            args.state_dir,
            admin,
            policy_set=args.policy_set,
            approved_images=args.approved_image,
            trustee_version=args.trustee_version,
            extensions=args.extension,
        )
        config = uvicorn_config(
            standin,
            args.host,
            args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            insecure_http=args.insecure_http,
            log_level="info",
        )
    except (ServeConfigError, ValueError, OSError) as exc:
        print(f"coco-ai trustee serve: {exc}", file=sys.stderr)
        return 2
    print(
        f"Trustee {standin.trustee_version} stand-in; extensions: "
        f"{', '.join(sorted(standin.extensions)) or 'none'}\n"
        f"EAR trust anchor: {standin.token_anchor_path}\n"
        f"EAR signer (pin): {standin.token_signer_path}",
        file=sys.stderr,
    )
    uvicorn.Server(config).run()
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from coco_ai.trustee_dev.state import write_atomic

    key = ed25519.Ed25519PrivateKey.generate()
    private = args.out_dir / "admin-key.pem"
    public = args.out_dir / "admin-public.pem"
    write_atomic(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_atomic(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        mode=0o644,
    )
    print(f"admin private key: {private}\nadmin public key: {public}")
    if args.tls_for_state_dir:
        from coco_ai.trustee_dev.server import write_server_certificate
        from coco_ai.trustee_dev.state import StateDir
        from coco_ai.trustee_dev.tokens import TokenBroker

        TokenBroker(StateDir(args.tls_for_state_dir))  # creates the token CA on first use
        cert, tls_key = args.out_dir / "tls.pem", args.out_dir / "tls-key.pem"
        tls_ca = write_server_certificate(
            args.tls_for_state_dir, cert, tls_key, ("127.0.0.1", "localhost")
        )
        print(f"TLS certificate: {cert} (pin {tls_ca})")
    return 0


def _airflow_token(args: argparse.Namespace) -> int:
    import datetime as dt

    from coco_ai.kbs.admin_acl import mint_airflow_token
    from coco_ai.trustee_dev.state import write_atomic

    lifetime = int(args.lifetime_days * 86400)
    if lifetime <= 0:
        print("coco-ai trustee airflow-token: --lifetime-days must be positive", file=sys.stderr)
        return 2
    try:
        token = mint_airflow_token(args.owner_key.read_bytes(), lifetime=lifetime)
    except (OSError, ValueError) as exc:
        print(f"coco-ai trustee airflow-token: {exc}", file=sys.stderr)
        return 2
    write_atomic(args.out, token.encode())
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
    print(f"Airflow's admin token (role airflow): {args.out}, expires {expires:%Y-%m-%d %H:%M} UTC")
    return 0
