"""The coordinator's HTTP face: /metrics, /api/status and the status page."""
