"""Monitoring: Triton-compatible metrics, online drift detection, dashboards and alert rules."""
