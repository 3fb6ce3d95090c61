"""Hooks of the CoCo AI Pipelines provider."""
