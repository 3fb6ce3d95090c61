"""The provenance view's FastAPI app, served by the Airflow API server under ``/coco-ai``.

Every route depends on Airflow's own security dependencies: the caller is authenticated by the
auth manager (bearer token, or the UI's session cookie when the page is opened in the UI), and
authorised to read the DAG's runs (per-run view) or assets (model versions, which promotion
announces as Asset events). What a route returns is built by `coco_ai.provenance` from public
references only; nothing here reads Trustee, a key or a decrypted file.
"""

from __future__ import annotations

import html
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_asset, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

WORKLOAD_TASK = "confidential_finetune"
KEY_RELEASE_TASK = "key_release"
UPLOAD_TASK = "encrypted_checkpoint_upload"
PROMOTION_TASK = "attested_promotion"
TRUSTEE_CONN_ID = "trustee_default"

app = FastAPI(
    title="CoCo AI provenance",
    description="Public provenance of confidential fine-tunes: attestation, references, checks.",
)

_read_run = Depends(requires_access_dag("GET", DagAccessEntity.RUN))
_read_xcom = Depends(requires_access_dag("GET", DagAccessEntity.XCOM))
_read_assets = Depends(requires_access_asset("GET"))


# ---- data: XCom, rendered fields, registry, settings -------------------------------------------


