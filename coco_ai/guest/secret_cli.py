"""``coco-ai secret``: the data owner's tools for CoCo sealed secrets (keygen, seal).

Flags mirror guest-components' ``secret`` CLI (``seal --signing-kid --signing-jwk-path vault
--resource-uri --provider``), and the output is the same string: a secret sealed here unseals in
upstream's CDH. There is no ``unseal``: unsealing happens only inside the TEE (the guest's CDH,
``coco-ai guest exec`` or ``GuestClient.unseal_secret``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    secret = subparsers.add_parser(
        "secret",
        help="CoCo sealed secrets: signing key and sealing",
        description="Create the data owner's sealed-secret signing key and seal vault secrets "
        "(sealed.<JWS>, compatible with guest-components' secret CLI and CDH).",
    )
    sub = secret.add_subparsers(dest="secret_command", required=True)

    keygen = sub.add_parser(
        "keygen",
        help="write a P-256 private JWK and print the public JWK to upload as the kid resource",
    )
    keygen.add_argument(
        "--kid", required=True, help="KBS URI the public JWK will be uploaded to (kbs:///r/t/t)"
    )
    keygen.add_argument("--out", type=Path, required=True, help="private JWK file to create")
    keygen.set_defaults(func=_keygen)

    seal = sub.add_parser("seal", help="print a sealed secret (sealed.<JWS>) on stdout")
    seal.add_argument(
        "--signing-kid", required=True, help="KBS URI of the public JWK that verifies it"
    )
    seal.add_argument(
        "--signing-jwk-path",
        "--signing-jwk",
        dest="signing_jwk",
        type=Path,
        required=True,
        help="private P-256 JWK (from keygen)",
    )
    kind = seal.add_subparsers(dest="secret_type", required=True)
    vault = kind.add_parser("vault", help="a pointer to a KBS resource holding the secret")
    vault.add_argument(
        "-r", "--resource-uri", required=True, help="KBS URI of the resource holding the secret"
    )
    vault.add_argument(
        "-p", "--provider", default="kbs", choices=["kbs"], help="secret provider (kbs only)"
    )
    vault.add_argument("--provider-settings", help="JSON object (default {})")
    vault.add_argument("-a", "--annotations", help="JSON object (default {})")
    seal.set_defaults(func=_seal)


def _keygen(args: argparse.Namespace) -> int:
    from coco_ai.guest.sealed import generate_signing_jwk, public_jwk
    from coco_ai.kbs.resource_path import parse_resource_uri

    try:
        parse_resource_uri(args.kid)
    except ValueError as exc:
        return _fail("keygen", f"--kid: {exc}")
    private = generate_signing_jwk(args.kid)
    try:
        # O_EXCL: never overwrite a signing key; 0600: it is the data owner's private key.
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return _fail("keygen", f"cannot create {args.out}: {exc}")
    with os.fdopen(fd, "w") as f:
        json.dump(private, f, indent=2)
        f.write("\n")
    print(json.dumps(public_jwk(private)))
    print(
        f"private JWK written to {args.out}; upload the public JWK above to {args.kid}",
        file=sys.stderr,
    )
    return 0


def _seal(args: argparse.Namespace) -> int:
    from coco_ai.guest.sealed import (
        SealedSecretError,
        VaultSecret,
        seal_vault_secret,
        signing_key_from_jwk,
    )

    try:
        settings = _json_object_arg(args.provider_settings, "--provider-settings")
        annotations = _json_object_arg(args.annotations, "--annotations")
        key = signing_key_from_jwk(args.signing_jwk.read_bytes(), str(args.signing_jwk))
        secret = VaultSecret(args.resource_uri, args.provider, settings, annotations)
        sealed = seal_vault_secret(secret, key, args.signing_kid)
    except (OSError, SealedSecretError) as exc:
        return _fail("seal", str(exc))
    print(f"the secret itself must be uploaded to {args.resource_uri} separately", file=sys.stderr)
    print(sealed)
    return 0


def _json_object_arg(text: str | None, flag: str) -> dict:
    from coco_ai.guest.sealed import SealedSecretError

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise SealedSecretError(f"{flag} is not JSON") from None
    if not isinstance(value, dict):
        raise SealedSecretError(f"{flag} must be a JSON object")
    return value


def _fail(command: str, message: str) -> int:
    print(f"coco-ai secret {command}: {message}", file=sys.stderr)
    return 2
