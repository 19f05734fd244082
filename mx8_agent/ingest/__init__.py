"""Manifest ingest: the bounded-carry adapter and the fail-closed stream consumer."""
