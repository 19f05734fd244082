"""Snapshots: a dataset link listed (folder or S3 prefix) into a canonical manifest, once,
under a single-writer lock."""
