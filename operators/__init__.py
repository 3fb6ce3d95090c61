"""Airflow layer of CoCo AI Pipelines (installed as `coco_ai_airflow`): the `trustee` hook and one
operator per CoCo step, over `coco_ai`. It defines no trigger: the only deferrable path is the
cncf-kubernetes provider's pod trigger."""
