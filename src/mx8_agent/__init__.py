"""mx8d-agent: the per-host daemon that ingests the manifest, fetches and serves trainers."""

__all__: list[str] = []
