"""`coco-ai report`: the data owner's page for one fine-tune or RAG index, decrypted locally with
their key.

A fine-tune puts its report (``report.md``: eval before/after, sample answers), its metrics
(``metrics.json``: per-step losses) and its loss curve (``loss_curve.png``) *inside* the
encrypted checkpoint; a RAG index its ``documents.json`` (per document: title, digest, chunks,
and whether this build reused, re-embedded or added it) and ``index.json`` (settings, retrieval
metrics, the documents an incremental build dropped). Only the holder of the checkpoint key can
see them. This command runs on the data owner's machine, never in Airflow: it reads the
checkpoint (directly, or through a registry entry ``models:/<name>/<version>`` or
``models:/<name>@<alias>``), with the run's key or the data owner's run-key root (the run's key
is derived from it), decrypts only those files in memory (each authenticated against the
manifest; never the chunks or the index itself), and writes one self-contained HTML page with
the provenance summary beside them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.run_keys import RunKeyError, add_key_file_arguments, read_key_file
from coco_ai.workloads.finetune.report import LOSS_CURVE_FILE, METRICS_FILE, REPORT_FILE
from coco_ai.workloads.rag_index.index import DOCUMENTS_FILE, INDEX_INFO_FILE

SAMPLE_HEADER = "| question | expected | before | after |"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
FINETUNE, RAG_INDEX = "finetune", "rag_index"
#: per output kind: the files the page needs (each must be there) and may use
_OWNER_FILES = {
    FINETUNE: ((REPORT_FILE, METRICS_FILE), (LOSS_CURVE_FILE,)),
    RAG_INDEX: ((DOCUMENTS_FILE, INDEX_INFO_FILE), ()),
}


class ReportError(Exception):
    """The report cannot be produced; the message names what was wrong."""


@dataclass
class OwnerReport:
    checkpoint_uri: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    attestation: dict[str, Any]
    kind: str = FINETUNE
    samples: list[dict[str, str]] = field(default_factory=list)  # fine-tune
    loss_curve_png: bytes = b""  # fine-tune
    documents: list[dict[str, Any]] = field(default_factory=list)  # RAG index
    index_info: dict[str, Any] = field(default_factory=dict)  # RAG index
    registry: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- reading the checkpoint --------------------------------------------------------------------


def resolve_target(target: str, registry_uri: str | None = None) -> tuple[str, dict | None]:
    """The checkpoint URI of `target` and, for a registry entry, that entry (references)."""
    from coco_ai.promotion.errors import RegistryError
    from coco_ai.promotion.registry import resolve_entry

    try:
        return resolve_entry(target, registry_uri=registry_uri)
    except RegistryError as exc:
        raise ReportError(str(exc)) from None


def read_owner_files(
    checkpoint_uri: str,
    key: bytes | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    run_key_root: bytes | None = None,
) -> tuple[dict[str, Any], dict[str, bytes], str | None]:
    """Decrypt the owner files of a fine-tune or a RAG index in memory; (manifest summary,
    files, token). The summary's ``kind`` says which the checkpoint is.

    The key is the checkpoint's own (`key`) or derived from the data owner's run-key root and
    the run id in the manifest (`run_key_root`, see coco_ai.run_keys).
    """
    from coco_ai.run_keys import RunKeyError, derive_run_key

    if (key is None) == (run_key_root is None):
        raise ReportError("give exactly one of the checkpoint key or the run-key root")
    from coco_ai.crypto.checkpoint import decrypt_entry
    from coco_ai.crypto.errors import CheckpointError
    from coco_ai.crypto.manifest import TOKEN_FILE
    from coco_ai.crypto.transfer import check_object_set, read_manifest
    from coco_ai.storage import open_store

    try:
        store = open_store(checkpoint_uri, **dict(storage_options or {}))
        manifest, _ = read_manifest(store)
        check_object_set(store, manifest)
        if key is None:
            try:
                key = derive_run_key(run_key_root, manifest.run_id)
            except RunKeyError as exc:
                raise ReportError(f"run-key root: {exc}") from None
        wanted = {name for need, may in _OWNER_FILES.values() for name in (*need, *may)}
        files: dict[str, bytes] = {}
        for entry in manifest.files:
            if entry.path not in wanted:
                continue
            out = io.BytesIO()
            with store.open(entry.object_name) as f:
                decrypt_entry(f, out, manifest, entry, kek=key)
            files[entry.path] = out.getvalue()
        token = store.read_bytes(TOKEN_FILE).decode() if store.exists(TOKEN_FILE) else None
    except CheckpointError as exc:
        raise ReportError(f"{checkpoint_uri}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise ReportError(f"{checkpoint_uri}: cannot read: {exc}") from None
    kind = next((k for k, (need, _) in _OWNER_FILES.items() if all(n in files for n in need)), "")
    if not kind:
        raise ReportError(
            f"{checkpoint_uri} holds neither {REPORT_FILE} and {METRICS_FILE} nor "
            f"{DOCUMENTS_FILE} and {INDEX_INFO_FILE}: not a fine-tune or RAG index output"
        )
    summary = {
        "kind": kind,
        "digest": manifest.digest(),
        "run_id": manifest.run_id,
        "checkpoint_id": manifest.checkpoint_id,
        "key_uri": manifest.key_uri,
        "created_at": manifest.created_at,
        "base_model_digest": manifest.base_model_digest,
        "dataset_digest": manifest.dataset_digest,
        "training_config_digest": manifest.training_config_digest,
    }
    return summary, files, token


def sample_answers(report_md: str) -> list[dict[str, str]]:
    """The workload report's sample table: question, expected, before, after."""
    lines = report_md.splitlines()
    try:
        start = lines.index(SAMPLE_HEADER) + 2
    except ValueError:
        return []
    samples = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        if len(cells) == 4:
            samples.append(
                dict(zip(("question", "expected", "before", "after"), cells, strict=True))
            )
    return samples


