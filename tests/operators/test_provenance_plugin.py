"""The provenance plugin as Airflow loads it, its extra link, and what its code may touch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from coco_ai_airflow.provenance import RUN_TAB_ROUTE, URL_PREFIX
from coco_ai_airflow.provenance.links import ProvenanceLink

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_airflow_loads_the_plugin_from_the_provider(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run(
        [AIRFLOW, "plugins", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    plugins = json.loads(out[out.index("[") :])
    (plugin,) = [p for p in plugins if p["name"] == "coco_ai_provenance"]
    assert plugin["source"].startswith("coco-ai-pipelines")  # from the provider, not a folder
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == [URL_PREFIX]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["dag_run"]["url_route"] == RUN_TAB_ROUTE
    # relative to the UI's <base href>, with the run's ids filled in by the UI
    assert views["dag_run"]["href"] == "coco-ai/runs/{DAG_ID}/{RUN_ID}"
    assert "nav" in views
    assert any("ProvenanceLink" in link for link in plugin["operator_extra_links"])


def test_extra_link_points_at_the_runs_provenance_tab(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    key = TaskInstanceKey("confidential_finetune", "attested_promotion", "manual__2026+1:2", 1)
    link = ProvenanceLink().get_link(None, ti_key=key)
    assert link == (
        "http://airflow.example:8080/dags/confidential_finetune/runs/manual__2026%2B1%3A2"
        "/plugin/provenance"
    )


# The view is built only from public references: none of its code may decrypt, reach
# Trustee or read a Trustee stand-in's state.
_FORBIDDEN = {
    "decrypt_checkpoint",
    "decrypt_stream",
    "decrypt_blob",
    "KbsClient",
    "KbsAdminClient",
    "StateDir",
    "derive_run_key",
    "get_resource",
    "coco_ai.kbs.client",
    "coco_ai.guest.client",
    "coco_ai.guest.emulator",
    "coco_ai.guest.attesters",
    "coco_ai.trustee_dev",
}


def _names(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
    return found


def test_view_code_cannot_decrypt_or_reach_trustee():
    files = [*sorted((ROOT / "operators" / "provenance").glob("*.py"))]
    files.append(ROOT / "coco_ai" / "provenance.py")
    for path in files:
        names = _names(path)
        bad = {n for n in names if n in _FORBIDDEN or n.startswith(tuple(_FORBIDDEN))}
        assert not bad, f"{path.relative_to(ROOT)} uses {sorted(bad)}"


def test_page_escapes_every_value():
    from coco_ai_airflow.provenance.app import render_page

    hostile = "<img src=x onerror=alert(1)>"
    page = render_page(
        {
            "dag_id": "d",
            "airflow_run_id": hostile,
            "pending": hostile,
            "links": [{"name": hostile, "href": "javascript:alert(1)' onclick='x"}],
        }
    )
    assert hostile not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "href='javascript:alert(1)' onclick" not in page  # the quote cannot end the attribute
