"""`coco-ai verify` (anyone: re-check a promotion offline) and `coco-ai owner-policy` (the data
owner: keygen, sign, show the owner policy).

`coco-ai verify <checkpoint URI | models:/NAME@ALIAS> --owner-key owner.pub` needs only the data
owner's public key and read access to the store (and the registry, when given); see
coco_ai.promotion.audit for what it checks.

Exit codes (as `coco-ai checkpoint`, docs/formats/promotion.md):
    0  verified / done
    1  unexpected error (I/O, store unreachable)
    2  usage error (bad arguments, unreadable or malformed input file, existing output file)
    3  integrity failure (stored bytes, record or registry tags differ from what was proven)
    4  attestation, signature or policy failure (owner policy, evidence chain, model
       signature, champion rule, serving alias moved back)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_ATTESTATION = 4


class _UsageError(Exception):
    pass


def register(subparsers: Any) -> None:
    ver = subparsers.add_parser(
        "verify",
        help="re-check a promoted model offline with the data owner's public key",
        description="Re-check a promotion from its record (<checkpoint>.promotion.json): owner "
        "policy, attestation chain, manifest, ciphertext, training config, model signature, "
        "champion rule and, with --registry, the registered version and its serving alias.",
    )
    ver.add_argument("target", help="checkpoint URI or registry entry models:/NAME@ALIAS")
    ver.add_argument("--owner-key", required=True, help="the data owner's P-256 public key (PEM)")
    ver.add_argument(
        "--policy",
        default=None,
        help="a newer owner policy JWS to apply (same policy id, version >= the record's)",
    )
    ver.add_argument("--registry", default=None, help="MLflow registry URI to check as well")
    ver.add_argument("--model", default=None, help="registered model (default: the policy's)")
    ver.add_argument("--alias", default="serving", help="serving alias (default: serving)")
    ver.add_argument("--endpoint-url", default=None, help="S3 endpoint (credentials from env)")
    ver.add_argument("--json", action="store_true", help="print every check as JSON")
    ver.set_defaults(func=_verify)

    pol = subparsers.add_parser(
        "owner-policy",
        help="the data owner's signed policy: keygen, sign, show",
        description="The data owner's policy (docs/formats/owner-policy.md): make a P-256 key, "
        "sign a policy document (JSON) into a JWS, or verify and show a signed policy.",
    )
    sub = pol.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    keygen = sub.add_parser("keygen", help="write a new P-256 key pair (private key 0600)")
    keygen.add_argument("--private", required=True, help="private key file to create")
    keygen.add_argument("--public", required=True, help="public key file to create")
    keygen.set_defaults(func=_keygen)
    sign = sub.add_parser("sign", help="validate a policy document and sign it")
    sign.add_argument("document", help="the policy as JSON")
    sign.add_argument("--key", required=True, help="the owner's private key (PEM)")
    sign.add_argument("--out", required=True, help="JWS file to create")
    sign.set_defaults(func=_sign)
    show = sub.add_parser("show", help="verify a signed policy and print it")
    show.add_argument("jws", help="the signed policy (compact JWS)")
    show.add_argument("--owner-key", required=True, help="the owner's public key (PEM)")
    show.set_defaults(func=_show)


def _run(body) -> int:
    from coco_ai.owner_policy import OwnerPolicyError
    from coco_ai.promotion.errors import RegistryError

    try:
        return body()
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OwnerPolicyError as exc:
        print(f"owner policy failure: {exc}", file=sys.stderr)
        return EXIT_ATTESTATION
    except (OSError, RegistryError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


# ---- coco-ai verify ----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    def body() -> int:
        from coco_ai.promotion.audit import audit_promotion
        from coco_ai.promotion.errors import RegistryError
        from coco_ai.promotion.registry import resolve_entry

        owner_key = _read(args.owner_key, "owner key")
        policy = (
            _read(args.policy, "owner policy").decode("ascii", "replace") if args.policy else None
        )
        model = args.model
        if args.target.startswith("models:/"):
            if not args.registry:
                raise _UsageError(f"{args.target} needs --registry")
            try:
                checkpoint_uri, entry = resolve_entry(args.target, registry_uri=args.registry)
            except RegistryError as exc:
                raise _UsageError(str(exc)) from None
            assert entry is not None
            if model is not None and model != entry["model_name"]:
                raise _UsageError(f"--model {model} is not {args.target}'s model")
            model = entry["model_name"]
            if "@" in args.target:
                args.alias = args.target.rsplit("@", 1)[1]
        else:
            checkpoint_uri = args.target
        if args.model and not args.registry:
            raise _UsageError("--model needs --registry")
        audit = audit_promotion(
            checkpoint_uri,
            owner_public_key_pem=owner_key,
            policy_jws=policy,
            registry_uri=args.registry,
            model_name=model,
            alias=args.alias,
            storage_options={"endpoint_url": args.endpoint_url} if args.endpoint_url else None,
        )
        if args.json:
            print(json.dumps({"target": args.target, **audit.to_dict()}, indent=2))
        else:
            for check in audit.checks:
                print(f"{check.status.upper():8} {check.name}: {check.reason}")
            print("verified" if audit.verified else f"NOT verified (exit {audit.exit_code})")
        return audit.exit_code

    return _run(body)


# ---- coco-ai owner-policy ------------------------------------------------------------------------


def _create(path: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _UsageError(f"{path} exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _keygen(args: argparse.Namespace) -> int:
    def body() -> int:
        from coco_ai.owner_policy import generate_owner_key

        for path in (args.private, args.public):
            if Path(path).exists():
                raise _UsageError(f"{path} exists; refusing to overwrite it")
        private, public = generate_owner_key()
        _create(args.private, private, 0o600)
        _create(args.public, public, 0o644)
        print(json.dumps({"private": args.private, "public": args.public}))
        return EXIT_OK

    return _run(body)


def _sign(args: argparse.Namespace) -> int:
    def body() -> int:
        from coco_ai.owner_policy import OwnerPolicy, OwnerPolicyError, verify_owner_policy

        try:
            doc = json.loads(_read(args.document, "policy document"))
            policy = OwnerPolicy.from_dict(doc)
        except (ValueError, OwnerPolicyError) as exc:
            raise _UsageError(f"policy document {args.document}: {exc}") from None
        key = _read(args.key, "owner private key")
        try:
            jws = policy.sign(key)
        except OwnerPolicyError as exc:
            raise _UsageError(str(exc)) from None
        _create(args.out, jws.encode() + b"\n", 0o644)
        signed = verify_owner_policy(jws, _public_of(key))
        print(json.dumps(_summary(signed, args.out)))
        return EXIT_OK

    return _run(body)


def _show(args: argparse.Namespace) -> int:
    def body() -> int:
        from coco_ai.owner_policy import verify_owner_policy

        signed = verify_owner_policy(
            _read(args.jws, "owner policy"), _read(args.owner_key, "owner key")
        )
        print(
            json.dumps({**_summary(signed, args.jws), "policy": signed.policy.to_dict()}, indent=2)
        )
        return EXIT_OK

    return _run(body)


def _summary(signed, where: str) -> dict[str, Any]:
    return {
        "file": where,
        "policy_id": signed.policy.policy_id,
        "version": signed.policy.version,
        "model_name": signed.policy.model_name,
        "digest": signed.digest,
    }


def _public_of(private_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