def _xcom(dag_id: str, run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel)
            .where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
            .limit(1)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _rendered(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalar(
            select(RTIF.rendered_fields).where(
                RTIF.dag_id == dag_id,
                RTIF.run_id == run_id,
                RTIF.task_id == task_id,
                RTIF.map_index == -1,
            )
        )
    return fields or {}


def _run_exists(dag_id: str, run_id: str) -> bool:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return (
            session.scalar(
                select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            )
            is not None
        )


def _setting(option: str) -> str:
    from airflow.configuration import conf

    return conf.get("coco_ai", option, fallback="").strip()


def _trust_anchor() -> bytes | None:
    """The attestation trust anchor of the data owner's signed policy (never a Connection)."""
    from coco_ai_airflow._settings import owner_policy

    try:
        return owner_policy().policy.trust_anchor_pem.encode()
    except Exception:  # no policy configured or readable: the view shows chains unverified
        return None


@lru_cache(maxsize=4)
def _public_key_file(private_key_path: str) -> str:
    """The public half of the promotion key, written once to a private temporary file."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd, path = tempfile.mkstemp(prefix="coco-ai-promotion-pub-", suffix=".pem")
    with open(fd, "wb") as f:
        f.write(pem)
    return path


def _signing_public_key() -> str | None:
    if public := _setting("model_signing_public_key"):
        return public
    if private := _setting("model_signing_key"):
        try:
            return _public_key_file(private)
        except (OSError, ValueError, TypeError):
            return None
    return None


def _verifier():
    from coco_ai.provenance import KeylessChainVerifier

    return KeylessChainVerifier(
        trust_anchor_pem=_trust_anchor() or b"", signing_public_key_path=_signing_public_key()
    )


def _registry(model_name: str | None, manifest_digest: str | None) -> tuple[dict | None, dict]:
    """(registry view data, the version's tags) for the version holding `manifest_digest`."""
    from coco_ai.promotion import RegistryError, find_model_version, model_versions

    uri = _setting("mlflow_tracking_uri") or None
    name = model_name or _setting("registered_model_name")
    if not name or not manifest_digest:
        return None, {}
    try:
        found = find_model_version(name, manifest_digest, registry_uri=uri)
        if found is None:
            return None, {}
        versions = model_versions(name, registry_uri=uri)
    except RegistryError:
        return None, {}
    return _registry_view(found, versions), dict(found.tags)


def _registry_view(found, versions) -> dict:
    aliases = _aliases(found.name)
    return {
        "model_name": found.name,
        "version": found.version,
        "aliases": aliases.get(found.version, []),
        "versions": [
            {
                "version": v.version,
                "run_id": v.tags.get("coco-ai.run_id"),
                "manifest_digest": v.tags.get("coco-ai.manifest_digest"),
                "aliases": aliases.get(v.version, []),
            }
            for v in sorted(versions, key=lambda v: -v.version)
        ],
    }


def _aliases(name: str) -> dict[int, list[str]]:
    """version -> aliases now on it, for the alias promotion moves (MLflow's version search
    does not return aliases)."""
    from coco_ai.promotion import RegistryError, version_by_alias

    alias = _setting("serving_alias") or "serving"
    try:
        holder = version_by_alias(name, alias, registry_uri=_setting("mlflow_tracking_uri") or None)
    except RegistryError:
        return {}
    return {holder.version: [alias]} if holder else {}


# ---- records -----------------------------------------------------------------------------------


def run_record(dag_id: str, run_id: str) -> dict[str, Any]:
    from coco_ai.provenance import Subject, provenance_record
    from coco_ai.runs import RunRefs, RunRefsError

    if not _run_exists(dag_id, run_id):
        raise HTTPException(404, f"DAG run {dag_id}/{run_id} not found")
    refs_xcom = _xcom(dag_id, run_id, KEY_RELEASE_TASK)
    upload = _xcom(dag_id, run_id, UPLOAD_TASK) or {}
    promoted = _xcom(dag_id, run_id, PROMOTION_TASK) or {}
    links = _airflow_links(dag_id, run_id)
    if not isinstance(upload, dict) or not upload.get("checkpoint_uri"):
        return {
            "dag_id": dag_id,
            "airflow_run_id": run_id,
            "pending": "no checkpoint is stored for this run (yet): the upload task has no output",
            "links": links,
        }
    try:
        refs = RunRefs.from_xcom(refs_xcom)
    except RunRefsError:
        refs = None  # malformed references: the policy check then pins only the run id
    if not isinstance(promoted, dict):
        promoted = {}
    registry, tags = _registry(promoted.get("model_name"), upload.get("manifest_digest"))
    min_gpus = _rendered(dag_id, run_id, PROMOTION_TASK).get("min_gpus", 0)
    subject = Subject(
        checkpoint_uri=upload["checkpoint_uri"],
        run_id=refs.run_id if refs else str(upload.get("run_id") or ""),
        min_gpus=_int(min_gpus),
        signature_uri=tags.get("coco-ai.signature_uri") or promoted.get("signature_uri"),
        registry_tags=tags,
        run_refs=refs,
    )
    record = provenance_record(
        subject,
        _verifier(),
        run_refs=refs_xcom if isinstance(refs_xcom, dict) else None,
        registry=registry,
    )
    return {"dag_id": dag_id, "airflow_run_id": run_id, **record, "links": links}


def model_record(name: str, version: int) -> dict[str, Any]:
    from coco_ai.promotion import RegistryError, model_versions
    from coco_ai.provenance import Subject, provenance_record

    uri = _setting("mlflow_tracking_uri") or None
    try:
        versions = model_versions(name, registry_uri=uri)
    except RegistryError as exc:
        raise HTTPException(400, str(exc)) from None
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        raise HTTPException(404, f"model {name} has no version {version}")
    tags = dict(found.tags)
    subject = Subject(
        checkpoint_uri=tags.get("coco-ai.checkpoint_uri") or found.source,
        run_id=tags.get("coco-ai.run_id", ""),
        image_digest=tags.get("coco-ai.image_digest"),
        min_gpus=_int(tags.get("coco-ai.gpu_count", 0)),
        signature_uri=tags.get("coco-ai.signature_uri"),
        registry_tags=tags,
    )
    record = provenance_record(subject, _verifier(), registry=_registry_view(found, versions))
    return {"model_name": name, "model_version": version, **record, "links": []}


def _int(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _airflow_links(dag_id: str, run_id: str) -> list[dict[str, str]]:
    # relative to the page (<base>/coco-ai/runs/<dag>/<run>), so a base URL path is kept
    base = f"../../../dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return [
        {"name": "run", "href": base},
        *(
            {"name": f"{t} log", "href": f"{base}/tasks/{t}"}
            for t in (WORKLOAD_TASK, UPLOAD_TASK, PROMOTION_TASK)
        ),
    ]


# ---- routes ------------------------------------------------------------------------------------


@app.get("/api/runs/{dag_id}/{run_id}", dependencies=[_read_run, _read_xcom])
def run_provenance_json(dag_id: str, run_id: str) -> JSONResponse:
    return JSONResponse(run_record(dag_id, run_id))


@app.get(
    "/runs/{dag_id}/{run_id}",
    response_class=HTMLResponse,
    dependencies=[_read_run, _read_xcom],
)
def run_provenance_page(dag_id: str, run_id: str) -> HTMLResponse:
    return HTMLResponse(render_page(run_record(dag_id, run_id)), headers=_PAGE_HEADERS)


@app.get("/api/models/{name}/{version}", dependencies=[_read_assets])
def model_provenance_json(name: str, version: int) -> JSONResponse:
    return JSONResponse(model_record(name, version))


@app.get("/models/{name}/{version}", response_class=HTMLResponse, dependencies=[_read_assets])
def model_provenance_page(name: str, version: int) -> HTMLResponse:
    return HTMLResponse(render_page(model_record(name, version)), headers=_PAGE_HEADERS)


@app.get("/models", response_class=HTMLResponse, dependencies=[_read_assets])
def models_page() -> HTMLResponse:
    from coco_ai.promotion import RegistryError, model_versions

    name = _setting("registered_model_name")
    try:
        versions = model_versions(name, registry_uri=_setting("mlflow_tracking_uri") or None)
    except RegistryError as exc:
        raise HTTPException(400, str(exc)) from None
    e = html.escape
    aliases = _aliases(name) if versions else {}
    rows = "".join(
        # relative links: the page is /coco-ai/models, wherever the API server's base URL is
        f"<tr><td><a href='models/{quote(name)}/{v.version}'>version {v.version}</a>"
        f"</td><td><code>{e(v.tags.get('coco-ai.run_id', '-'))}</code></td>"
        f"<td>{e(', '.join(aliases.get(v.version, [])) or '-')}</td></tr>"
        for v in sorted(versions, key=lambda v: -v.version)
    )
    body = (
        f"<h1>Registered model <code>{e(name)}</code></h1><table><tr><th>version</th>"
        f"<th>run</th><th>aliases</th></tr>{rows}</table>"
        if versions
        else f"<h1>No promoted versions of <code>{e(name)}</code> yet</h1>"
    )
    return HTMLResponse(_document("Promoted models", body), headers=_PAGE_HEADERS)


# ---- HTML --------------------------------------------------------------------------------------

# The page runs no script and loads nothing: a stored value cannot turn into code.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _document(title: str, body: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>
body {{ font-family: system-ui, sans-serif; margin: 1em; color: #222; font-size: 14px; }}
table {{ border-collapse: collapse; margin: 0.3em 0 1.2em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
code {{ word-break: break-all; }}
.affirming, .passed, .verified {{ color: #0a6b2d; font-weight: bold; }}
.failed, .contraindicated, .warning {{ color: #a4161a; font-weight: bold; }}
.not-run, .none {{ color: #8a6d00; font-weight: bold; }}
h2 {{ margin-top: 1.2em; font-size: 1.15em; }}
</style></head><body>{body}</body></html>"""


def _kv_table(table_id: str, items: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(str(k))}</th><td><code>{e(_text(v))}</code></td></tr>"
        for k, v in items.items()
        if v is not None
    )
    return f"<table id='{table_id}'>{rows}</table>"


def _when(timestamp: Any) -> Any:
    """A Unix time as "<seconds> (<UTC ISO time>)"; anything else unchanged."""
    import datetime

    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
        return f"{timestamp} ({when:%Y-%m-%d %H:%M:%S} UTC)"
    return timestamp


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def render_page(record: dict[str, Any]) -> str:
    """The provenance page: every value escaped, every value already a public reference."""
    e = html.escape
    if "model_name" in record and "model_version" in record:
        title = f"Model {record['model_name']} version {record['model_version']}"
    else:
        title = f"Run {record['airflow_run_id']}"
    parts = [f"<h1>Provenance: {e(title)}</h1>"]
    links = "".join(
        f"<li><a href='{e(link['href'])}' target='_top'>{e(link['name'])}</a></li>"
        for link in record.get("links") or ()
    )
    if record.get("pending"):
        parts.append(f"<p id='pending'>{e(record['pending'])}</p><ul>{links}</ul>")
        return _document(title, "".join(parts))
    v = record["verification"]
    parts.append(
        f"<h2>Verification: <span id='verdict' class='{e(v['verdict'])}'>{e(v['verdict'])}"
        f"</span></h2><p>Verifier: {e(v['verifier'])}</p>"
        "<table id='checks'><tr><th>check</th><th>result</th><th>reason</th></tr>"
        + "".join(
            f"<tr data-check='{e(c['name'])}'><td>{e(c['name'])}</td>"
            f"<td class='{e(c['status'].replace(' ', '-'))}'>{e(c['status'])}</td>"
            f"<td>{e(c['reason'])}</td></tr>"
            for c in v["checks"]
        )
        + "</table>"
    )
    att = record.get("attestation") or {}
    parts.append("<h2>Attestation</h2>")
    if att.get("error"):
        parts.append(f"<p>{e(att['error'])}</p>")
    else:
        parts.append(
            _kv_table(
                "attestation",
                {
                    "TEE": att.get("tee"),
                    "token issued at": _when(att.get("issued_at")),
                    "token expires at": _when(att.get("expires_at")),
                    "initdata digest (as the verifier reports it)": att.get("initdata_digest"),
                },
            )
        )
        parts.append(
            "<table id='submods'><tr><th>submod</th><th>status</th><th>trust vector</th>"
            "<th>appraisal policy</th></tr>"
            + "".join(
                f"<tr data-submod='{e(str(s['name']))}'><td>{e(str(s['name']))}</td>"
                f"<td class='{e(str(s['status']))}'>{e(str(s['status']))}</td>"
                f"<td><code>{e(_text(s['trust_vector']))}</code></td>"
                f"<td><code>{e(str(s['policy_id']))}</code></td></tr>"
                for s in att.get("submods") or ()
            )
            + "</table><h3>What the initdata binds (as attested)</h3>"
            + _kv_table("initdata", att.get("initdata_binds") or {})
        )
    refs = record.get("run_refs") or {}
    keys = record.get("released_keys") or {
        "checkpoint key": (record.get("manifest") or {}).get("key_uri")
    }
    parts.append("<h2>Keys released (references only)</h2>" + _kv_table("keys", keys))
    if refs:
        parts.append("<h2>Run references</h2>" + _kv_table("run-refs", refs))
    manifest = record.get("manifest") or {}
    parts.append("<h2>Manifest</h2>")
    parts.append(
        _kv_table(
            "manifest",
            {
                **manifest,
                "created_at": _when(manifest.get("created_at")),
                "signer (attested TEE key thumbprint)": (
                    (record.get("registry") or {}).get("provenance") or {}
                ).get("tee_key_thumbprint"),
            },
        )
    )
    reg = record.get("registry")
    parts.append("<h2>Registry</h2>")
    if reg is None:
        parts.append("<p id='registry'>not registered: the checkpoint was not promoted</p>")
    else:
        parts.append(
            f"<p id='registry'>{e(str(reg['model_name']))} version {e(str(reg['version']))}"
            f"{' — aliases: ' + e(', '.join(map(str, reg['aliases']))) if reg['aliases'] else ''}"
            "</p><table id='versions'><tr><th>version</th><th>run</th><th>manifest</th>"
            "<th>aliases now</th></tr>"
            + "".join(
                f"<tr><td>{e(str(x['version']))}</td><td><code>{e(str(x['run_id']))}</code></td>"
                f"<td><code>{e(str(x['manifest_digest']))}</code></td>"
                f"<td>{e(', '.join(map(str, x['aliases'])) or '-')}</td></tr>"
                for x in reg["versions"]
            )
            + "</table><p>Each promotion moved the alias to its version; MLflow keeps no "
            "earlier alias positions, so the history is the version list.</p>"
            + _kv_table("registry-provenance", reg.get("provenance") or {})
        )
    parts.append(
        "<h2>Artefacts</h2><table id='artefacts'>"
        + "".join(
            f"<tr><th>{e(a['name'])}</th><td><code>{e(str(a['uri']))}</code></td></tr>"
            for a in record.get("artefacts") or ()
        )
        + f"</table><ul>{links}</ul>"
    )
    return _document(title, "".join(parts))
