"""Airflow layer of CoCo AI Pipelines: hooks, operators and triggers over `coco_ai`."""
