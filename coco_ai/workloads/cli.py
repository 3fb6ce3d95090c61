"""`coco-ai dataset generate|encrypt`, `coco-ai rag generate|encrypt`, `coco-ai rag caller
admit|revoke` and `coco-ai rag index-key publish|withdraw` (data-owner tooling), `coco-ai rag
serve` (the attested retrieval service, run inside its TEE) and `coco-ai model prepare|digest`.

Heavy imports (torch, transformers, cryptography) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coco_ai.kbs.admin_cli import add_admin_arguments, admin_client
from coco_ai.workloads.dataset import DEFAULT_EXAMPLES
from coco_ai.workloads.rag_index.corpus import DEFAULT_DOCUMENTS


def register(subparsers) -> None:
    ds = subparsers.add_parser("dataset", help="generate and encrypt instruction data sets")
    ds_sub = ds.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")

    gen = ds_sub.add_parser(
        "generate", help="write the deterministic Northwind Aerospace support data set (JSONL)"
    )
    gen.add_argument("--out", required=True, help="output JSONL file")
    gen.add_argument(
        "--examples",
        type=int,
        default=DEFAULT_EXAMPLES,
        help=f"records (default {DEFAULT_EXAMPLES})",
    )
    gen.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    gen.set_defaults(func=_generate)

    enc = ds_sub.add_parser(
        "encrypt", help="validate a JSONL data set and encrypt it under a data key (data owner)"
    )
    enc.add_argument("--key-file", required=True, help="file holding the raw 32-byte data key")
    enc.add_argument("--key-uri", required=True, help="kbs:///repo/type/tag the key is stored at")
    enc.add_argument("src", help="plaintext JSONL")
    enc.add_argument("dst", help="encrypted output file")
    enc.set_defaults(func=_encrypt)

    rag = subparsers.add_parser("rag", help="generate and encrypt RAG document repositories")
    rag_sub = rag.add_subparsers(dest="rag_command", metavar="SUBCOMMAND")
    rgen = rag_sub.add_parser(
        "generate",
        help="write the deterministic Northwind document repository with its evaluation "
        "questions (JSONL)",
    )
    rgen.add_argument("--out", required=True, help="output JSONL file")
    rgen.add_argument(
        "--documents", type=int, default=DEFAULT_DOCUMENTS, help=f"default {DEFAULT_DOCUMENTS}"
    )
    rgen.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    rgen.set_defaults(func=_generate_repository)
    renc = rag_sub.add_parser(
        "encrypt", help="validate a document repository and encrypt it under its key (data owner)"
    )
    renc.add_argument("--key-file", required=True, help="file holding the raw 32-byte key")
    renc.add_argument("--key-uri", required=True, help="kbs:///repo/type/tag the key is stored at")
    renc.add_argument("src", help="plaintext JSONL repository")
    renc.add_argument("dst", help="encrypted output file")
    renc.set_defaults(func=_encrypt_repository)
    rserve = rag_sub.add_parser(
        "serve",
        help="run the attested retrieval service inside its TEE (python -m "
        "coco_ai.workloads.rag_serve; docs/formats/rag.md section 5)",
    )
    rserve.add_argument(
        "--config", help="service config file (or env COCO_AI_RAG_SERVE_CONFIG)", default=None
    )
    rserve.set_defaults(func=_serve)
    rpod = rag_sub.add_parser(
        "serve-manifest",
        help="print the Kubernetes objects of the retrieval service as a Kata confidential pod "
        "(data owner; docs/formats/rag.md section 5.6)",
    )
    rpod.add_argument("--kbs-url", required=True, help="Trustee KBS URL the guest attests to")
    rpod.add_argument("--kbs-ca", required=True, help="PEM the guest pins for the KBS")
    rpod.add_argument("--image", required=True, help="the service image, host/path@sha256:<hex>")
    rpod.add_argument("--run-id", required=True, help="the service's own run id")
    rpod.add_argument("--index-run", required=True, help="the promoted index's run")
    rpod.add_argument("--index-manifest", required=True, help="its promoted manifest digest")
    rpod.add_argument("--index-uri", required=True, help="store location of the index")
    rpod.add_argument("--embedder-path", required=True, help="store location of the embedder")
    rpod.add_argument("--trust-anchor", required=True, help="attestation trust anchor (PEM)")
    rpod.add_argument("--caller", action="append", default=[], help="admitted caller (repeat)")
    rpod.add_argument("--store-options-uri", help="kbs:/// URI of the store credentials")
    rpod.add_argument(
        "--sealed-storage-options", help="file holding the sealed secret that points at it"
    )
    rpod.add_argument("--runtime-class", default="kata-qemu-tdx")
    rpod.add_argument("--namespace", default="confidential-ai")
    rpod.add_argument("--port", type=int, default=8443)
    rpod.set_defaults(func=_serve_manifest)
    rcaller = rag_sub.add_parser(
        "caller",
        help="admit or revoke a caller of the attested retrieval service (data owner, Trustee "
        "admin API)",
    )
    caller_sub = rcaller.add_subparsers(dest="caller_command", required=True)
    for name, helptext, func in (
        ("admit", "write a fresh credential for each caller to Trustee", _admit_callers),
        ("revoke", "delete each caller's credential from Trustee", _revoke_callers),
    ):
        cmd = caller_sub.add_parser(name, help=helptext, description=helptext + ".")
        add_admin_arguments(cmd)
        cmd.add_argument("caller", nargs="+", help="caller id ([A-Za-z0-9._-], repeatable)")
        cmd.set_defaults(func=func)
    rkey = rag_sub.add_parser(
        "index-key",
        help="publish or withdraw a promoted index's key for the retrieval services that serve "
        "it (data owner, Trustee admin API)",
    )
    key_sub = rkey.add_subparsers(dest="index_key_command", required=True)
    publish = key_sub.add_parser(
        "publish",
        help="derive the index run's key from the run-key root and write it to Trustee",
        description="Derive the index run's key from the data owner's run-key root (read here, "
        "never sent) and write it to Trustee, which releases it only to a TEE whose initdata "
        "names it: a service of that index. Services get this one key, never the root.",
    )
    publish.add_argument(
        "--run-key-root-file", required=True, help="the data owner's 32-byte run-key root"
    )
    withdraw = key_sub.add_parser(
        "withdraw", help="delete the index's key from Trustee (no new service can load it)"
    )
    for cmd, func in ((publish, _publish_index_key), (withdraw, _withdraw_index_key)):
        add_admin_arguments(cmd)
        cmd.add_argument("--index-run", required=True, help="the run that built the index")
        cmd.set_defaults(func=func)

    rdoc = rag_sub.add_parser(
        "document",
        help="prove, or check, that a document is in an attested index (its signed manifest's "
        "keyed per-document digests; docs/formats/rag.md section 4.1)",
    )
    doc_sub = rdoc.add_subparsers(dest="document_command", required=True)
    prove = doc_sub.add_parser(
        "prove",
        help="print the inclusion proof of one document (data owner: needs the run-key root)",
        description="Print the proof that a document is in the index of INDEX_RUN: its id, "
        "its text digest and its opening (a key for that one document, derived from the run "
        "key; it reveals nothing about other documents). The root is read here, never sent.",
    )
    prove.add_argument("--index-run", required=True, help="the run that built the index")
    prove.add_argument(
        "--run-key-root-file", required=True, help="the data owner's 32-byte run-key root"
    )
    prove.add_argument("--repository", required=True, help="the plaintext JSONL repository")
    prove.add_argument("--doc-id", required=True, help="the document to prove")
    prove.set_defaults(func=_prove_document)
    check = doc_sub.add_parser(
        "check",
        help="verify an index (token, signature, objects) and that a proof's document is in it",
    )
    check.add_argument("--index", required=True, help="store location of the index checkpoint")
    check.add_argument("--trust-anchor", required=True, help="attestation trust anchor (PEM)")
    check.add_argument("--proof", required=True, help="the proof JSON (from prove)")
    check.add_argument(
        "--repository", help="plaintext JSONL repository: also check the document's text"
    )
    check.set_defaults(func=_check_document)

    model = subparsers.add_parser("model", help="prepare base models and compute their digests")
    m_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    prep = m_sub.add_parser(
        "prepare", help="convert SmolLM2-135M-Instruct (GGUF) or build a tiny test model"
    )
    prep.add_argument(
        "--kind",
        choices=("smollm2", "tiny-1m", "tiny-10m", "minilm", "tiny-bert"),
        default="smollm2",
        help="which model (minilm, tiny-bert: RAG embedders)",
    )
    prep.add_argument("--out", required=True, help="cache dir (smollm2) or output dir (tiny)")
    prep.add_argument("--corpus", help="JSONL data set the tiny model's tokenizer is trained on")
    prep.set_defaults(func=_prepare)
    dig = m_sub.add_parser("digest", help="print the canonical sha256 digest of a model directory")
    dig.add_argument("model_dir")
    dig.set_defaults(func=_digest)


def _err(message: str) -> int:
    print(f"coco-ai: error: {message}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from coco_ai.workloads.rag_serve.__main__ import main

    return main(["--config", args.config] if args.config else [])


def _admit_callers(args: argparse.Namespace) -> int:
    """Credentials go only to Trustee, never to the terminal: a caller's TEE and a service whose
    initdata names the caller (claim printed here) obtain it after attestation."""
    from coco_ai.workloads.rag_serve.identity import (
        CALLER_CREDENTIAL_PREFIX,
        credential_path,
        issue_caller_credential,
    )

    def admit(admin, caller: str) -> None:
        issue_caller_credential(admin, caller)  # the bytes are dropped here

    return _for_each_caller(
        args,
        admit,
        lambda caller: {
            "caller": caller,
            "credential_uri": credential_path(caller).uri(),
            "service_initdata_claim": {
                CALLER_CREDENTIAL_PREFIX + caller: credential_path(caller).uri()
            },
        },
    )


def _revoke_callers(args: argparse.Namespace) -> int:
    from coco_ai.workloads.rag_serve.identity import credential_path, revoke_caller_credential

    return _for_each_caller(
        args,
        revoke_caller_credential,
        lambda caller: {"caller": caller, "revoked": credential_path(caller).uri()},
    )


def _publish_index_key(args: argparse.Namespace) -> int:
    from coco_ai.kbs.errors import KbsError
    from coco_ai.run_keys import RunKeyError, derive_run_key, read_key_file
    from coco_ai.workloads.rag_serve.identity import publish_index_key

    try:
        key = derive_run_key(read_key_file(args.run_key_root_file), args.index_run)
        with admin_client(args) as admin:
            path = publish_index_key(admin, args.index_run, key)
    except (KbsError, RunKeyError, ValueError, OSError) as exc:
        return _err(f"rag index-key publish: {exc}")
    print(json.dumps({"index_run": args.index_run, "index_key_uri": path.uri()}, indent=2))
    return 0


def _repository_document(path: str, doc_id: str):
    from coco_ai.workloads.rag_index.corpus import parse_repository

    documents = {d.id: d for d in parse_repository(Path(path).read_bytes()).documents}
    if doc_id not in documents:
        raise ValueError(f"the repository has no document {doc_id!r}")
    return documents[doc_id]


def _prove_document(args: argparse.Namespace) -> int:
    from coco_ai.run_keys import RunKeyError, derive_run_key, read_key_file
    from coco_ai.workloads.rag_index.inclusion import prove
    from coco_ai.workloads.rag_index.index import document_digest

    try:
        document = _repository_document(args.repository, args.doc_id)
        key = derive_run_key(read_key_file(args.run_key_root_file), args.index_run)
        proof = prove(key, args.index_run, document.id, document_digest(document))
    except (RunKeyError, ValueError, OSError) as exc:
        return _err(f"rag document prove: {exc}")
    print(json.dumps(proof.to_dict(), indent=2))
    return 0


def _check_document(args: argparse.Namespace) -> int:
    from coco_ai.crypto import VerificationPolicy, verify_checkpoint
    from coco_ai.crypto.errors import CheckpointError
    from coco_ai.guest.initdata import WORKLOAD_KEY
    from coco_ai.kbs.errors import KbsError
    from coco_ai.workloads.kinds import RAG_INDEX
    from coco_ai.workloads.rag_index.inclusion import InclusionProof, check_inclusion

    try:
        proof = InclusionProof.from_dict(json.loads(Path(args.proof).read_text(encoding="utf-8")))
        text = None
        if args.repository:
            text = _repository_document(args.repository, proof.doc_id).text
        policy = VerificationPolicy.for_run(
            proof.run_id, min_gpus=0, init_data_claims={WORKLOAD_KEY: RAG_INDEX.name}
        )
        verified = verify_checkpoint(
            args.index, trust_anchor_pem=Path(args.trust_anchor).read_bytes(), policy=policy
        )
        check_inclusion(verified.manifest, proof, text)
    except (CheckpointError, KbsError, ValueError, OSError) as exc:
        return _err(f"rag document check: {exc}")
    report = {
        "doc_id": proof.doc_id,
        "index_run": proof.run_id,
        "manifest_digest": verified.manifest_digest,
        "included": True,
        "text_checked": text is not None,
    }
    print(json.dumps(report, indent=2))
    return 0


def _serve_manifest(args: argparse.Namespace) -> int:
    import yaml

    from coco_ai.workloads.rag_serve.identity import service_claims
    from coco_ai.workloads.rag_serve.kubernetes import service_manifests

    if (args.store_options_uri is None) != (args.sealed_storage_options is None):
        return _err(
            "rag serve-manifest: --store-options-uri and --sealed-storage-options go together"
        )
    try:
        anchor = Path(args.trust_anchor).read_bytes()
        config = {
            "run_id": args.run_id,
            "index_uri": args.index_uri,
            "embedder_path": args.embedder_path,
            "trust_anchor_pem": anchor.decode("ascii"),
            "host": "0.0.0.0",  # noqa: S104 - the pod's own address; TLS, callers attested
            "port": args.port,
        }
        if args.sealed_storage_options:
            sealed = Path(args.sealed_storage_options).read_text(encoding="ascii").strip()
            config["sealed_storage_options"] = sealed
        claims = service_claims(
            run_id=args.run_id,
            image=args.image,
            index_run_id=args.index_run,
            index_manifest_digest=args.index_manifest,
            trust_anchor_pem=anchor,
            callers=args.caller,
            store_options_uri=args.store_options_uri,
        )
        objects = service_manifests(
            config=config,
            claims=claims,
            image=args.image,
            kbs_url=args.kbs_url,
            kbs_ca_pem=Path(args.kbs_ca).read_bytes(),
            namespace=args.namespace,
            runtime_class=args.runtime_class,
        )
    except (ValueError, OSError) as exc:  # ConfigError, InitdataError… are ValueErrors
        return _err(f"rag serve-manifest: {exc}")
    print(yaml.safe_dump_all(objects, sort_keys=False, width=100), end="")
    return 0


def _withdraw_index_key(args: argparse.Namespace) -> int:
    from coco_ai.kbs.errors import KbsError
    from coco_ai.workloads.rag_serve.identity import index_key_path, withdraw_index_key

    try:
        uri = index_key_path(args.index_run).uri()
        with admin_client(args) as admin:
            withdraw_index_key(admin, args.index_run)
    except (KbsError, ValueError, OSError) as exc:
        return _err(f"rag index-key withdraw: {exc}")
    print(json.dumps({"index_run": args.index_run, "withdrawn": uri}, indent=2))
    return 0


def _for_each_caller(args: argparse.Namespace, act, describe) -> int:
    from coco_ai.kbs.errors import KbsError
    from coco_ai.workloads.rag_serve.identity import credential_path

    done: list[dict] = []
    try:
        for caller in args.caller:  # every id checked before Trustee is touched
            credential_path(caller)
        with admin_client(args) as admin:
            for caller in args.caller:
                act(admin, caller)
                done.append(describe(caller))
    except (KbsError, ValueError, OSError) as exc:
        print(json.dumps(done, indent=2))  # what did take effect before the failure
        return _err(f"rag caller {args.caller_command}: {exc}")
    print(json.dumps(done, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from coco_ai.workloads.dataset import generate_examples, to_jsonl

    try:
        examples = generate_examples(args.examples, args.seed)
    except ValueError as exc:
        return _err(str(exc))
    data = to_jsonl(examples)
    Path(args.out).write_bytes(data)
    print(
        json.dumps(
            {
                "out": args.out,
                "records": len(examples),
                "facts": len({e.response for e in examples}),
            }
        )
    )
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    from coco_ai.workloads.dataset import DATASET_AAD, DatasetError, parse_jsonl

    def count(plaintext: bytes) -> dict[str, int]:
        return {"records": len(parse_jsonl(plaintext))}

    return _encrypt_validated(args, count, DatasetError, DATASET_AAD)


def _encrypt_repository(args: argparse.Namespace) -> int:
    from coco_ai.workloads.rag_index.corpus import RepositoryError, parse_repository
    from coco_ai.workloads.rag_index.workload import REPOSITORY_AAD

    def count(plaintext: bytes) -> dict[str, int]:
        repo = parse_repository(plaintext)
        return {"documents": len(repo.documents), "questions": len(repo.questions)}

    return _encrypt_validated(args, count, RepositoryError, REPOSITORY_AAD)


def _encrypt_validated(args: argparse.Namespace, validate, invalid: type, aad: dict) -> int:
    """Validate ``args.src`` as the workload would (refusing what it would reject), encrypt it
    under the key in ``args.key_file`` bound to ``args.key_uri`` and ``aad``, print a summary."""
    import hashlib

    from coco_ai.crypto import encrypt_blob

    try:
        key = Path(args.key_file).read_bytes()
        plaintext = Path(args.src).read_bytes()
    except OSError as exc:
        return _err(f"{exc.filename}: {exc.strerror}")
    if len(key) != 32:
        return _err(f"{args.key_file} holds {len(key)} bytes; a raw 32-byte key is required")
    try:
        counts = validate(plaintext)
    except invalid as exc:
        return _err(f"{args.src}: {exc}")
    try:
        blob = encrypt_blob(plaintext, kek=key, key_uri=args.key_uri, aad_context=aad)
    except ValueError as exc:
        return _err(str(exc))
    Path(args.dst).write_bytes(blob)
    # the digest the signed manifest will carry as dataset_digest (what a promotion policy approves)
    print(
        json.dumps(
            {
                "out": args.dst,
                **counts,
                "key_uri": args.key_uri,
                "dataset_digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            }
        )
    )
    return 0


def _generate_repository(args: argparse.Namespace) -> int:
    from coco_ai.workloads.rag_index.corpus import generate_repository, to_jsonl

    try:
        repo = generate_repository(args.documents, args.seed)
    except ValueError as exc:
        return _err(str(exc))
    Path(args.out).write_bytes(to_jsonl(repo))
    print(
        json.dumps(
            {"out": args.out, "documents": len(repo.documents), "questions": len(repo.questions)}
        )
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from coco_ai.workloads.models import ModelError, build_tiny_model, convert_smollm2, model_digest

    try:
        if args.kind == "smollm2":
            path = convert_smollm2(args.out)
        elif args.kind == "minilm":
            from coco_ai.workloads.rag_index.embedder import minilm_dir

            path = minilm_dir(args.out)
        elif args.kind == "tiny-bert":
            from coco_ai.workloads.rag_index.corpus import generate_repository
            from coco_ai.workloads.rag_index.embedder import build_tiny_embedder

            path = build_tiny_embedder(args.out, [d.text for d in generate_repository().documents])
        else:
            from coco_ai.workloads.dataset import corpus_text, generate_examples, parse_jsonl

            examples = (
                parse_jsonl(Path(args.corpus).read_bytes()) if args.corpus else generate_examples()
            )
            path = build_tiny_model(
                args.out, args.kind.removeprefix("tiny-"), corpus_text(examples)
            )
    except (ModelError, ValueError, OSError) as exc:
        return _err(str(exc))
    print(json.dumps({"model_dir": str(path), "digest": model_digest(path)}))
    return 0


def _digest(args: argparse.Namespace) -> int:
    from coco_ai.workloads.models import ModelError, model_digest

    try:
        print(model_digest(args.model_dir))
    except ModelError as exc:
        return _err(str(exc))
    return 0
