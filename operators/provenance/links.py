"""Operator extra links to the provenance view (workload and promotion tasks)."""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, conf

from coco_ai_airflow.provenance import RUN_TAB_ROUTE


class ProvenanceLink(BaseOperatorLink):
    """The "Provenance" link: the run's provenance tab in the Airflow UI."""

    name = "Provenance"

    def get_link(self, operator, *, ti_key) -> str:
        base = conf.get("api", "base_url", fallback="").rstrip("/")
        run = quote(ti_key.run_id, safe="")
        return f"{base}/dags/{quote(ti_key.dag_id, safe='')}/runs/{run}/plugin/{RUN_TAB_ROUTE}"
