"""Logs, telemetry and Prometheus metrics."""
