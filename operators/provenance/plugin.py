"""`ProvenancePlugin`: the provenance view inside the Airflow 3 UI.

- ``fastapi_apps``: `coco_ai_airflow.provenance.app.app` under ``/coco-ai`` (HTML pages and JSON).
- ``external_views``: a "Provenance" tab on every DAG run page (an iframe of the run's page,
  same origin, so the UI's session authenticates it) and a "Promoted models" entry in the
  navigation. No Flask, no FAB.
- ``operator_extra_links``: `ProvenanceLink`, so the API server can rebuild the link that the
  workload and promotion operators declare.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from coco_ai_airflow.provenance import RUN_TAB_ROUTE, URL_PREFIX
from coco_ai_airflow.provenance.app import app
from coco_ai_airflow.provenance.links import ProvenanceLink


class ProvenancePlugin(AirflowPlugin):
    name = "coco_ai_provenance"
    fastapi_apps = [  # noqa: RUF012 -- AirflowPlugin's declared class attributes
        {
            "app": app,
            "url_prefix": URL_PREFIX,
            "name": "CoCo AI provenance",
        }
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Provenance",
            # relative (no leading slash): resolved against the UI's base URL
            "href": URL_PREFIX.lstrip("/") + "/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": RUN_TAB_ROUTE,
        },
        {
            "name": "Promoted models",
            "href": URL_PREFIX.lstrip("/") + "/models",
            "destination": "nav",
            "url_route": "coco-ai-models",
        },
    ]
    operator_extra_links = [ProvenanceLink()]  # noqa: RUF012
