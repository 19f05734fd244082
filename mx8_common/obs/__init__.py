"""Observability: structured events and the HTTP /metrics exporter."""