def _cells(row: str) -> list[str]:
    cells, current, escaped = [], [], False
    for ch in row.strip().strip("|"):
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    cells.append("".join(current).strip())
    return cells


def build_report(
    target: str,
    key: bytes | None = None,
    *,
    run_key_root: bytes | None = None,
    registry_uri: str | None = None,
    trust_anchor_pem: bytes | None = None,
    promotion_public_key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> OwnerReport:
    from coco_ai.provenance import KeylessChainVerifier, Subject, attestation_summary

    checkpoint_uri, entry = resolve_target(target, registry_uri)
    manifest, files, token = read_owner_files(
        checkpoint_uri, key, storage_options, run_key_root=run_key_root
    )

    def parsed(name: str) -> Any:
        try:
            return json.loads(files[name])
        except ValueError:
            raise ReportError(f"{name} in {checkpoint_uri} is not JSON") from None

    attestation = attestation_summary(token) if token else {"error": "no attestation token"}
    if manifest["kind"] == RAG_INDEX:
        info = parsed(INDEX_INFO_FILE)
        report = OwnerReport(
            checkpoint_uri=checkpoint_uri,
            manifest=manifest,
            metrics=dict(info.get("metrics") or {}),
            attestation=attestation,
            kind=RAG_INDEX,
            documents=list(parsed(DOCUMENTS_FILE)),
            index_info=info,
            registry=entry,
        )
    else:
        metrics = parsed(METRICS_FILE)
        report = OwnerReport(
            checkpoint_uri=checkpoint_uri,
            manifest=manifest,
            metrics=metrics,
            attestation=attestation,
            samples=sample_answers(files[REPORT_FILE].decode()),
            loss_curve_png=files.get(LOSS_CURVE_FILE) or _draw_loss_curve(metrics),
            registry=entry,
        )
    if trust_anchor_pem is not None:
        tags = (entry or {}).get("tags") or {}
        subject = Subject(
            checkpoint_uri=checkpoint_uri,
            run_id=manifest["run_id"],
            image_digest=tags.get("coco-ai.image_digest"),
            signature_uri=tags.get("coco-ai.signature_uri"),
            registry_tags=tags,
        )
        verifier = KeylessChainVerifier(
            trust_anchor_pem=trust_anchor_pem,
            signing_public_key_path=promotion_public_key,
            storage_options=storage_options,
        )
        report.verification = verifier.verify(subject).to_dict()
    return report


def _draw_loss_curve(metrics: Mapping[str, Any]) -> bytes:
    """Redraw the curve from the per-step losses when the checkpoint carries no picture."""
    import tempfile

    from coco_ai.workloads.finetune.report import write_loss_curve

    losses = metrics.get("step_losses") or []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LOSS_CURVE_FILE
        write_loss_curve(
            path, losses, metrics.get("eval_loss_before", 0.0), metrics.get("eval_loss", 0.0)
        )
        return path.read_bytes()


# ---- the page ----------------------------------------------------------------------------------


def render_html(report: OwnerReport) -> str:
    e = html.escape
    index = report.kind == RAG_INDEX
    att = report.attestation
    submods = "".join(
        f"<tr><td>{e(str(s['name']))}</td><td class='{e(str(s['status']))}'>{e(str(s['status']))}"
        f"</td><td>{e(json.dumps(s['trust_vector'], sort_keys=True))}</td>"
        f"<td>{e(str(s['policy_id']))}</td></tr>"
        for s in att.get("submods") or ()
    )
    # the manifest's input fields name the kind's inputs (coco_ai.workloads.kinds)
    inputs = (
        ("embedder", "document repository", "indexing config")
        if index
        else (
            "base model",
            "data set",
            "training config",
        )
    )
    prov = {
        "checkpoint": report.checkpoint_uri,
        "manifest digest": report.manifest["digest"],
        "run id": report.manifest["run_id"],
        "checkpoint key (reference)": report.manifest["key_uri"],
        f"{inputs[0]} digest": report.manifest["base_model_digest"],
        f"{inputs[1]} digest": report.manifest["dataset_digest"],
        f"{inputs[2]} digest": report.manifest["training_config_digest"],
        "TEE": att.get("tee"),
        "initdata digest": att.get("initdata_digest"),
    }
    if report.registry:
        prov["registry"] = (
            f"{report.registry['model_name']} version {report.registry['version']}"
            + (
                f" (aliases: {', '.join(report.registry['aliases'])})"
                if report.registry["aliases"]
                else ""
            )
        )
    prov_rows = "".join(
        f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>"
        for k, v in prov.items()
        if v is not None
    )
    if report.verification:
        checks = "".join(
            f"<tr><td>{e(c['name'])}</td><td class='{e(c['status'].replace(' ', '-'))}'>"
            f"{e(c['status'])}</td><td>{e(c['reason'])}</td></tr>"
            for c in report.verification["checks"]
        )
        verification = (
            f"<h2>Verification: <span id='verdict'>{e(report.verification['verdict'])}</span></h2>"
            f"<table><tr><th>check</th><th>result</th><th>reason</th></tr>{checks}</table>"
        )
    else:
        verification = (
            "<p>The attestation summary is read from the token without checking it; pass "
            "<code>--trust-anchor</code> to verify the whole chain.</p>"
        )
    what = "RAG index" if index else "Fine-tune"
    body = _index_body(report) if index else _finetune_body(report)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{what} report {e(report.manifest["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
code {{ word-break: break-all; }}
.affirming, .passed {{ color: #0a6b2d; font-weight: bold; }}
.failed, .contraindicated, .warning {{ color: #a4161a; font-weight: bold; }}
</style></head><body>
<h1>{what} report: run <code>{e(report.manifest["run_id"])}</code></h1>
<p>Decrypted on this machine with the data owner's key; nothing here came from Airflow.</p>
{body}
<h2>Provenance</h2>
<table id="provenance">{prov_rows}</table>
<h3>Attestation</h3>
<table id="submods"><tr><th>submod</th><th>status</th><th>trust vector</th>
<th>appraisal policy</th></tr>{submods}</table>
{verification}
</body></html>
"""


def _number(metrics: Mapping[str, Any], name: str, fmt: str = "{:.4f}") -> str:
    value = metrics.get(name)
    return html.escape(fmt.format(value)) if isinstance(value, int | float) else "-"


def _finetune_body(report: OwnerReport) -> str:
    e, m = html.escape, report.metrics

    def num(name: str, fmt: str = "{:.4f}") -> str:
        return _number(m, name, fmt)

    rows = "".join(
        f"<tr><td>{e(s['question'])}</td><td>{e(s['expected'])}</td>"
        f"<td>{e(s['before'])}</td><td>{e(s['after'])}</td></tr>"
        for s in report.samples
    )
    curve = base64.b64encode(report.loss_curve_png).decode()
    return f"""<h2>Evaluation (held-out phrasings)</h2>
<table id="eval"><tr><th></th><th>loss</th><th>perplexity</th></tr>
<tr><th>before</th><td>{num("eval_loss_before")}</td>
<td>{num("eval_perplexity_before", "{:.2f}")}</td></tr>
<tr><th>after</th><td>{num("eval_loss")}</td>
<td>{num("eval_perplexity", "{:.2f}")}</td></tr></table>
<p>Training: {num("train_steps", "{}")} steps, {num("train_tokens", "{}")} tokens,
{num("train_seconds", "{:.1f}")} s ({num("train_tokens_per_s", "{:.0f}")} tokens/s) on
{e(str(m.get("device", "-")))} ({e(str(m.get("precision", "-")))}).</p>
<h2>Loss curve</h2>
<img id="loss-curve" alt="training loss per step" src="data:image/png;base64,{curve}">
<h2>Sample answers (greedy, held-out questions)</h2>
<table id="samples"><tr><th>question</th><th>expected</th><th>before</th><th>after</th></tr>
{rows}</table>"""


def _index_body(report: OwnerReport) -> str:
    e, m, info = html.escape, report.metrics, report.index_info

    def num(name: str, fmt: str = "{:.4f}") -> str:
        return _number(m, name, fmt)

    k = num("eval_k", "{}")
    docs = "".join(
        f"<tr><td><code>{e(str(d.get('id')))}</code></td><td>{e(str(d.get('kind')))}</td>"
        f"<td>{e(str(d.get('title')))}</td><td>{e(str(d.get('chunks')))}</td>"
        f"<td class='status'>{e(str(d.get('status', '-')))}</td></tr>"
        for d in report.documents
    )
    incremental = info.get("incremental")
    if isinstance(incremental, Mapping):
        removed = ", ".join(str(i) for i in incremental.get("removed") or ()) or "none"
        why = incremental.get("nothing_reused_because")
        build = (
            f"Incremental, on the index of run <code>{e(str(incremental.get('previous_run_id')))}"
            f"</code> (manifest <code>{e(str(incremental.get('previous_manifest_digest')))}"
            f"</code>): {num('documents_reused', '{}')} documents reused, "
            f"{num('documents_changed', '{}')} changed, {num('documents_added', '{}')} added, "
            f"{num('chunks_embedded', '{}')} chunks embedded; dropped: "
            f"<span id='removed'>{e(removed)}</span>."
            + (f" Nothing was reused: {e(str(why))}." if why else "")
        )
    else:
        build = f"Full build: {num('chunks_embedded', '{}')} chunks embedded."
    settings = {
        name: info.get(name) for name in ("engine", "chunker", "embedding", "index", "dimension")
    }
    setting_rows = "".join(
        f"<tr><th>{e(name)}</th><td><code>{e(json.dumps(value, sort_keys=True))}</code></td></tr>"
        for name, value in settings.items()
        if value is not None
    )
    return f"""<h2>Retrieval (the data owner's held-out questions)</h2>
<table id="eval"><tr><th>hit rate@1</th><th>hit rate@{k}</th><th>MRR@{k}</th>
<th>recall@10 vs exact</th></tr>
<tr><td>{num("hit_rate_at_1")}</td><td>{num("hit_rate_at_k")}</td><td>{num("mrr_at_k")}</td>
<td>{num("ann_recall_at_10")}</td></tr></table>
<p>{num("documents", "{}")} documents, {num("chunks", "{}")} chunks,
{num("questions", "{}")} questions. <span id="build">{build}</span></p>
<h2>Documents</h2>
<table id="documents"><tr><th>id</th><th>kind</th><th>title</th><th>chunks</th>
<th>this build</th></tr>{docs}</table>
<h2>Settings</h2>
<table id="settings">{setting_rows}</table>"""


# ---- the command -------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="decrypt a fine-tune's or RAG index's report locally with the data owner's key; "
        "write an HTML page",
        description="Data owner only, on the data owner's machine: decrypt the report, metrics "
        "and loss curve of a fine-tune, or the document list and retrieval metrics of a RAG "
        "index, inside an encrypted checkpoint and write an HTML page with the provenance "
        "summary. TARGET is a checkpoint URI (file://, s3://) or a registry entry "
        "models:/<name>/<version> or models:/<name>@<alias>.",
    )
    p.add_argument("target", help="checkpoint URI or registry entry (models:/name/version)")
    add_key_file_arguments(p)
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--registry-uri", help="MLflow registry URI (default: $COCO_AI_REGISTRY_URI)")
    p.add_argument(
        "--trust-anchor",
        help="PEM of the attestation-token trust anchor: also verify the whole keyless chain",
    )
    p.add_argument(
        "--promotion-key",
        help="public key PEM of the promotion (model-signing) key, for the model signature check",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        try:
            key = read_key_file(args.key_file) if args.key_file else None
            root = read_key_file(args.run_key_root_file) if args.run_key_root_file else None
        except RunKeyError as exc:
            raise ReportError(str(exc)) from None
        anchor = Path(args.trust_anchor).read_bytes() if args.trust_anchor else None
        report = build_report(
            args.target,
            key,
            run_key_root=root,
            registry_uri=args.registry_uri,
            trust_anchor_pem=anchor,
            promotion_public_key=args.promotion_key,
        )
    except ReportError as exc:
        print(f"coco-ai report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if "key file" in str(exc) else EXIT_ERROR
    except OSError as exc:
        print(f"coco-ai report: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    out = Path(args.out)
    out.write_text(render_html(report))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:12]
    print(f"wrote {out} (run {report.manifest['run_id']}, sha256 {digest}…)")
    if report.verification and report.verification["verdict"] != "verified":
        print("coco-ai report: the provenance chain did NOT verify; see the page", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
