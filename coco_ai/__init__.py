"""CoCo AI Pipelines core: everything that must also run inside the TEE. Never imports Airflow."""

__version__ = "0.1.0"
