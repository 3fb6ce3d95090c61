"""The provenance view: an Airflow 3 plugin (FastAPI app + external views) and extra links.

`plugin.ProvenancePlugin` is registered in the provider metadata (``plugins``); the API server
serves `app.app` under `URL_PREFIX` behind Airflow's own authentication and authorisation.
"""

URL_PREFIX = "/coco-ai"
#: The run page's tab (external view ``url_route``) that shows the provenance.
RUN_TAB_ROUTE = "provenance"
