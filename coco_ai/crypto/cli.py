"""`coco-ai checkpoint encrypt|decrypt|verify`.

Exit codes (documented in docs/formats/checkpoint.md):
    0  success
    1  unexpected error (I/O, store unreachable)
    2  usage error (bad arguments, unreadable key file, destination not empty)
    3  integrity failure (format, tampering, truncation, digests, missing/extra file, incomplete)
    4  signature or attestation failure (signature, token, policy, replay)
    5  the key does not open the checkpoint (wrong key-encryption key)

The `dataset` command (data owner) is the workload area's; it uses `encrypt_blob` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from coco_ai.run_keys import RunKeyError, add_key_file_arguments, read_key_file

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_ATTESTATION = 4
EXIT_KEY = 5


def register(subparsers: Any) -> None:
    cp = subparsers.add_parser(
        "checkpoint",
        help="encrypt, decrypt and verify encrypted checkpoints",
        description="Encrypted checkpoints (docs/formats/checkpoint.md): encrypt a directory "
        "under a KEK named by its kbs:/// URI, decrypt it, or verify the ciphertext against the "
        "signed manifest without any key.",
    )
    sub = cp.add_subparsers(dest="checkpoint_command", metavar="SUBCOMMAND")

    enc = sub.add_parser("encrypt", help="encrypt a directory into an (unsigned) checkpoint")
    enc.add_argument("--key-file", required=True, help="file holding the 32-byte raw KEK")
    enc.add_argument("--key-uri", required=True, help="the KEK's name, kbs:///repo/type/tag")
    enc.add_argument("--run-id", default=None, help="run id bound into every file (default: new)")
    enc.add_argument("--checkpoint-id", default=None, help="checkpoint id (default: random)")
    enc.add_argument("--meta-file", default=None, help="JSON with digests and metrics")
    enc.add_argument("--segment-size", type=int, default=None, help="plaintext bytes/segment")
    _store_args(enc)
    enc.add_argument("src", help="directory of plaintext files")
    enc.add_argument("dst", help="destination directory or store URI (must not hold one)")
    enc.set_defaults(func=_encrypt)

    dec = sub.add_parser("decrypt", help="decrypt a checkpoint into a new directory")
    add_key_file_arguments(dec)
    _store_args(dec)
    dec.add_argument("src", help="checkpoint directory or store URI")
    dec.add_argument("dst", help="destination directory (must be absent or empty)")
    dec.set_defaults(func=_decrypt)

    ver = sub.add_parser(
        "verify",
        help="check ciphertext against the manifest without a key; with --trust-anchor also "
        "the signature and the attestation token",
    )
    ver.add_argument("--trust-anchor", default=None, help="PEM of the token-signing CA")
    ver.add_argument("--run-id", default=None, help="expected run id (required with anchor)")
    ver.add_argument("--min-gpus", type=int, default=1, help="GPUs that must be affirming")
    ver.add_argument(
        "--expect-claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="required init_data_claims entry (repeatable)",
    )
    _store_args(ver)
    ver.add_argument("src", help="checkpoint directory or store URI")
    ver.set_defaults(func=_verify)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (credentials from env)")


def _store_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}


class _UsageError(Exception):
    pass


def _read_key(path: str) -> bytes:
    try:
        return read_key_file(path)
    except RunKeyError as exc:
        raise _UsageError(str(exc)) from None


def _run(body) -> int:
    from coco_ai.crypto.errors import (
        AttestationError,
        CheckpointError,
        KeyUnwrapError,
        SignatureError,
    )

    try:
        body()
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SignatureError, AttestationError) as exc:
        print(f"attestation/signature failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ATTESTATION
    except KeyUnwrapError as exc:
        print(f"key failure: {exc}", file=sys.stderr)
        return EXIT_KEY
    except CheckpointError as exc:
        print(f"integrity failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTEGRITY
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _encrypt(args: argparse.Namespace) -> int:
    def body() -> None:
        import uuid
        from urllib.parse import urlsplit

        from coco_ai.crypto.checkpoint import encrypt_checkpoint, encrypt_checkpoint_to_store
        from coco_ai.crypto.stream import DEFAULT_SEGMENT_SIZE

        kek = _read_key(args.key_file)
        meta: dict[str, Any] = {}
        if args.meta_file:
            try:
                with open(args.meta_file, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as exc:
                raise _UsageError(f"meta file {args.meta_file}: {exc}") from None
        if args.checkpoint_id:
            meta["checkpoint_id"] = args.checkpoint_id
        run_id = args.run_id or f"manual-{uuid.uuid4().hex[:12]}"
        kwargs = dict(
            kek=kek,
            key_uri=args.key_uri,
            run_id=run_id,
            meta=meta,
            segment_size=args.segment_size or DEFAULT_SEGMENT_SIZE,
        )
        if urlsplit(args.dst).scheme in ("", "file"):
            manifest = encrypt_checkpoint(args.src, args.dst, **kwargs)
        else:  # straight into the store (parts sent while encrypting), manifest last
            manifest = encrypt_checkpoint_to_store(
                args.src, args.dst, storage_options=_store_options(args), **kwargs
            )
        _report(manifest, args.dst)

    return _run(body)


def _decrypt(args: argparse.Namespace) -> int:
    def body() -> None:
        from coco_ai.crypto.checkpoint import decrypt_checkpoint

        if args.run_key_root_file:
            from coco_ai.crypto.transfer import read_manifest
            from coco_ai.run_keys import derive_run_key
            from coco_ai.storage import open_store

            manifest, _ = read_manifest(open_store(args.src, **_store_options(args)))
            kek = derive_run_key(_read_key(args.run_key_root_file), manifest.run_id)
        else:
            kek = _read_key(args.key_file)
        manifest = decrypt_checkpoint(
            args.src, args.dst, kek=kek, storage_options=_store_options(args)
        )
        _report(manifest, args.dst)

    return _run(body)


def _verify(args: argparse.Namespace) -> int:
    def body() -> None:
        from coco_ai.crypto.transfer import read_manifest, verify_objects
        from coco_ai.storage import open_store

        options = _store_options(args)
        if args.trust_anchor is None:
            if args.run_id or args.expect_claim:
                raise _UsageError("--run-id/--expect-claim need --trust-anchor")
            store = open_store(args.src, **options)
            manifest, _ = read_manifest(store)
            verify_objects(store, manifest)
            _report(manifest, args.src, signed=False)
            return
        from coco_ai.crypto.transfer import verify_checkpoint
        from coco_ai.crypto.verify import VerificationPolicy

        if not args.run_id:
            raise _UsageError("--trust-anchor needs --run-id (the run this checkpoint is for)")
        claims = {}
        for item in args.expect_claim:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise _UsageError(f"--expect-claim {item!r} is not KEY=VALUE")
            claims[key] = value
        try:
            with open(args.trust_anchor, "rb") as f:
                anchor = f.read()
        except OSError as exc:
            raise _UsageError(f"cannot read trust anchor: {exc.strerror}") from None
        policy = VerificationPolicy.for_run(
            args.run_id, min_gpus=args.min_gpus, init_data_claims=claims
        )
        verified = verify_checkpoint(
            args.src, trust_anchor_pem=anchor, policy=policy, storage_options=options
        )
        _report(verified.manifest, args.src, signed=True)

    return _run(body)


def _report(manifest: Any, where: str, **extra: Any) -> None:
    print(
        json.dumps(
            {
                "location": str(where),
                "checkpoint_id": manifest.checkpoint_id,
                "run_id": manifest.run_id,
                "manifest_digest": manifest.digest(),
                "files": len(manifest.files),
                "key_uri": manifest.key_uri,
                **extra,
            },
            sort_keys=True,
        )
    )
